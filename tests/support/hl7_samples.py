"""Every HL7 sample message the tests use, in one place.

Written as a HIS would send them (segments end with CR). The broken variants are made from valid
ones with `with_field` / `without_segment`, plain string edits independent of the code under test,
so each differs from a valid message in exactly one way.
"""

from __future__ import annotations

CR = "\r"


def message(*segments: str) -> str:
    return CR.join(segments) + CR


def with_field(text: str, segment: str, number: int, value: str, occurrence: int = 1) -> str:
    """`text` with field `number` of the `occurrence`-th `segment` replaced (added if absent)."""
    lines = text.rstrip(CR).split(CR)
    seen = 0
    for index, line in enumerate(lines):
        if not line.startswith(segment + "|"):
            continue
        seen += 1
        if seen != occurrence:
            continue
        fields = line.split("|")
        position = number - 1 if segment == "MSH" else number  # MSH-1 is the separator
        fields += [""] * (position + 1 - len(fields))
        fields[position] = value
        lines[index] = "|".join(fields)
        return CR.join(lines) + CR
    raise ValueError(f"no {segment} #{occurrence} in sample")


def without_segment(text: str, segment: str) -> str:
    lines = [line for line in text.rstrip(CR).split(CR) if not line.startswith(segment + "|")]
    return CR.join(lines) + CR


# --- valid orders ---------------------------------------------------------------------------

#: v2.5.1 new order as IHE Radiology SWF expects it: TQ1 for timing, ZDS with the Study Instance
#: UID, UTF-8 declared, non-ASCII names, escape sequences in texts.
ORM_NW_251 = message(
    "MSH|^~\\&|HIS^1.2.826.0.1.3680043.9.7^ISO|GENHOSP|RIS|RADIOLOGY|20240301101500+0100||"
    "ORM^O01^ORM_O01|MSG-NW-0001|P|2.5.1|||AL|NE||UNICODE UTF-8",
    "PID|1||^^^GENHOSP^PI~4711-0815^^^GENHOSP&1.2.826.0.1.3680043.9.7.1&ISO^MR||"
    "Müller-Lüdenscheidt&von^Jürgen^Karl^Jr^Dr||19700102|M|||Hauptstraße 1^^Köln^^50667^DE",
    "PV1|1|O|RAD^^^GENHOSP||||1234^Welby^Marcus^^^Dr^MD|5678^Kildare^James^^^Dr||||||||||"
    "|V-2024-00042",
    "ORC|NW|PLC-1001^HIS|FIL-2001^RIS||SC||^^^20240301120000^^R||20240301101500|||"
    "9012^House^Gregory^^^Dr^MD",
    "TQ1|1||||||20240302081500+0100||S^Stat^HL70078",
    "OBR|1|PLC-1001^HIS|FIL-2001^RIS|CTTHAB^CT Thorax \\T\\ Abdomen^LOCAL|||||||||"
    "Persistent cough\\.br\\smoker, 30 pack-years|||9012^House^Gregory^^^Dr^MD||"
    "ACC-24-0001|RP-7788|||||CT|||^^^20240301120000^^R||||R05^Cough \\E\\ dyspnoea^I10",
    "ZDS|1.2.826.0.1.3680043.9.7.1.20240301.1001^HIS^Application^DICOM",
)

#: v2.3: no TQ1/ZDS, timing in OBR-27, ordering provider only in OBR-16, the first PID-3
#: repetition without an id, a birth date with a time, ORM^O01 without message structure, a
#: patient note (NTE) before the first ORC.
ORM_NW_23 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240305083000||ORM^O01|MSG-NW-0023|P|2.3",
    "PID|||^^^OLDHIS~900123^^^GENHOSP^MR||Smith^Anna^Marie||198512241530|F",
    "NTE|1|P|Claustrophobic, needs sedation",
    "PV1||E|||||||||||||||||V23-1",
    "ORC|NW|PLC-2301||||||||||",
    "OBR|1|PLC-2301||MRKNEE^MR Knee left^LOCAL||||||||||||4455^Grey^Meredith||ACC-23-0001|"
    "RP-23-01|||||MR|||^^^20240306141500^^A||||^Knee pain after fall",
)

#: v2.4, Latin-1 declared in MSH-18 (the bytes form is ORM_NW_24_LATIN1), scheduling in ORC-7.
ORM_NW_24 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240306090000+0200||ORM^O01^ORM_O01|MSG-NW-0024|P|2.4"
    "||||||8859/1",
    "PID|1||55501^^^GENHOSP^MR||Ødegård^Bjørn||19501231|M",
    "ORC|NW|PLC-2401^HIS|||SC||^^^20240307100000+0200^^A|||||7001^Strange^Stephen",
    "OBR|1|PLC-2401^HIS||USABD^US Abdomen^LOCAL||||||||||||||ACC-24-0024|RP-24-24|||||US",
)
ORM_NW_24_LATIN1 = ORM_NW_24.encode("latin-1")

#: v2.5.1 change order: new schedule in TQ1 (no ZDS, no PV1).
ORM_XO_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301113000+0100||ORM^O01^ORM_O01|MSG-XO-0002|P|2.5.1",
    "PID|1||4711-0815^^^GENHOSP^MR||Müller-Lüdenscheidt^Jürgen||19700102|M",
    "ORC|XO|PLC-1001^HIS|FIL-2001^RIS||SC",
    "TQ1|1||||||20240303093000+0100||R",
    "OBR|1|PLC-1001^HIS|FIL-2001^RIS|CTTHAB^CT Thorax \\T\\ Abdomen^LOCAL||||||||||||||"
    "ACC-24-0001|RP-7788|||||CT",
)

#: v2.5.1 cancel, with the OBR repeated as many HIS do.
ORM_CA_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301120000+0100||ORM^O01^ORM_O01|MSG-CA-0003|P|2.5.1",
    "PID|1||4711-0815^^^GENHOSP^MR||Müller-Lüdenscheidt^Jürgen||19700102|M",
    "ORC|CA|PLC-1001^HIS|FIL-2001^RIS||CA",
    "OBR|1|PLC-1001^HIS|FIL-2001^RIS|CTTHAB^CT Thorax \\T\\ Abdomen^LOCAL",
)

#: v2.4 discontinue with ORC only (the order detail group is optional in ORM^O01).
ORM_DC_24 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240306091500+0200||ORM^O01^ORM_O01|MSG-DC-0004|P|2.4",
    "PID|1||55501^^^GENHOSP^MR||Ødegård^Bjørn||19501231|M",
    "ORC|DC|PLC-2401^HIS|||DC",
)

#: v2.5.1 status change: ORC-5 IP (in process).
ORM_SC_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240302082000+0100||ORM^O01^ORM_O01|MSG-SC-0005|P|2.5.1",
    "PID|1||4711-0815^^^GENHOSP^MR||Müller-Lüdenscheidt^Jürgen||19700102|M",
    "ORC|SC|PLC-1001^HIS|FIL-2001^RIS||IP",
    "OBR|1|PLC-1001^HIS|FIL-2001^RIS|CTTHAB^CT Thorax \\T\\ Abdomen^LOCAL",
)

#: v2.5.1 with two order groups in one message (two procedures for one visit).
ORM_NW_TWO_ORDERS = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240308070000+0100||ORM^O01^ORM_O01|MSG-NW-0006|P|2.5.1",
    "PID|1||777^^^GENHOSP^MR||Doe^John||19800808|M",
    "ORC|NW|PLC-3001^HIS",
    "OBR|1|PLC-3001^HIS||XRCHEST^XR Chest 2 views^LOCAL||||||||||||||ACC-3001||||||CR",
    "ORC|NW|PLC-3002^HIS",
    "TQ1|1||||||20240308100000+0100||A",
    "OBR|2|PLC-3002^HIS||CTHEAD^CT Head^LOCAL||||||||||||||ACC-3002||||||CT",
    "ZDS|1.2.826.0.1.3680043.9.7.3002^HIS^Application^DICOM",
)

#: OMI^O23 v2.5.1: DICOM identifiers in IPC instead of OBR-18/19 and ZDS.
OMI_NW_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240309100000+0100||OMI^O23^OMI_O23|MSG-OMI-0007|P|2.5.1",
    "PID|1||4711-0815^^^GENHOSP^MR||Müller-Lüdenscheidt^Jürgen||19700102|M",
    "PV1|1|I|||||||||||||||||V-9",
    "ORC|NW|PLC-4001^HIS|||SC|||||||9012^House^Gregory",
    "TQ1|1||||||20240310080000+0100||R",
    "OBR|1|PLC-4001^HIS||MRHEAD^MR Head^LOCAL",
    "IPC|ACC-OMI-1^HIS|RP-OMI-1^HIS|1.2.826.0.1.3680043.9.7.4001^HIS|SPS-1^HIS|MR",
)

#: Non-default delimiters declared in MSH-1/MSH-2 (some engines use them).
ORM_CUSTOM_DELIMITERS = message(
    "MSH!#~$@!HIS!GENHOSP!RIS!RADIOLOGY!20240311120000+0100!!ORM#O01#ORM_O01!MSG-CD-0008!P!2.5.1",
    "PID!1!!321###GENHOSP#MR!!O'Brien#Sean!!19900101!M",
    "ORC!NW!PLC-5001#HIS",
    "OBR!1!PLC-5001#HIS!!XRHAND#XR Hand | wrist $F$ left$T$right#LOCAL",
)

#: Every valid sample that hl7apy must read the same way (the differential test).
VALID_ORDERS = {
    "ORM_NW_251": ORM_NW_251,
    "ORM_NW_23": ORM_NW_23,
    "ORM_NW_24": ORM_NW_24,
    "ORM_XO_251": ORM_XO_251,
    "ORM_CA_251": ORM_CA_251,
    "ORM_DC_24": ORM_DC_24,
    "ORM_SC_251": ORM_SC_251,
    "ORM_NW_TWO_ORDERS": ORM_NW_TWO_ORDERS,
    "OMI_NW_251": OMI_NW_251,
    "ORM_CUSTOM_DELIMITERS": ORM_CUSTOM_DELIMITERS,
}

# --- not acceptable -------------------------------------------------------------------------

NOT_HL7 = "GET / HTTP/1.1\r\nHost: ris\r\n\r\n"
ADT_A01 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301101500||ADT^A01^ADT_A01|MSG-ADT-1|P|2.5.1",
    "EVN|A01|20240301101500",
    "PID|1||4711-0815^^^GENHOSP^MR||Müller^Jürgen",
)
ORM_O02 = with_field(ORM_NW_251, "MSH", 9, "ORM^O02^ORM_O02")
ORU_R01_INBOUND = with_field(ORM_NW_251, "MSH", 9, "ORU^R01^ORU_R01")
ORM_V26 = with_field(ORM_NW_251, "MSH", 12, "2.6")
ORM_V22 = with_field(ORM_NW_23, "MSH", 12, "2.2")
OMI_V24 = with_field(OMI_NW_251, "MSH", 12, "2.4")
NO_CONTROL_ID = with_field(ORM_NW_251, "MSH", 10, "")
BAD_MESSAGE_DATETIME = with_field(ORM_NW_251, "MSH", 7, "2024-03-01T10:15")
NO_PID = without_segment(ORM_NW_251, "PID")
NO_PATIENT_ID = with_field(ORM_NW_251, "PID", 3, "^^^GENHOSP^PI~^^^GENHOSP^MR")
BAD_BIRTH_DATE = with_field(ORM_NW_251, "PID", 7, "19701302")
PARTIAL_BIRTH_DATE = with_field(ORM_NW_251, "PID", 7, "1970")
UNKNOWN_SEX = with_field(ORM_NW_251, "PID", 8, "X")
NO_ORC = message(*ORM_NW_251.split(CR)[:3])  # MSH, PID, PV1 only
OBR_BEFORE_ORC = without_segment(ORM_NW_251, "ORC")
EMPTY_ORDER_CONTROL = with_field(ORM_NW_251, "ORC", 1, "")
UNKNOWN_ORDER_CONTROL = with_field(ORM_NW_251, "ORC", 1, "RE")
NO_PROCEDURE_CODE = with_field(ORM_NW_251, "OBR", 4, "^CT Thorax")
NEW_ORDER_WITHOUT_OBR = without_segment(ORM_NW_251, "OBR")
BAD_TQ1_START = with_field(ORM_NW_251, "TQ1", 7, "202403021261")
BAD_OBR27_START = with_field(ORM_NW_23, "OBR", 27, "^^^20240306 1415^^A")
UNKNOWN_PRIORITY = with_field(ORM_NW_251, "TQ1", 9, "X")
UNKNOWN_OBR27_PRIORITY = with_field(ORM_NW_23, "OBR", 27, "^^^20240306141500^^Z")
BAD_STUDY_UID = with_field(ORM_NW_251, "ZDS", 1, "1.2.03.abc^HIS^Application^DICOM")
LONG_ACCESSION_NUMBER = with_field(ORM_NW_251, "OBR", 18, "ACC-2024-000000001")
SECOND_ORDER_WITHOUT_PROCEDURE = with_field(ORM_NW_TWO_ORDERS, "OBR", 4, "", occurrence=2)


# --- seed 002 -------------------------------------------------------------------------------

#: The example ORM of seed 002 (section 8.2), as written there: no ORC, no PV1, the procedure
#: only as a code in OBR-4 (no OBR-24), the filler order number in OBR-3.
SEED_002_ORM = message(
    "MSH|^~\\&|EMR|UnifiedHealth|PACS|Radiology|20241219140000||ORM^O01|MSG123|P|2.5",
    "PID|1||PAT123456||Doe^John||19800101|M",
    "OBR|1||ORD789012|CR^Chest X-Ray^LOINC|||20241220100000",
)


# --- patient administration (ADT) -------------------------------------------------------------

#: v2.5.1 registration of the patient the ADT tests follow, with a second identifier in PID-3.
ADT_A01_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301090000+0100||ADT^A01^ADT_A01|ADT-0001|P|2.5.1",
    "EVN|A01|20240301090000+0100",
    "PID|1||MRN-7001^^^GENHOSP^MR~PP-7001^^^PASSPORT^PPN||KOWALSKI^ANNA||19610405|F",
    "PV1|1|O",
)
#: v2.5.1 update: the name corrected.
ADT_A08_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301100000+0100||ADT^A08^ADT_A01|ADT-0002|P|2.5.1",
    "EVN|A08|20240301100000+0100",
    "PID|1||MRN-7001^^^GENHOSP^MR||KOWALSKA^ANNA^MARIA||19610405|F",
    "PV1|1|O",
)
#: v2.5.1 merge: the trauma registration MRN-7666 into MRN-7001.
ADT_A40_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301110000+0100||ADT^A40^ADT_A39|ADT-0003|P|2.5.1",
    "EVN|A40|20240301110000+0100",
    "PID|1||MRN-7001^^^GENHOSP^MR||KOWALSKI^ANNA||19610405|F",
    "MRG|MRN-7666^^^GENHOSP^MR",
)
#: v2.3 merge, MSH-9 without message structure, MRG-1 without its assigning authority.
ADT_A40_23 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301110000||ADT^A40|ADT-0023|P|2.3",
    "EVN|A40|20240301110000",
    "PID|1||MRN-7001^^^GENHOSP^MR||KOWALSKI^ANNA||19610405|F",
    "MRG|MRN-7666",
)
#: v2.5.1 identifier change: MRN-7001 becomes MRN-7009.
ADT_A47_251 = message(
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301120000+0100||ADT^A47^ADT_A30|ADT-0004|P|2.5.1",
    "EVN|A47|20240301120000+0100",
    "PID|1||MRN-7009^^^GENHOSP^MR||KOWALSKI^ANNA||19610405|F",
    "MRG|MRN-7001^^^GENHOSP^MR",
)
#: An order for a patient of the ADT tests (the v2.5.1 order with PID-3 and the keys changed).
ORM_FOR_MRN_7001 = with_field(
    with_field(with_field(ORM_NW_251, "PID", 3, "MRN-7001^^^GENHOSP^MR"), "MSH", 10, "MSG-NW-7001"),
    "PID",
    5,
    "KOWALSKI^ANNA",
)

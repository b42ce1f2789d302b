"""ORU^R01 (HL7 v2.5.1, 7.3.1): a radiology result for the hospital information system.

Layout, after IHE Radiology's results conventions:

    MSH  ...|ORU^R01^ORU_R01|<control id>|P|2.5.1|||||| <MSH-18 UNICODE UTF-8>
    PID  PID-3 patient id^^^issuer^MR, PID-5 name, PID-7 birth date, PID-8 sex
    ORC  RE | ORC-2 placer | ORC-3 filler | ORC-5 CM (final, corrected) or IP (preliminary)
    OBR  OBR-2/3 placer/filler, OBR-4 procedure, OBR-7 observation time, OBR-16 ordering
         provider, OBR-18 accession number, OBR-19 requested procedure id, OBR-22 result time,
         OBR-24 RAD, OBR-25 result status P/F/C, OBR-32 principal result interpreter
    OBX  one TX line per line of report text, OBX-3 the section's LOINC code (the codes DICOM
         PS3.20 uses for imaging report sections), OBX-4 the section's number, OBX-11 P/F/C
    OBX  a critical result (TX), OBX-8 abnormal flag AA (critical) or A
    OBX  ED 18748-4^Diagnostic imaging study^LN: the report as a PDF, `^AP^PDF^Base64^<data>`
         (HL7 v2.5.1 ED: source application, type of data, subtype, encoding, data), when
         the result embeds one
    OBX  ST 110180^Study Instance UID^DCM: the study the result reads

Built with hl7apy, at STRICT validation of the message structure; values are escaped with
`hl7.er7.escape_text` first, so a `|` or `^` in a radiologist's text stays text.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from hl7.header import OWN_VERSION
from hl7.outgoing import coded, escaped, person, write_header, write_patient
from hl7.timestamps import format_timestamp


class ResultStatus(StrEnum):
    """OBR-25 / OBX-11 (HL7 tables 0123 and 0085)."""

    PRELIMINARY = "P"
    FINAL = "F"
    CORRECTED = "C"


@dataclass(frozen=True)
class Section:
    code: str  # LOINC
    name: str
    text: str


#: Report sections as LOINC codes (DICOM PS3.20, CID 7001 "Diagnostic Imaging Report Headings").
SECTION_CODES: dict[str, tuple[str, str]] = {
    "technique": ("55111-9", "Current imaging procedure descriptions"),
    "comparison": ("18834-2", "Radiology Comparison study"),
    "findings": ("59776-5", "Procedure Findings"),
    "impression": ("19005-8", "Radiology Imaging study [Impression]"),
    "recommendations": ("18783-1", "Radiology Study recommendation"),
}
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")
CRITICAL_RESULT_CODE = ("CRITRES", "Critical result", "L")
REPORT_DOCUMENT_CODE = ("18748-4", "Diagnostic imaging study", "LN")
_ED_PLACEHOLDER = "^AP^PDF^Base64^EMBEDDED-PDF"


@dataclass(frozen=True)
class FlaggedFinding:
    """A critical result raised on the report: its text and whether it is critical (AA) or
    only abnormal (A)."""

    description: str
    critical: bool


@dataclass(frozen=True)
class ResultMessage:
    control_id: str
    created_at: datetime
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    status: ResultStatus
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str | None  # DICOM PN order: family^given^middle^prefix^suffix
    patient_birth_date: date | None
    patient_sex: str | None
    placer_order_number: str | None
    filler_order_number: str
    accession_number: str
    requested_procedure_id: str | None
    procedure_code: str | None
    procedure_description: str | None
    ordering_provider: str | None  # PN order
    provider_id: str | None
    observed_at: datetime | None
    reported_at: datetime
    interpreter_id: str
    interpreter_name: str
    study_instance_uid: str
    sections: Sequence[Section]
    findings_flagged: Sequence[FlaggedFinding] = field(default_factory=tuple)
    embedded_pdf: bytes | None = None  # the report rendered as a PDF, sent as an ED OBX


def build_result_message(result: ResultMessage) -> str:
    """The ORU^R01 as ER7 text, segments ending in CR."""
    message = Message("ORU_R01", version=OWN_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    write_header(message.msh, result, "ORU^R01^ORU_R01")
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    write_patient(patient_result.add_group("ORU_R01_PATIENT").pid, result)

    order_observation = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    placer = escaped(result.placer_order_number or "")
    filler = escaped(result.filler_order_number)
    orc = order_observation.orc
    orc.orc_1 = "RE"
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    orc.orc_5 = "IP" if result.status is ResultStatus.PRELIMINARY else "CM"

    obr = order_observation.obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    obr.obr_4 = coded(result.procedure_code, result.procedure_description)
    if result.observed_at:
        obr.obr_7 = format_timestamp(result.observed_at)
    if result.ordering_provider or result.provider_id:
        obr.obr_16 = person(result.provider_id, result.ordering_provider)
    obr.obr_18 = escaped(result.accession_number)
    if result.requested_procedure_id:
        obr.obr_19 = escaped(result.requested_procedure_id)
    obr.obr_22 = format_timestamp(result.reported_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = result.status.value
    obr.obr_32 = f"{escaped(result.interpreter_id)}&{escaped(result.interpreter_name)}"

    set_id = 0
    for number, section in enumerate(result.sections, start=1):
        for line in section.text.splitlines() or [""]:
            set_id += 1
            _observation(
                order_observation,
                set_id,
                value_type="TX",
                code=(section.code, section.name, "LN"),
                sub_id=str(number),
                value=escaped(line),
                status=result.status,
            )
    for finding in result.findings_flagged:
        set_id += 1
        _observation(
            order_observation,
            set_id,
            value_type="TX",
            code=CRITICAL_RESULT_CODE,
            sub_id="",
            value=escaped(" ".join(finding.description.split())),
            status=result.status,
            abnormal_flag="AA" if finding.critical else "A",
        )
    if result.embedded_pdf is not None:
        set_id += 1
        _observation(
            order_observation,
            set_id,
            value_type="ED",
            code=REPORT_DOCUMENT_CODE,
            sub_id="",
            value=_ED_PLACEHOLDER,
            status=result.status,
        )
    _observation(
        order_observation,
        set_id + 1,
        value_type="ST",
        code=STUDY_UID_CODE,
        sub_id="",
        value=escaped(result.study_instance_uid),
        status=result.status,
    )
    er7 = str(message.to_er7()) + "\r"
    if result.embedded_pdf is not None:
        # hl7apy's strict validation reads OBX-5 as ST (199 characters at most); HL7 v2.5.1's
        # ED data component is TX. The data goes in after the build, in place of the marker
        # (a field of its own: report text cannot hold it, `|` and `^` in text are escaped).
        # Base64's alphabet holds no HL7 delimiter: the data needs no escaping.
        data = base64.b64encode(result.embedded_pdf).decode("ascii")
        er7 = er7.replace(f"|{_ED_PLACEHOLDER}|", f"|^AP^PDF^Base64^{data}|", 1)
    return er7


def _observation(
    order_observation: object,
    set_id: int,
    *,
    value_type: str,
    code: tuple[str, str, str],
    sub_id: str,
    value: str,
    status: ResultStatus,
    abnormal_flag: str = "",
) -> None:
    obx = order_observation.add_group("ORU_R01_OBSERVATION").obx  # type: ignore[attr-defined]
    obx.obx_1 = str(set_id)
    obx.obx_2 = value_type
    obx.obx_3 = "^".join(escaped(part) for part in code)
    if sub_id:
        obx.obx_4 = sub_id
    if value:
        obx.obx_5 = value
    if abnormal_flag:
        obx.obx_8 = abnormal_flag
    obx.obx_11 = status.value

"""Inbound orders: every mapped field, every error with its code and location, the tokenizer,
and the differential test against hl7apy."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7.ack import build_ack, parse_ack
from hl7.datatypes import (
    CodedElement,
    EntityIdentifier,
    HierarchicDesignator,
    PersonName,
    Provider,
)
from hl7.er7 import (
    EncodingCharacters,
    Segment,
    decode_message,
    decode_text,
    escape_text,
    parse_er7,
)
from hl7.errors import (
    DataTypeError,
    Hl7Error,
    NotAnHl7Message,
    RequiredFieldMissing,
    SegmentSequenceError,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedTriggerEvent,
    UnsupportedVersion,
)
from hl7.header import MessageHeader, read_header
from hl7.order_message import (
    OrderControl,
    Patient,
    PatientIdentifier,
    Priority,
    QuantityTiming,
    Sex,
    TimingQuantity,
    Visit,
)
from hl7.orders import parse_order_message
from hl7.timestamps import format_timestamp, parse_date, parse_timestamp

import hl7_samples as samples

BERLIN = ZoneInfo("Europe/Berlin")
PLUS_1 = timezone(timedelta(hours=1))
PLUS_2 = timezone(timedelta(hours=2))
MINUS_0430 = timezone(-timedelta(hours=4, minutes=30))


# --- the mapping, field by field ------------------------------------------------------------


def test_orm_v251_header() -> None:
    message = parse_order_message(samples.ORM_NW_251.encode(), default_zone=BERLIN)
    assert message.header == MessageHeader(
        sending_application=HierarchicDesignator("HIS", "1.2.826.0.1.3680043.9.7", "ISO"),
        sending_facility=HierarchicDesignator("GENHOSP"),
        receiving_application=HierarchicDesignator("RIS"),
        receiving_facility=HierarchicDesignator("RADIOLOGY"),
        message_datetime="20240301101500+0100",
        message_type="ORM",
        trigger_event="O01",
        message_structure="ORM_O01",
        control_id="MSG-NW-0001",
        processing_id="P",
        version="2.5.1",
        character_set="UNICODE UTF-8",
    )
    assert message.message_datetime == datetime(2024, 3, 1, 10, 15, tzinfo=PLUS_1)


def test_orm_v251_patient_and_visit() -> None:
    message = parse_order_message(samples.ORM_NW_251.encode(), default_zone=BERLIN)
    assert message.patient == Patient(
        identifier=PatientIdentifier(
            id="4711-0815",  # the first PID-3 repetition has no id and is skipped
            assigning_authority=HierarchicDesignator("GENHOSP", "1.2.826.0.1.3680043.9.7.1", "ISO"),
            identifier_type="MR",
        ),
        name=PersonName("Müller-Lüdenscheidt", "Jürgen", "Karl", prefix="Dr", suffix="Jr"),
        birth_date=date(1970, 1, 2),
        sex=Sex.MALE,
    )
    assert message.visit == Visit(
        patient_class="O",
        facility="GENHOSP",  # PV1-3.4
        referring_provider=Provider("5678", PersonName("Kildare", "James", prefix="Dr")),
        visit_number="V-2024-00042",
    )


def test_orm_v251_order_segments_and_resolved_values() -> None:
    (order,) = parse_order_message(samples.ORM_NW_251.encode(), default_zone=BERLIN).orders
    house = Provider("9012", PersonName("House", "Gregory", prefix="Dr", suffix=""))
    common = order.common_order
    assert common.order_control is OrderControl.NEW_ORDER
    assert common.placer_order_number == EntityIdentifier("PLC-1001", "HIS")
    assert common.filler_order_number == EntityIdentifier("FIL-2001", "RIS")
    assert common.order_status == "SC"
    assert common.ordering_provider == house
    assert common.quantity_timing == QuantityTiming(
        datetime(2024, 3, 1, 12, 0, tzinfo=BERLIN), Priority.ROUTINE, "R"
    )
    assert order.timing_quantity == TimingQuantity(
        datetime(2024, 3, 2, 8, 15, tzinfo=PLUS_1), Priority.STAT, "S"
    )
    request = order.observation_request
    assert request is not None
    assert request.universal_service_id == CodedElement("CTTHAB", "CT Thorax & Abdomen", "LOCAL")
    assert request.relevant_clinical_information == "Persistent cough\nsmoker, 30 pack-years"
    assert request.ordering_provider == house
    assert (request.accession_number, request.requested_procedure_id) == ("ACC-24-0001", "RP-7788")
    assert request.diagnostic_service_section == "CT"
    assert request.reason_for_study == CodedElement("R05", "Cough \\ dyspnoea", "I10")
    assert order.zds_study_instance_uid == "1.2.826.0.1.3680043.9.7.1.20240301.1001"
    # Resolved: TQ1 wins over OBR-27 and ORC-7 for priority and start.
    assert order.priority is Priority.STAT
    assert order.scheduled_start == datetime(2024, 3, 2, 8, 15, tzinfo=PLUS_1)
    assert order.placer_order_number == EntityIdentifier("PLC-1001", "HIS")
    assert order.filler_order_number == EntityIdentifier("FIL-2001", "RIS")
    assert order.ordering_provider == house
    assert order.procedure == request.universal_service_id
    assert (order.accession_number, order.requested_procedure_id) == ("ACC-24-0001", "RP-7788")
    assert order.modality == "CT"
    assert order.study_instance_uid == "1.2.826.0.1.3680043.9.7.1.20240301.1001"
    assert order.reason_for_study == request.reason_for_study
    assert (order.sequence, order.order_control, order.order_status) == (1, "NW", "SC")


def test_orm_v23_reads_obr_27_and_obr_16_and_uses_the_default_zone() -> None:
    message = parse_order_message(samples.ORM_NW_23, default_zone=BERLIN)
    assert (message.header.version, message.header.message_structure) == ("2.3", "")
    assert message.message_datetime == datetime(2024, 3, 5, 8, 30, tzinfo=BERLIN)
    patient = message.patient
    assert patient.identifier == PatientIdentifier("900123", HierarchicDesignator("GENHOSP"), "MR")
    assert patient.birth_date == date(1985, 12, 24)  # from 198512241530
    assert (patient.sex, patient.name) == (Sex.FEMALE, PersonName("Smith", "Anna", "Marie"))
    assert message.visit == Visit("E", "", None, "V23-1")
    (order,) = message.orders
    assert order.timing_quantity is None
    assert order.priority is Priority.URGENT  # OBR-27.6 "A"
    assert order.scheduled_start == datetime(2024, 3, 6, 14, 15, tzinfo=BERLIN)
    assert order.scheduled_start is not None
    assert order.scheduled_start.utcoffset() == timedelta(hours=1)
    assert order.ordering_provider == Provider("4455", PersonName("Grey", "Meredith"))
    assert order.placer_order_number == EntityIdentifier("PLC-2301")
    assert order.reason_for_study == CodedElement("", "Knee pain after fall")
    assert (order.accession_number, order.requested_procedure_id) == ("ACC-23-0001", "RP-23-01")
    assert (order.modality, order.study_instance_uid) == ("MR", "")


def test_orm_v24_latin1_bytes_with_timing_in_orc_7() -> None:
    message = parse_order_message(samples.ORM_NW_24_LATIN1)
    assert message.header.character_set == "8859/1"
    assert message.patient.name == PersonName("Ødegård", "Bjørn")
    assert message.visit is None
    (order,) = message.orders
    assert order.priority is Priority.URGENT
    assert order.scheduled_start == datetime(2024, 3, 7, 10, 0, tzinfo=PLUS_2)
    assert order.ordering_provider == Provider("7001", PersonName("Strange", "Stephen"))
    assert order.modality == "US"


def test_change_cancel_discontinue_and_status_change() -> None:
    (change,) = parse_order_message(samples.ORM_XO_251).orders
    assert change.order_control is OrderControl.CHANGE_ORDER
    assert change.scheduled_start == datetime(2024, 3, 3, 9, 30, tzinfo=PLUS_1)
    assert change.priority is Priority.ROUTINE
    (cancel,) = parse_order_message(samples.ORM_CA_251).orders
    assert (cancel.order_control, cancel.order_status) == (OrderControl.CANCEL_ORDER, "CA")
    assert cancel.procedure == CodedElement("CTTHAB", "CT Thorax & Abdomen", "LOCAL")
    (discontinue,) = parse_order_message(samples.ORM_DC_24).orders
    assert discontinue.order_control is OrderControl.DISCONTINUE_ORDER
    assert (discontinue.observation_request, discontinue.procedure) == (None, None)
    assert discontinue.placer_order_number == EntityIdentifier("PLC-2401", "HIS")
    assert (discontinue.accession_number, discontinue.priority) == ("", Priority.ROUTINE)
    (status,) = parse_order_message(samples.ORM_SC_251).orders
    assert (status.order_control, status.order_status) == (OrderControl.STATUS_CHANGED, "IP")


def test_every_order_group_is_returned() -> None:
    first, second = parse_order_message(samples.ORM_NW_TWO_ORDERS).orders
    assert (first.sequence, first.accession_number, first.modality) == (1, "ACC-3001", "CR")
    assert (first.priority, first.scheduled_start, first.study_instance_uid) == (
        Priority.ROUTINE,
        None,
        "",
    )
    assert (second.sequence, second.accession_number, second.modality) == (2, "ACC-3002", "CT")
    assert second.priority is Priority.URGENT
    assert second.study_instance_uid == "1.2.826.0.1.3680043.9.7.3002"


def test_omi_o23_reads_ipc() -> None:
    message = parse_order_message(samples.OMI_NW_251)
    assert message.header.message_code == "OMI^O23"
    (order,) = message.orders
    assert order.procedure_control is not None
    assert order.procedure_control.scheduled_procedure_step_id == "SPS-1"
    assert (order.accession_number, order.requested_procedure_id) == ("ACC-OMI-1", "RP-OMI-1")
    assert order.study_instance_uid == "1.2.826.0.1.3680043.9.7.4001"
    assert order.modality == "MR"
    assert order.scheduled_start == datetime(2024, 3, 10, 8, 0, tzinfo=PLUS_1)
    assert order.ordering_provider == Provider("9012", PersonName("House", "Gregory"))


def test_delimiters_declared_in_msh_are_used() -> None:
    message = parse_order_message(samples.ORM_CUSTOM_DELIMITERS)
    assert message.patient.name == PersonName("O'Brien", "Sean")
    assert message.patient.identifier.assigning_authority == HierarchicDesignator("GENHOSP")
    assert message.orders[0].procedure == CodedElement(
        "XRHAND", "XR Hand | wrist ! left@right", "LOCAL"
    )


@pytest.mark.parametrize("terminator", ["\n", "\r\n"])
def test_lf_and_crlf_segment_terminators_are_accepted(terminator: str) -> None:
    expected = parse_order_message(samples.ORM_NW_251, default_zone=BERLIN)
    text = samples.ORM_NW_251.replace("\r", terminator)
    assert parse_order_message(text, default_zone=BERLIN) == expected


@pytest.mark.parametrize(
    ("code", "priority"),
    [
        ("S", Priority.STAT),
        ("stat", Priority.STAT),
        ("A", Priority.URGENT),
        ("ASAP", Priority.URGENT),
        ("Urgent", Priority.URGENT),
        ("R", Priority.ROUTINE),
        ("ROUTINE", Priority.ROUTINE),
        ("P", Priority.ROUTINE),
        ("T", Priority.ROUTINE),
        ("", Priority.ROUTINE),
    ],
)
def test_priority_mapping(code: str, priority: Priority) -> None:
    text = samples.with_field(samples.ORM_NW_251, "TQ1", 9, code)
    text = samples.with_field(text, "OBR", 27, "")
    text = samples.with_field(text, "ORC", 7, "")
    (order,) = parse_order_message(text).orders
    assert order.priority is priority


# --- errors: class, ACK code, table 0357 code, location -------------------------------------

#: (id, message, error class, "MSA-1 ERR-3", location as ErrorLocation prints it: OBR[2]-27.4)
ERROR_CASES: list[tuple[str, str, type[Hl7Error], str, str]] = [
    ("not HL7", samples.NOT_HL7, NotAnHl7Message, "AR 100", ""),
    ("ADT", samples.ADT_A01, UnsupportedMessageType, "AR 200", "MSH-9.1"),
    ("ORM^O02", samples.ORM_O02, UnsupportedTriggerEvent, "AR 201", "MSH-9.2"),
    ("v2.6", samples.ORM_V26, UnsupportedVersion, "AR 203", "MSH-12"),
    ("v2.2", samples.ORM_V22, UnsupportedVersion, "AR 203", "MSH-12"),
    ("OMI v2.4", samples.OMI_V24, UnsupportedVersion, "AR 203", "MSH-12"),
    ("no MSH-10", samples.NO_CONTROL_ID, RequiredFieldMissing, "AE 101", "MSH-10"),
    ("bad MSH-7", samples.BAD_MESSAGE_DATETIME, DataTypeError, "AE 102", "MSH-7"),
    ("no PID", samples.NO_PID, SegmentSequenceError, "AE 100", "PID"),
    ("no PID-3 id", samples.NO_PATIENT_ID, RequiredFieldMissing, "AE 101", "PID-3"),
    ("bad PID-7", samples.BAD_BIRTH_DATE, DataTypeError, "AE 102", "PID-7"),
    ("partial PID-7", samples.PARTIAL_BIRTH_DATE, DataTypeError, "AE 102", "PID-7"),
    ("PID-8 X", samples.UNKNOWN_SEX, TableValueNotFound, "AE 103", "PID-8"),
    ("no ORC", samples.NO_ORC, SegmentSequenceError, "AE 100", "ORC"),
    ("TQ1 first", samples.OBR_BEFORE_ORC, SegmentSequenceError, "AE 100", "TQ1"),
    ("empty ORC-1", samples.EMPTY_ORDER_CONTROL, RequiredFieldMissing, "AE 101", "ORC-1"),
    ("ORC-1 RE", samples.UNKNOWN_ORDER_CONTROL, TableValueNotFound, "AE 103", "ORC-1"),
    ("no OBR-4.1", samples.NO_PROCEDURE_CODE, RequiredFieldMissing, "AE 101", "OBR-4"),
    ("NW no OBR", samples.NEW_ORDER_WITHOUT_OBR, SegmentSequenceError, "AE 100", "ORC"),
    ("bad TQ1-7", samples.BAD_TQ1_START, DataTypeError, "AE 102", "TQ1-7"),
    ("bad OBR-27.4", samples.BAD_OBR27_START, DataTypeError, "AE 102", "OBR-27.4"),
    ("TQ1-9 X", samples.UNKNOWN_PRIORITY, TableValueNotFound, "AE 103", "TQ1-9.1"),
    ("OBR-27.6 Z", samples.UNKNOWN_OBR27_PRIORITY, TableValueNotFound, "AE 103", "OBR-27.6"),
    ("bad ZDS UID", samples.BAD_STUDY_UID, DataTypeError, "AE 102", "ZDS-1"),
    ("long OBR-18", samples.LONG_ACCESSION_NUMBER, DataTypeError, "AE 102", "OBR-18"),
    (
        "2nd OBR-4",
        samples.SECOND_ORDER_WITHOUT_PROCEDURE,
        RequiredFieldMissing,
        "AE 101",
        "OBR[2]-4",
    ),
]


@pytest.mark.parametrize(
    ("sample", "error_class", "codes", "location"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_carry_ack_code_error_code_and_location(
    sample: str, error_class: type[Hl7Error], codes: str, location: str
) -> None:
    with pytest.raises(error_class) as raised:
        parse_order_message(sample.encode("utf-8"))
    error = raised.value
    assert f"{error.ack_code.value} {int(error.error_code)}" == codes
    assert str(error.location or "") == location
    assert error.message


def sent_control_id(sample: str) -> str:
    """MSH-10 read with a plain split, independently of the code under test."""
    return sample.split("\r")[0].split("|")[9]


@pytest.mark.parametrize(
    "sample", [case[1] for case in ERROR_CASES[1:]], ids=[case[0] for case in ERROR_CASES[1:]]
)
def test_the_ack_echoes_msh_10_even_when_the_rest_fails(sample: str) -> None:
    with pytest.raises(Hl7Error) as raised:
        parse_order_message(sample)
    ack = build_ack(read_header(sample), raised.value, control_id="A", timestamp=datetime.now(UTC))
    summary = parse_ack(ack.text)
    assert summary.acknowledged_control_id == sent_control_id(sample)
    assert (summary.code, summary.error_code) == (
        raised.value.ack_code.value,
        int(raised.value.error_code),
    )


def test_error_texts_do_not_quote_patient_data() -> None:
    for sample in (samples.BAD_BIRTH_DATE, samples.UNKNOWN_SEX, samples.NO_PATIENT_ID):
        with pytest.raises(Hl7Error) as raised:
            parse_order_message(sample)
        assert "1970" not in raised.value.message
        assert "4711" not in raised.value.message
        assert "X" not in raised.value.message.replace("PID", "")


# --- tokenizer, escapes, character sets, timestamps -----------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("plain", "plain"),
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("caf\\XC3A9\\", "café"),
        ("\\X41\\\\X42\\", "AB"),
        ("\\XE9\\", "é"),  # not UTF-8: read as Latin-1
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("\\H\\bold\\N\\ text", "bold text"),
        ("\\.sp\\x", "x"),
        ("\\Zlocal\\", "\\Zlocal\\"),  # unknown sequences are kept
        ("trailing \\", "trailing \\"),  # no closing escape character
        ('""', ""),  # the HL7 null
    ],
)
def test_escape_sequences_are_decoded(raw: str, text: str) -> None:
    assert decode_text(raw) == text


@pytest.mark.parametrize(
    "text",
    ["", "plain", "a|b^c&d~e\\f", "\\F\\ literal", "CR\rLF\nVT\x0bFS\x1c", "Ærøskøbing ✓"],
)
def test_escape_then_decode_gives_the_text_back(text: str) -> None:
    encoded = escape_text(text)
    assert not set(encoded) & set("|^&~\r\n\x0b\x1c")
    assert decode_text(encoded) == text


def test_escape_with_declared_delimiters() -> None:
    custom = EncodingCharacters("!", "#", "~", "$", "@")
    assert escape_text("a!b#c$d", custom) == "a$F$b$S$c$E$d"
    assert decode_text("a$F$b$S$c$E$d", custom) == "a!b#c$d"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "PID|1||123",
        "MSH",
        "MSH|^~\\",  # too few encoding characters
        "MSH|^^\\&|HIS",  # duplicate delimiter
        "MSH|^~\\&|HIS\rpid|1",  # not a segment id
        "MSH|^~\\&|HIS\rMSH|^~\\&|HIS",  # two messages glued together
    ],
)
def test_tokenizer_refuses_what_is_not_one_hl7_message(text: str) -> None:
    with pytest.raises(NotAnHl7Message):
        parse_er7(text)


def test_tokenizer_numbers_msh_fields_from_the_separator() -> None:
    message = parse_er7(samples.ORM_NW_251)
    msh = message.msh
    assert (msh.raw_field(1), msh.raw_field(2), msh.value(10)) == ("|", "^~\\&", "MSG-NW-0001")
    assert [segment.name for segment in message.segments] == [
        "MSH",
        "PID",
        "PV1",
        "ORC",
        "TQ1",
        "OBR",
        "ZDS",
    ]
    pid = message.first("PID")
    assert pid is not None
    assert [r.component(1) for r in pid.repetitions(3)] == ["", "4711-0815"]
    assert pid.field(3, 2).component(4, 2) == "1.2.826.0.1.3680043.9.7.1"
    assert pid.field(3, 9).is_empty and pid.value(99) == ""


def test_undeclared_character_sets_fall_back_from_utf8_to_latin1() -> None:
    utf8 = samples.with_field(samples.ORM_NW_23, "PID", 5, "Jäger^Jörg").encode("utf-8")
    latin1 = samples.with_field(samples.ORM_NW_23, "PID", 5, "Jäger^Jörg").encode("latin-1")
    for raw in (utf8, latin1):
        assert parse_order_message(raw).patient.name == PersonName("Jäger", "Jörg")
    assert decode_message(samples.ORM_NW_24_LATIN1).count("Ødegård") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=BERLIN)),
        ("202403", datetime(2024, 3, 1, tzinfo=BERLIN)),
        ("20240301", datetime(2024, 3, 1, tzinfo=BERLIN)),
        ("2024030110", datetime(2024, 3, 1, 10, tzinfo=BERLIN)),
        ("202403011015", datetime(2024, 3, 1, 10, 15, tzinfo=BERLIN)),
        ("20240301101530", datetime(2024, 3, 1, 10, 15, 30, tzinfo=BERLIN)),
        ("20240301101530.25", datetime(2024, 3, 1, 10, 15, 30, 250000, tzinfo=BERLIN)),
        ("20240301101530.1234+0100", datetime(2024, 3, 1, 10, 15, 30, 123400, tzinfo=PLUS_1)),
        ("20240701101530-0430", datetime(2024, 7, 1, 10, 15, 30, tzinfo=MINUS_0430)),
        ("20240701101530+0000", datetime(2024, 7, 1, 10, 15, 30, tzinfo=UTC)),
    ],
)
def test_hl7_timestamps(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, BERLIN)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


def test_timestamps_without_offset_follow_daylight_saving_time_of_the_default_zone() -> None:
    assert parse_timestamp("20240115120000", BERLIN).utcoffset() == timedelta(hours=1)
    assert parse_timestamp("20240715120000", BERLIN).utcoffset() == timedelta(hours=2)
    local = parse_timestamp("20240715120000")  # None: this process's zone
    assert local.tzinfo is not None
    assert local.replace(tzinfo=None) == datetime(2024, 7, 15, 12, 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "24",
        "2024-03-01",
        "20241301",
        "20240230",
        "2024030125",
        "20240301+01",
        "20240301+1560",
        "2024030110153",
    ],
)
def test_invalid_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text, BERLIN)


def test_dates() -> None:
    assert parse_date("19700102") == date(1970, 1, 2)
    assert parse_date("197001021230+0100") == date(1970, 1, 2)
    for text in ("1970", "197001", "19700230"):
        with pytest.raises(ValueError):
            parse_date(text)
    assert format_timestamp(datetime(2024, 3, 1, 9, 5, 7, tzinfo=PLUS_1)) == "20240301090507+0100"


# --- differential test against hl7apy --------------------------------------------------------

#: Every (segment, field, [(component, subcomponent), ...]) the order mapping reads.
MAPPED_FIELDS: dict[tuple[str, int], list[tuple[int, int]]] = {
    ("MSH", 3): [(1, 1), (2, 1), (3, 1)],
    ("MSH", 4): [(1, 1), (2, 1), (3, 1)],
    ("MSH", 5): [(1, 1), (2, 1), (3, 1)],
    ("MSH", 6): [(1, 1), (2, 1), (3, 1)],
    ("MSH", 7): [(1, 1)],
    ("MSH", 9): [(1, 1), (2, 1), (3, 1)],
    ("MSH", 10): [(1, 1)],
    ("MSH", 11): [(1, 1)],
    ("MSH", 12): [(1, 1)],
    ("MSH", 18): [(1, 1)],
    ("PID", 3): [(1, 1), (4, 1), (4, 2), (4, 3), (5, 1)],
    ("PID", 5): [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)],
    ("PID", 7): [(1, 1)],
    ("PID", 8): [(1, 1)],
    ("PV1", 2): [(1, 1)],
    ("PV1", 3): [(4, 1)],
    ("PV1", 8): [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
    ("PV1", 19): [(1, 1)],
    ("ORC", 1): [(1, 1)],
    ("ORC", 2): [(1, 1), (2, 1), (3, 1), (4, 1)],
    ("ORC", 3): [(1, 1), (2, 1), (3, 1), (4, 1)],
    ("ORC", 5): [(1, 1)],
    ("ORC", 7): [(4, 1), (6, 1)],
    ("ORC", 12): [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
    ("TQ1", 7): [(1, 1)],
    ("TQ1", 9): [(1, 1)],
    ("OBR", 2): [(1, 1), (2, 1), (3, 1), (4, 1)],
    ("OBR", 3): [(1, 1), (2, 1), (3, 1), (4, 1)],
    ("OBR", 4): [(1, 1), (2, 1), (3, 1)],
    ("OBR", 13): [(1, 1)],
    ("OBR", 16): [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)],
    ("OBR", 18): [(1, 1)],
    ("OBR", 19): [(1, 1)],
    ("OBR", 24): [(1, 1)],
    ("OBR", 27): [(4, 1), (6, 1)],
    ("OBR", 31): [(1, 1), (2, 1), (3, 1)],
    ("ZDS", 1): [(1, 1)],
    ("IPC", 1): [(1, 1)],
    ("IPC", 2): [(1, 1)],
    ("IPC", 3): [(1, 1)],
    ("IPC", 4): [(1, 1)],
    ("IPC", 5): [(1, 1)],
}


def _positional(element: Any, index: int) -> Any | None:
    """Child number `index` of an hl7apy element: by its name suffix (CX_4), else by position
    (hl7apy names children of simple or unknown types after the type, e.g. ST, and keeps
    empty ones in place)."""
    children = list(element.children)
    named = {}
    for child in children:
        prefix, _, number = (child.name or "").rpartition("_")
        if prefix and number.isdigit():
            named[int(number)] = child
    if named:
        return named.get(index)
    return children[index - 1] if index <= len(children) else None


def hl7apy_raw(segment: Any, field: int, repetition: int, component: int, sub: int) -> str:
    name = f"{segment.name}_{field}"
    repetitions = [child for child in segment.children if child.name == name]
    if repetition > len(repetitions):
        return ""
    component_element = _positional(repetitions[repetition - 1], component)
    if component_element is None:
        return ""
    leaf = _positional(component_element, sub)
    if leaf is None:
        return ""
    # The value as received: hl7apy's to_er7() re-escapes sequences it does not know (\.br\).
    raw = getattr(leaf.value, "value", None)
    return raw if isinstance(raw, str) else str(leaf.to_er7())


def test_mapped_fields_list_covers_what_the_mapping_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    read: set[tuple[str, int]] = set()
    original = Segment.repetitions

    def recording(self: Segment, number: int) -> Any:
        read.add((self.name, number))
        return original(self, number)

    monkeypatch.setattr(Segment, "repetitions", recording)
    for sample in samples.VALID_ORDERS.values():
        parse_order_message(sample)
    assert read - {("MSH", 1), ("MSH", 2)} <= set(MAPPED_FIELDS)
    assert len(read) > 30


def hl7apy_segment(message: Any, name: str, sequence: int) -> Any:
    return [segment for segment in message.children if segment.name == name][sequence - 1]


@pytest.mark.parametrize("name", list(samples.VALID_ORDERS))
def test_tokenizer_agrees_with_hl7apy_on_every_mapped_field(name: str) -> None:
    text = samples.VALID_ORDERS[name]
    mine = parse_er7(text)
    theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    declared = theirs.encoding_chars
    assert mine.encoding == EncodingCharacters(
        declared["FIELD"],
        declared["COMPONENT"],
        declared["REPETITION"],
        declared["ESCAPE"],
        declared["SUBCOMPONENT"],
    )
    assert [s.name for s in theirs.children] == [s.name for s in mine.segments]
    compared = 0
    for (segment_name, field), parts in MAPPED_FIELDS.items():
        for my_segment in mine.all(segment_name):
            their_segment = hl7apy_segment(theirs, segment_name, my_segment.sequence)
            repetitions = len(my_segment.repetitions(field))
            if segment_name != "MSH" and my_segment.raw_field(field):
                their_field_name = f"{segment_name}_{field}"
                their_repetitions = [
                    c for c in their_segment.children if c.name == their_field_name
                ]
                assert repetitions == len(their_repetitions), (segment_name, field)
            for repetition in range(1, repetitions + 1):
                for component, sub in parts:
                    raw = hl7apy_raw(their_segment, field, repetition, component, sub)
                    expected = decode_text(raw, mine.encoding)
                    got = my_segment.field(field, repetition).component(component, sub)
                    where = f"{my_segment!r}-{field}~{repetition}.{component}.{sub}"
                    assert got == expected, where
                    compared += 1 if expected else 0
    assert compared >= 10  # the samples fill the fields; an all-empty comparison proves nothing


def test_a_leading_byte_order_mark_is_ignored() -> None:
    with_bom = "\ufeff".encode() + samples.ORM_NW_251.encode()
    assert parse_order_message(with_bom) == parse_order_message(samples.ORM_NW_251)

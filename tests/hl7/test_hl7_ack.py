"""Acknowledgements: layout per version, ERR contents, escaping, and hl7apy as the reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from hl7.ack import MAX_TEXT_LENGTH, build_ack, build_with_hl7apy, new_control_id, parse_ack
from hl7.errors import (
    AckCode,
    ApplicationInternalError,
    DataTypeError,
    ErrorCode,
    ErrorLocation,
    Hl7Error,
    RequiredFieldMissing,
    TableValueNotFound,
    UnsupportedVersion,
)
from hl7.header import MessageHeader, read_header
from hl7.mllp.framing import frame

import hl7_samples as samples

WHEN = datetime(2024, 3, 1, 10, 15, 30, tzinfo=timezone(timedelta(hours=1)))
INBOUND_251 = (
    "MSH|^~\\&|HIS^1.2.3^ISO|GENHOSP|RIS|RADIOLOGY|20240301101500||ORM^O01^ORM_O01|MSG1|P|2.5.1\r"
)
NASTY_TEXT = "a|b^c~d\\e&f \\F\\ Ærø"


def header(version: str = "2.5.1", **fields: str) -> MessageHeader:
    text = samples.with_field(INBOUND_251, "MSH", 12, version)
    for name, value in fields.items():
        text = samples.with_field(text, "MSH", int(name.removeprefix("msh_")), value)
    found = read_header(text)
    assert found is not None
    return found


def test_accept_ack_layout_v251() -> None:
    ack = build_ack(header(), control_id="ACK-1", timestamp=WHEN)
    assert ack.text == (
        "MSH|^~\\&|RIS|RADIOLOGY|HIS^1.2.3^ISO|GENHOSP|20240301101530+0100||ACK^O01^ACK|ACK-1|P|2.5.1\r"
        "MSA|AA|MSG1\r"
    )
    assert (ack.code, ack.control_id, ack.acknowledged_control_id) == (
        AckCode.ACCEPT,
        "ACK-1",
        "MSG1",
    )


def test_error_ack_v251_has_err_location_code_severity_and_text() -> None:
    error = RequiredFieldMissing(
        "PID-3 patient identifier list has no id", ErrorLocation("PID", 1, 3)
    )
    ack = build_ack(header(), error, control_id="ACK-2", timestamp=WHEN)
    segments = ack.text.split("\r")
    assert segments[1] == "MSA|AE|MSG1|PID-3 patient identifier list has no id"
    assert segments[2] == (
        "ERR||PID^1^3|101^Required field missing^HL70357|E||||"
        "PID-3 patient identifier list has no id"
    )
    assert ack.code is AckCode.ERROR


def test_error_location_with_component_names_repetition_and_component() -> None:
    error = DataTypeError("OBR-27.4 start", ErrorLocation("OBR", 2, 27, 4))
    ack = build_ack(header(), error, control_id="A", timestamp=WHEN)
    assert "\rERR||OBR^2^27^1^4|102^Data type error^HL70357|E|" in ack.text


def test_error_without_location_leaves_err_2_empty() -> None:
    ack = build_ack(header(), ApplicationInternalError("internal"), control_id="A", timestamp=WHEN)
    assert "\rERR|||207^Application internal error^HL70357|E||||internal\r" in ack.text
    assert ack.code is AckCode.REJECT


@pytest.mark.parametrize(
    ("version", "message_type", "err"),
    [
        ("2.3", "ACK^O01", "ERR|PID^1^8^103&Table value not found&HL70357"),
        ("2.3.1", "ACK^O01^ACK", "ERR|PID^1^8^103&Table value not found&HL70357"),
        ("2.4", "ACK^O01^ACK", "ERR|PID^1^8^103&Table value not found&HL70357"),
        ("2.5", "ACK^O01^ACK", "ERR||PID^1^8|103^Table value not found^HL70357|E||||sex"),
    ],
)
def test_ack_answers_in_the_inbound_version(version: str, message_type: str, err: str) -> None:
    error = TableValueNotFound("sex", ErrorLocation("PID", 1, 8))
    ack = build_ack(header(version), error, control_id="A", timestamp=WHEN)
    msh, msa, err_segment, end = ack.text.split("\r")
    assert msh.split("|")[8:12] == [message_type, "A", "P", version]
    assert msa == "MSA|AE|MSG1|sex"
    assert err_segment == err
    assert end == ""


def test_unsupported_version_is_answered_in_our_version() -> None:
    error = UnsupportedVersion("version 2.6 is not accepted", ErrorLocation("MSH", 1, 12))
    ack = build_ack(header("2.6"), error, control_id="A", timestamp=WHEN)
    assert ack.text.startswith("MSH|^~\\&|RIS|RADIOLOGY|HIS^1.2.3^ISO|GENHOSP|")
    assert "|ACK^O01^ACK|A|P|2.5.1\r" in ack.text
    assert "\rERR||MSH^1^12|203^Unsupported version id^HL70357|E|" in ack.text


def test_ack_without_a_readable_header_is_still_well_formed() -> None:
    ack = build_ack(None, UnsupportedVersion("no MSH"), control_id="A", timestamp=WHEN)
    assert ack.text.startswith("MSH|^~\\&|||||20240301101530+0100||ACK^^ACK|A|P|2.5.1\r")
    assert "\rMSA|AR||no MSH\r" in ack.text
    assert parse_ack(ack.text).acknowledged_control_id == ""


def test_user_text_is_escaped_and_reads_back_unchanged() -> None:
    error = DataTypeError(NASTY_TEXT + "\r\x0b\x1c", ErrorLocation("OBR", 1, 13))
    ack = build_ack(header(), error, control_id="A", timestamp=WHEN)
    assert "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f \\E\\F\\E\\ Ærø\\X0D\\\\X0B\\\\X1C\\" in ack.text
    assert ack.text.count("\r") == 3  # one per segment: the CR in the text was escaped
    frame(ack.encode())  # no MLLP block byte survived
    read_back = parse_ack(ack.encode())
    assert read_back.text == NASTY_TEXT + "\r\x0b\x1c"
    assert (read_back.error_code, read_back.error_location) == (102, "OBR^1^13")


def test_echoed_header_values_are_decoded_then_escaped_again() -> None:
    inbound = header(msh_3="HIS\\T\\LAB^^", msh_10="ID\\S\\7")
    assert inbound.sending_application.namespace_id == "HIS&LAB"
    ack = build_ack(inbound, control_id="A", timestamp=WHEN)
    assert ack.text.split("\r")[0].split("|")[4] == "HIS\\T\\LAB"
    assert "\rMSA|AA|ID\\S\\7\r" in ack.text
    assert parse_ack(ack.text).acknowledged_control_id == "ID^7"


def test_long_texts_are_cut_to_the_field_length() -> None:
    ack = build_ack(header(), DataTypeError("x" * 500), control_id="A", timestamp=WHEN)
    assert parse_ack(ack.text).text == "x" * MAX_TEXT_LENGTH


def test_known_character_set_is_echoed_and_used_for_the_bytes() -> None:
    ack = build_ack(header(msh_18="8859/1"), DataTypeError("Ærø"), control_id="A", timestamp=WHEN)
    assert "|2.5.1||||||8859/1\r" in ack.text
    assert "Ærø".encode("latin-1") in ack.encode()


def test_unknown_character_set_is_not_echoed_and_utf8_is_sent() -> None:
    ack = build_ack(header(msh_18="EBCDIC"), DataTypeError("Ærø"), control_id="A", timestamp=WHEN)
    assert "EBCDIC" not in ack.text
    assert "Ærø".encode() in ack.encode()


def test_new_control_ids_fit_msh_10_and_differ() -> None:
    ids = {new_control_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert {len(control_id) for control_id in ids} == {20}


# --- hl7apy as the reference ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
@pytest.mark.parametrize(
    "error",
    [
        None,
        RequiredFieldMissing("PID-3 is empty", ErrorLocation("PID", 1, 3)),
        DataTypeError(NASTY_TEXT, ErrorLocation("TQ1", 2, 7)),
        ApplicationInternalError("internal error"),
    ],
)
def test_template_output_equals_a_full_hl7apy_build(version: str, error: Hl7Error | None) -> None:
    inbound = header(version, msh_18="UNICODE UTF-8")
    fast = build_ack(inbound, error, control_id="0123456789ABCDEF0123", timestamp=WHEN).text
    # The expected values, field by field; hl7apy decides where each one goes.
    values = {
        "sending_application": "RIS",
        "sending_facility": "RADIOLOGY",
        "receiving_application": "HIS^1.2.3^ISO",
        "receiving_facility": "GENHOSP",
        "timestamp": "20240301101530+0100",
        "message_type": "ACK^O01" if version == "2.3" else "ACK^O01^ACK",
        "control_id": "0123456789ABCDEF0123",
        "processing_id": "P",
        "character_set": "UNICODE UTF-8",
        "ack_code": "AA" if error is None else error.ack_code.value,
        "acknowledged_control_id": "MSG1",
        "text": "",
    }
    if error is not None:
        code = error.error_code
        location = error.location
        where = f"{location.segment}^{location.sequence}^{location.field}" if location else ""
        values["text"] = error.message.replace("\\", "\\E\\").replace("|", "\\F\\")
        values["text"] = (
            values["text"].replace("^", "\\S\\").replace("~", "\\R\\").replace("&", "\\T\\")
        )
        if version >= "2.5":
            values["error_location"] = where
            values["error_code"] = f"{int(code)}^{code.description}^HL70357"
        else:
            values["error_location"] = where or "^^"
            values["error_code"] = f"{int(code)}&{code.description}&HL70357"
    reference = build_with_hl7apy(version, values, with_error=error is not None)
    assert fast == reference + "\r"


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1"])
def test_hl7apy_parses_and_validates_the_ack_strictly(version: str) -> None:
    error = TableValueNotFound(NASTY_TEXT, ErrorLocation("ORC", 1, 1))
    for maybe_error in (None, error):
        ack = build_ack(header(version), maybe_error, control_id="A", timestamp=WHEN)
        parsed = parse_message(ack.text, validation_level=VALIDATION_LEVEL.STRICT)
        assert Validator.validate(parsed)
        assert parsed.msa.msa_2.to_er7() == "MSG1"
        assert parsed.msh.msh_5.to_er7() == "HIS^1.2.3^ISO"


def test_hl7apy_reads_the_v23_ack_tolerantly() -> None:
    # hl7apy cannot parse any v2.3 ACK strictly: it derives the structure name ACK_O01 from
    # MSH-9, which v2.3 has no component for. Tolerant parsing still checks the layout.
    error = TableValueNotFound("sex", ErrorLocation("PID", 1, 8))
    ack = build_ack(header("2.3"), error, control_id="A", timestamp=WHEN)
    parsed = parse_message(ack.text, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert [segment.name for segment in parsed.children] == ["MSH", "MSA", "ERR"]
    assert parsed.msa.msa_1.to_er7() == "AE"
    assert parsed.err.err_1.to_er7() == "PID^1^8^103&Table value not found&HL70357"


# --- errors and reading ACKs ----------------------------------------------------------------


def test_error_classes_carry_their_codes() -> None:
    assert (UnsupportedVersion("x").ack_code, UnsupportedVersion("x").error_code) == (
        AckCode.REJECT,
        ErrorCode.UNSUPPORTED_VERSION_ID,
    )
    assert RequiredFieldMissing("x").ack_code is AckCode.ERROR
    custom = Hl7Error("locked", ack_code=AckCode.REJECT, error_code=ErrorCode(206))
    assert (custom.ack_code, int(custom.error_code)) == (AckCode.REJECT, 206)
    assert str(RequiredFieldMissing("empty", ErrorLocation("OBR", 2, 27, 4))) == (
        "AE 101 at OBR[2]-27.4: empty"
    )
    with pytest.raises(ValueError):
        Hl7Error("x", ack_code=AckCode.ACCEPT)


@pytest.mark.parametrize("segment", ["", "pid", "PI", "PIDX", "P|D"])
def test_error_location_refuses_what_is_not_a_segment_id(segment: str) -> None:
    with pytest.raises(ValueError):
        ErrorLocation(segment)


def test_error_location_refuses_positions_from_zero() -> None:
    with pytest.raises(ValueError):
        ErrorLocation("PID", 0)
    with pytest.raises(ValueError):
        ErrorLocation("PID", 1, 0)
    with pytest.raises(ValueError):
        ErrorLocation("PID", 1, None, 2)


def test_parse_ack_reads_v23_err_1() -> None:
    ack = samples.message(
        "MSH|^~\\&|RIS|R|HIS|H|20240301||ACK^O01|A|P|2.3",
        "MSA|AE|M1|bad",
        "ERR|PID^1^3^101&Req&HL70357",
    )
    summary = parse_ack(ack)
    assert (summary.code, summary.acknowledged_control_id, summary.control_id) == ("AE", "M1", "A")
    assert (summary.error_code, summary.error_location, summary.text) == (101, "PID^1^3", "bad")


def test_parse_ack_refuses_an_answer_without_msa() -> None:
    with pytest.raises(Hl7Error):
        parse_ack(INBOUND_251)


def test_timestamp_must_be_aware() -> None:
    with pytest.raises(ValueError):
        build_ack(header(), control_id="A", timestamp=datetime(2024, 3, 1))
    utc = build_ack(header(), control_id="A", timestamp=datetime(2024, 3, 1, tzinfo=UTC))
    assert "|20240301000000+0000|" in utc.text

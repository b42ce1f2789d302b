"""Original-mode acknowledgements (ACK), built from the inbound header by pure functions.

Layout (HL7 v2.5.1 2.9.2, 2.14.1/2.15.5): MSH-3/4 and MSH-5/6 swapped from the inbound message,
MSH-9 `ACK^<inbound trigger>^ACK` (`ACK^<trigger>` in v2.3, which has no message structure
component), MSH-10 a new control id, MSH-12 the inbound version when supported (else 2.5.1),
MSA-1 AA/AE/AR, MSA-2 the inbound MSH-10. AE and AR add one ERR segment: from v2.5 ERR-2 location
(SEG^seq^field[^rep^component]), ERR-3 table 0357 code, ERR-4 severity E, ERR-8 text; before v2.5
ERR-1 (ELD: SEG^seq^field^code&text&HL70357). MSA-3 carries the text too, for the many HIS
consoles that show only MSA-3 (v2.5.1 keeps it for backward compatibility).

Why a template: building an ACK with hl7apy costs about 5-8 ms (measured: `python
bench/hl7_parsing.py`), a large part of the 5 ms per message that 200 messages/s on one connection
allow for parse, commit and answer; filling the template costs about 0.01-0.03 ms. So hl7apy builds
each ACK layout once per (version, with ERR) with placeholder tokens; every ACK is that template
with the values, escaped by `hl7.er7.escape_text`, put in. The structure therefore comes from
hl7apy; tests/hl7/test_hl7_ack.py checks that template output equals a full hl7apy build and that
hl7apy parses it back strictly.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from hl7.datatypes import HierarchicDesignator
from hl7.er7 import codec_for, decode_message, encode_message, escape_text, parse_er7
from hl7.errors import AckCode, ErrorLocation, Hl7Error, SegmentSequenceError
from hl7.header import OWN_VERSION, SUPPORTED_VERSIONS, MessageHeader, header_from_segment
from hl7.timestamps import format_timestamp

#: MSA-3 is ST(80) and ERR-8 TX(80) in v2.5.1: longer texts are cut, not rejected by the peer.
MAX_TEXT_LENGTH = 80
_TEMPLATE_FIELDS = (
    "sending_application",
    "sending_facility",
    "receiving_application",
    "receiving_facility",
    "timestamp",
    "message_type",
    "control_id",
    "processing_id",
    "character_set",
    "ack_code",
    "acknowledged_control_id",
    "text",
)
_ERROR_FIELDS = ("error_location", "error_code")


@dataclass(frozen=True)
class Acknowledgement:
    """An ACK ready to send and to log."""

    text: str  # ER7, every segment ending in CR
    code: AckCode  # MSA-1
    control_id: str  # MSH-10 of the ACK
    acknowledged_control_id: str  # MSA-2: the inbound MSH-10
    character_set: str  # MSH-18, echoed from the inbound message when known

    def encode(self) -> bytes:
        return encode_message(self.text, self.character_set)


def prepare_templates() -> None:
    """Build every ACK layout now (about 70 ms) rather than on the first message of each kind."""
    for version in SUPPORTED_VERSIONS:
        for with_error in (False, True):
            _template(version, with_error)


def new_control_id() -> str:
    """A fresh MSH-10: 20 hexadecimal characters (MSH-10 is ST(20) in v2.5.1)."""
    return secrets.token_hex(10).upper()


def build_ack(
    inbound: MessageHeader | None,
    error: Hl7Error | None = None,
    *,
    control_id: str,
    timestamp: datetime,
) -> Acknowledgement:
    """AA when `error` is None, else AE/AR with ERR from the error.

    `inbound` None (nothing readable as MSH) still gives a well-formed ACK with an empty MSA-2.
    """
    header = inbound or _UNKNOWN_SENDER
    version = header.version if header.version in SUPPORTED_VERSIONS else OWN_VERSION
    character_set = header.character_set if codec_for(header.character_set) else ""
    code = AckCode.ACCEPT if error is None else error.ack_code
    trigger = escape_text(header.trigger_event)
    values = {
        "sending_application": _hd(header.receiving_application),
        "sending_facility": _hd(header.receiving_facility),
        "receiving_application": _hd(header.sending_application),
        "receiving_facility": _hd(header.sending_facility),
        "timestamp": format_timestamp(timestamp),
        "message_type": f"ACK^{trigger}" if version == "2.3" else f"ACK^{trigger}^ACK",
        "control_id": escape_text(control_id),
        "processing_id": escape_text(header.processing_id or "P"),
        "character_set": escape_text(character_set),
        "ack_code": code.value,
        "acknowledged_control_id": escape_text(header.control_id),
        "text": "",
    }
    if error is not None:
        values["text"] = escape_text(error.message[:MAX_TEXT_LENGTH])
        values["error_location"] = _location(error.location, version)
        values["error_code"] = _error_code(error, version)
    text = _fill(_template(version, error is not None), values)
    return Acknowledgement(
        text=text,
        code=code,
        control_id=control_id,
        acknowledged_control_id=header.control_id,
        character_set=character_set,
    )


_UNKNOWN_SENDER = MessageHeader(
    sending_application=HierarchicDesignator(),
    sending_facility=HierarchicDesignator(),
    receiving_application=HierarchicDesignator(),
    receiving_facility=HierarchicDesignator(),
    message_datetime="",
    message_type="",
    trigger_event="",
    message_structure="",
    control_id="",
    processing_id="",
    version="",
    character_set="",
)


def _hd(value: HierarchicDesignator) -> str:
    parts = [value.namespace_id, value.universal_id, value.universal_id_type]
    return "^".join(escape_text(part) for part in parts).rstrip("^")


def _location(location: ErrorLocation | None, version: str) -> str:
    """ERR-2 (ERL) from v2.5, or the first three components of ERR-1 (ELD) before."""
    if location is None:
        return "" if _has_erl(version) else "^^"
    parts = [location.segment, str(location.sequence)]
    if location.field is not None:
        parts.append(str(location.field))
        if location.component is not None and _has_erl(version):
            parts += ["1", str(location.component)]  # ERL-4 field repetition, ERL-5 component
    if not _has_erl(version):
        parts += [""] * (3 - len(parts))
    return "^".join(parts)


def _error_code(error: Hl7Error, version: str) -> str:
    """ERR-3 (CWE) from v2.5; ELD-4 (CE as subcomponents) before."""
    separator = "^" if _has_erl(version) else "&"
    parts = (str(int(error.error_code)), error.error_code.description, "HL70357")
    return separator.join(parts)


def _has_erl(version: str) -> bool:
    return version >= "2.5"


def _fill(template: str, values: Mapping[str, str]) -> str:
    filled = template.format_map(values)
    # Drop trailing empty fields (an absent MSH-18, MSA-3): HL7 says trailing delimiters may go.
    return "".join(segment.rstrip("|") + "\r" for segment in filled.split("\r") if segment)


@cache
def _template(version: str, with_error: bool) -> str:
    names = _TEMPLATE_FIELDS + (_ERROR_FIELDS if with_error else ())
    tokens = {name: _token(name) for name in names}
    text = build_with_hl7apy(version, tokens, with_error=with_error)
    text = text.replace("{", "{{").replace("}", "}}")
    for name, token in tokens.items():
        if token not in text:
            raise RuntimeError(f"hl7apy did not place {name} in the ACK template")
        text = text.replace(token, "{" + name + "}")
    return text


def _token(name: str) -> str:
    # Letters only: survives hl7apy's escaping and cannot collide with constant ACK content.
    return "QQ" + name.upper().replace("_", "") + "QQ"


def build_with_hl7apy(version: str, values: Mapping[str, str], *, with_error: bool) -> str:
    """The ACK layout built by hl7apy from already-escaped ER7 values (slow: milliseconds).

    Used once per layout to make the template, and by the tests as the reference. Tolerant
    validation, because the template is built from placeholder tokens, not real values.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    ack = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    ack.msh.msh_3 = values["sending_application"]
    ack.msh.msh_4 = values["sending_facility"]
    ack.msh.msh_5 = values["receiving_application"]
    ack.msh.msh_6 = values["receiving_facility"]
    ack.msh.msh_7 = values["timestamp"]
    ack.msh.msh_9 = values["message_type"]
    ack.msh.msh_10 = values["control_id"]
    ack.msh.msh_11 = values["processing_id"]
    ack.msh.msh_12 = version
    if values["character_set"]:
        ack.msh.msh_18 = values["character_set"]
    ack.msa.msa_1 = values["ack_code"]
    ack.msa.msa_2 = values["acknowledged_control_id"]
    if values["text"]:
        ack.msa.msa_3 = values["text"]
    if with_error:
        err = ack.add_segment("ERR")
        if _has_erl(version):
            if values["error_location"]:
                err.err_2 = values["error_location"]
            err.err_3 = values["error_code"]
            err.err_4 = "E"
            if values["text"]:
                err.err_8 = values["text"]
        else:
            err.err_1 = values["error_location"] + "^" + values["error_code"]
    text: str = ack.to_er7()
    return text


# --- reading ACKs (client side) -------------------------------------------------------------


@dataclass(frozen=True)
class AckSummary:
    """What a sender needs from an ACK it received."""

    code: str  # MSA-1 (AA/AE/AR; CA/CE/CR if the peer answers in enhanced mode)
    acknowledged_control_id: str  # MSA-2
    control_id: str  # MSH-10 of the ACK
    error_code: int | None  # ERR-3.1 (v2.5+) or ERR-1.4.1
    error_location: str  # ERR-2 or ERR-1.1-3 as sent, e.g. PID^1^3
    text: str  # ERR-8, else MSA-3


def parse_ack(raw: bytes | str) -> AckSummary:
    """Read an ACK; NotAnHl7Message / SegmentSequenceError when it is not one."""
    message = parse_er7(decode_message(raw) if isinstance(raw, bytes) else raw)
    msa = message.first("MSA")
    if msa is None:
        raise SegmentSequenceError("the answer has no MSA segment", ErrorLocation("MSA"))
    header = header_from_segment(message.msh)
    err = message.first("ERR")
    error_code: str = ""
    location = ""
    text = msa.value(3)
    if err is not None:
        if err.value(3):
            error_code = err.value(3)
            location = err.field(2).raw
        else:
            error_code = err.value(1, 4, 1)
            location = "^".join(err.field(1).raw.split("^")[:3]).rstrip("^")
        text = err.value(8) or text
    return AckSummary(
        code=msa.value(1),
        acknowledged_control_id=msa.value(2),
        control_id=header.control_id,
        error_code=int(error_code) if error_code.isdigit() else None,
        error_location=location,
        text=text,
    )

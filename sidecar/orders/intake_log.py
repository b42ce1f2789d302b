"""Inbound HL7 messages in the message log (sidecar.results.message_log): a row that can be
stored whatever the message holds (a refusal is logged too), keyed so that a resend is
recognised, and the header checks that keep those keys usable."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from hl7.er7 import parse_er7
from hl7.errors import DataTypeError, DuplicateKeyIdentifier, ErrorLocation
from hl7.header import MessageHeader
from sidecar.core.dicom_text import stored
from sidecar.core.models import table_of
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus

_INSERT_LOG_ROW = insert(table_of(Hl7Message))


def sender_of(header: MessageHeader | None) -> str:
    """MSH-3^MSH-4, storable whatever they hold (check_header refuses what is unfit)."""
    if header is None:
        return "unknown"
    return _printable(f"{header.sending_application.name}^{header.sending_facility.name}")[:200]


class RepeatedControlId(DuplicateKeyIdentifier):
    """A control id this sender already used for a different message."""

    def __init__(self) -> None:
        super().__init__(
            "MSH-10 message control id was already used for a different message",
            ErrorLocation("MSH", 1, 10),
        )


#: The log's key columns: MSH-10 is ST (199 in the newest versions), MSH-3 and MSH-4 HD
#: names; together in `sender`, each name at most 99 characters.
_CONTROL_ID = stored(199)
_HEADER_NAME = stored(99)


def check_header(header: MessageHeader) -> None:
    """AE 102 for an MSH-10, MSH-3 or MSH-4 the message log cannot hold as sent, and for an
    MSH-10 of several parts: only its first part would be echoed and compared, so `K^1` and
    `K^2` would be taken for the same message."""
    if not header.control_id_is_single:
        raise DataTypeError(
            "MSH-10 message control id is one value (ST): it holds a component, subcomponent "
            "or repetition separator",
            ErrorLocation("MSH", 1, 10),
        )
    for value, field, label in (
        (header.control_id, 10, "message control id"),
        (header.sending_application.name, 3, "sending application"),
        (header.sending_facility.name, 4, "sending facility"),
    ):
        problem = (_CONTROL_ID if field == 10 else _HEADER_NAME).problem(value)
        if problem is not None:
            raise DataTypeError(f"MSH-{field} {label} {problem}", ErrorLocation("MSH", 1, field))


def check_no_nul(text: str) -> None:
    """AE 102 for a NUL character anywhere: HL7 text has none (binary data is escaped as
    \\X00\\), and the message log could not keep it."""
    if "\x00" not in text:
        return
    for segment in parse_er7(text).segments:
        for number in range(1, segment.field_count + 1):
            if "\x00" in segment.raw_field(number):
                raise DataTypeError(
                    f"{segment.name}-{number} contains a NUL character",
                    ErrorLocation(segment.name, segment.sequence, number),
                )
    raise DataTypeError("the message contains a NUL character")


def same_message(logged: str, received: str) -> bool:
    """Whether `received` is the logged message sent again: the same text but for MSH-7 (the
    time of the message, which some engines stamp anew when they resend)."""
    return _without_msh_7(logged) == _without_msh_7(received)


def _without_msh_7(text: str) -> str:
    text = text.strip().replace("\r\n", "\r").replace("\n", "\r")
    msh, separator, rest = text.partition("\r")
    if msh.startswith("MSH") and len(msh) > 3:
        fields = msh.split(msh[3])
        if len(fields) > 6:
            fields[6] = ""  # [0] MSH, [1] MSH-2, ... [6] MSH-7
        msh = msh[3].join(fields)
    return msh + separator + rest


_NOT_PRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    return _NOT_PRINTABLE.sub("?", text)


def storable(text: str) -> str:
    """Text PostgreSQL can keep: a NUL (refused by check_no_nul) shown as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def log_row(
    text: str,
    header: MessageHeader | None,
    sender: str,
    *,
    status: Hl7MessageStatus,
    ack_code: str,
    ack: str,
    order_id: int | None,
    now: datetime,
    error: str | None = None,
    note: str | None = None,
    repeat: bool = False,
) -> dict[str, Any]:
    """The hl7_message row of an inbound message, every column but the id. Whatever the
    message holds, the row can be stored: a refusal is logged too."""
    receiver = (
        f"{header.receiving_application.name}^{header.receiving_facility.name}" if header else None
    )
    return {
        "direction": Hl7Direction.INBOUND,
        "control_id": _log_key(header, repeat=repeat),
        "message_type": _printable(header.message_code if header else "(unreadable)")[:32],
        "sender": sender,
        "receiver": _printable(receiver)[:200] if receiver else None,
        "status": status,
        "ack_code": ack_code,
        "error_text": storable(error)[:1000] if error else None,
        "note": note[:1000] if note else None,
        "raw": storable(text),
        "ack_raw": ack,
        "order_id": order_id,
        "received_at": now,
        "processed_at": now,
        "report_id": None,
        "result_status": None,
        "order_status": None,
        "attempts": 0,
        "next_attempt_at": None,
    }


def _log_key(header: MessageHeader | None, *, repeat: bool) -> str:
    """MSH-10, the key a resend is recognised by. A message without a usable one cannot be a
    duplicate of anything, and a different message under a used one is not the original: each
    gets a unique key of its own."""
    control_id = header.control_id if header else ""
    unique = uuid.uuid4().hex
    if not control_id:
        return f"(none) {unique}"
    if _CONTROL_ID.problem(control_id) is not None:
        return f"(invalid) {unique}"
    if repeat:
        return f"{control_id[:160]} (repeat {unique[:12]})"
    return control_id


def insert_log_row(session: Session, row: dict[str, Any]) -> None:
    """Stores the row in the session's transaction: a plain INSERT, no ORM object (the hot path).
    A repeated MSH-10 from the same sender fails the table's unique key (IntegrityError)."""
    session.connection().execute(_INSERT_LOG_ROW, row)


@dataclass(frozen=True)
class Applied:
    """What an accepted message changed: the orders to announce after the commit, the order its
    log row names, a note on how it was read, and what the orders are to the log line."""

    order_ids: list[int]
    logged_order_id: int | None
    note: str | None
    what: str

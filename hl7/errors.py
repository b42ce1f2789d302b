"""Errors that become HL7 acknowledgements: every one carries what the ACK needs.

An inbound message that cannot be accepted is answered, never dropped: the error names the
acknowledgement code (MSA-1), the HL7 error code (ERR-3, table 0357), where the problem is (ERR-2)
and a short text for the sender's operators (ERR-8). Texts never quote patient data (names, ids,
birth dates), because they are also logged; codes and field positions are enough to find the fault.

    Hl7Error                      ack_code  error_code
    ├── MessageRejected           AR        (the message as a whole cannot be processed)
    │   ├── NotAnHl7Message       AR        100 segment sequence error (no MSH first)
    │   ├── UnsupportedMessageType AR       200
    │   ├── UnsupportedTriggerEvent AR      201
    │   ├── UnsupportedVersion    AR        203
    │   ├── MessageTooLarge       AR        207 (MLLP frame over the size limit)
    │   └── ApplicationInternalError AR     207 (our fault: the sender may retry)
    └── MessageContentError       AE        (the content is wrong: fix the message)
        ├── SegmentSequenceError  AE        100 (a required segment is missing or misplaced)
        ├── RequiredFieldMissing  AE        101
        ├── DataTypeError         AE        102 (bad date, bad UID, value too long)
        ├── TableValueNotFound    AE        103 (unknown sex, priority, order control)
        ├── UnknownKeyIdentifier  AE        204 (e.g. XO/CA for an order we do not know)
        └── DuplicateKeyIdentifier AE       205

Original-mode semantics (HL7 v2.5.1 section 2.9.2): AR means "rejected for a reason unrelated to
the content" (unsupported type, version, or our own failure), AE means "the content is wrong".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class AckCode(StrEnum):
    """MSA-1 acknowledgement code, original mode (HL7 table 0008)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes (ERR-3 in v2.5+, ERR-1.4 before)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def description(self) -> str:
        """The table's text for the code, sent as ERR-3.2."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


@dataclass(frozen=True)
class ErrorLocation:
    """ERR-2 error location (ERL): segment id, its occurrence in the message, field, component.

    `sequence` counts occurrences of that segment id from 1 (the second OBR is OBR^2);
    `field` None points at the whole segment (e.g. a missing segment).
    """

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __post_init__(self) -> None:
        # The location is written into the ACK verbatim: refuse anything that is not a segment id.
        if not _SEGMENT_ID.fullmatch(self.segment):
            raise ValueError(f"not a segment id: {self.segment!r}")
        if self.sequence < 1 or (self.field is not None and self.field < 1):
            raise ValueError("segment sequence and field position count from 1")
        if self.component is not None and (self.field is None or self.component < 1):
            raise ValueError("a component position needs a field position")

    def __str__(self) -> str:
        """Human form for texts and logs: PID-3, OBR[2]-27.4."""
        text = self.segment if self.sequence == 1 else f"{self.segment}[{self.sequence}]"
        if self.field is not None:
            text += f"-{self.field}"
            if self.component is not None:
                text += f".{self.component}"
        return text


class Hl7Error(Exception):
    """An inbound message we answer with AE or AR instead of AA."""

    ack_code: AckCode = AckCode.ERROR
    error_code: ErrorCode = ErrorCode.APPLICATION_INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        location: ErrorLocation | None = None,
        *,
        ack_code: AckCode | None = None,
        error_code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        if ack_code is not None:
            if ack_code is AckCode.ACCEPT:
                raise ValueError("an error cannot be acknowledged with AA")
            self.ack_code = ack_code
        if error_code is not None:
            self.error_code = error_code

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location is not None else ""
        return f"{self.ack_code} {int(self.error_code)}{where}: {self.message}"


class MessageRejected(Hl7Error):
    """AR: the message cannot be processed at all, whatever its content."""

    ack_code = AckCode.REJECT


class NotAnHl7Message(MessageRejected):
    """No MSH segment with a field separator and encoding characters at the start."""

    error_code = ErrorCode.SEGMENT_SEQUENCE_ERROR


class UnsupportedMessageType(MessageRejected):
    """MSH-9.1 is not a message type this receiver handles."""

    error_code = ErrorCode.UNSUPPORTED_MESSAGE_TYPE


class UnsupportedTriggerEvent(MessageRejected):
    """MSH-9.2 is not a trigger event this receiver handles for that message type."""

    error_code = ErrorCode.UNSUPPORTED_EVENT_CODE


class UnsupportedVersion(MessageRejected):
    """MSH-12 is outside the versions this receiver accepts."""

    error_code = ErrorCode.UNSUPPORTED_VERSION_ID


class MessageTooLarge(MessageRejected):
    """The MLLP frame exceeded the configured maximum size; its content was discarded."""

    error_code = ErrorCode.APPLICATION_INTERNAL_ERROR


class ApplicationInternalError(MessageRejected):
    """Our own failure (database down, bug): AR so that the sender retries later."""

    error_code = ErrorCode.APPLICATION_INTERNAL_ERROR


class MessageContentError(Hl7Error):
    """AE: the message was understood but its content is wrong or incomplete."""

    ack_code = AckCode.ERROR


class SegmentSequenceError(MessageContentError):
    error_code = ErrorCode.SEGMENT_SEQUENCE_ERROR


class RequiredFieldMissing(MessageContentError):
    error_code = ErrorCode.REQUIRED_FIELD_MISSING


class DataTypeError(MessageContentError):
    error_code = ErrorCode.DATA_TYPE_ERROR


class TableValueNotFound(MessageContentError):
    error_code = ErrorCode.TABLE_VALUE_NOT_FOUND


class UnknownKeyIdentifier(MessageContentError):
    error_code = ErrorCode.UNKNOWN_KEY_IDENTIFIER


class DuplicateKeyIdentifier(MessageContentError):
    error_code = ErrorCode.DUPLICATE_KEY_IDENTIFIER

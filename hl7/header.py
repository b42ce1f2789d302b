"""MSH, read first and on its own: whatever else is wrong, the ACK can still echo MSH-10.

`parse_header` is strict about the one thing it needs (an MSH with usable delimiters) and reads
every other field as text without judging it; deciding which types and versions are supported is
the business of the message mapping (hl7/orders.py). `read_header` never raises: the server uses it
to answer a message its handler failed on.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7.datatypes import HierarchicDesignator, read_hd
from hl7.er7 import Er7Message, Segment, decode_message, parse_er7

#: MSH-12 versions accepted for inbound orders, and in which an ACK can answer.
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
#: The version of messages this service originates (and of ACKs to unsupported versions).
OWN_VERSION = "2.5.1"


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields needed to route, log and acknowledge a message."""

    sending_application: HierarchicDesignator  # MSH-3
    sending_facility: HierarchicDesignator  # MSH-4
    receiving_application: HierarchicDesignator  # MSH-5
    receiving_facility: HierarchicDesignator  # MSH-6
    message_datetime: str  # MSH-7, as sent (validated by the mapping)
    message_type: str  # MSH-9.1, e.g. ORM
    trigger_event: str  # MSH-9.2, e.g. O01
    message_structure: str  # MSH-9.3, e.g. ORM_O01 ('' before v2.3.1)
    control_id: str  # MSH-10, echoed in MSA-2
    processing_id: str  # MSH-11.1: P production, T training, D debugging
    version: str  # MSH-12.1
    character_set: str  # MSH-18, first repetition ('' means the HL7 default, ASCII)
    # MSH-10 is ST, one value: False when it was sent with components, subcomponents or
    # repetitions (`control_id` is then only its first part, which other ids may share).
    control_id_is_single: bool = True

    @property
    def message_code(self) -> str:
        """Type and trigger as people write them: ORM^O01."""
        return f"{self.message_type}^{self.trigger_event}"


def header_from_segment(msh: Segment) -> MessageHeader:
    message_type = msh.field(9)
    return MessageHeader(
        sending_application=read_hd(msh.field(3)),
        sending_facility=read_hd(msh.field(4)),
        receiving_application=read_hd(msh.field(5)),
        receiving_facility=read_hd(msh.field(6)),
        message_datetime=msh.value(7),
        message_type=message_type.component(1).strip(),
        trigger_event=message_type.component(2).strip(),
        message_structure=message_type.component(3).strip(),
        control_id=msh.value(10).strip(),
        processing_id=msh.value(11).strip(),
        version=msh.value(12).strip(),
        character_set=msh.value(18).strip(),
        control_id_is_single=_is_single_value(msh, 10),
    )


def _is_single_value(segment: Segment, number: int) -> bool:
    encoding = segment.encoding
    raw = segment.raw_field(number)
    return not any(
        delimiter in raw
        for delimiter in (encoding.component, encoding.subcomponent, encoding.repetition)
    )


def parse_header(message: Er7Message) -> MessageHeader:
    return header_from_segment(message.msh)


def read_header(raw: bytes | str) -> MessageHeader | None:
    """The header of anything that starts with MSH, however broken the rest; None otherwise."""
    try:
        text = decode_message(raw) if isinstance(raw, bytes) else raw
        text = text.lstrip()
        first_segment = text.replace("\n", "\r").split("\r", 1)[0]
        return parse_header(parse_er7(first_segment))
    except Exception:
        # Deliberately broad: this is the fallback path for messages that already failed.
        return None

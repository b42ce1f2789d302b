"""Inbound patient administration: ADT messages (v2.3 to v2.5.1) to AdtMessage.

What the registry acts on (sidecar.patients.adt): A01, A04 and A05 register a patient (or
update one already known), A08 and A31 update one, A40 merges (A34 and A39, the older merges
"patient id only" and "person", read the same way), A47 changes an identifier. Other ADT events
are answered AR 201, as unknown order events are.

Structure read: MSH, then PID (required), and for merges and identifier changes each PID followed
by its MRG (required: MRG-1 is the prior identifier). An A40 may carry several PID/MRG pairs, each
a merge of its own. Other segments (EVN, PD1, PV1, NK1, ...) are allowed and not read. The same
order of checks as orders: the header, then type and version (AR), then the content (AE, first
problem found, with its location). Texts name fields, never patient data (see hl7.errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum

from hl7.datatypes import read_hd_component
from hl7.er7 import Er7Message, Segment, decode_message, parse_er7
from hl7.errors import (
    DataTypeError,
    ErrorLocation,
    RequiredFieldMissing,
    SegmentSequenceError,
    UnsupportedMessageType,
    UnsupportedTriggerEvent,
    UnsupportedVersion,
)
from hl7.header import SUPPORTED_VERSIONS, MessageHeader, parse_header
from hl7.order_message import Patient, PatientIdentifier
from hl7.orders import read_patient
from hl7.timestamps import parse_timestamp


class AdtAction(StrEnum):
    REGISTER = "register"  # create, or update the patient already known
    UPDATE = "update"  # update (create when unknown: the HIS knows the patient)
    MERGE = "merge"  # MRG-1 into PID-3
    CHANGE_IDENTIFIER = "change_identifier"  # MRG-1 becomes PID-3


#: Trigger events (MSH-9.2) and what each does.
ADT_EVENTS = {
    "A01": AdtAction.REGISTER,
    "A04": AdtAction.REGISTER,
    "A05": AdtAction.REGISTER,
    "A08": AdtAction.UPDATE,
    "A31": AdtAction.UPDATE,
    "A40": AdtAction.MERGE,
    "A34": AdtAction.MERGE,
    "A39": AdtAction.MERGE,
    "A47": AdtAction.CHANGE_IDENTIFIER,
}
_WITH_PRIOR = {AdtAction.MERGE, AdtAction.CHANGE_IDENTIFIER}


@dataclass(frozen=True)
class PatientChange:
    """One PID (with its MRG for merges and identifier changes), and where each came from."""

    patient: Patient
    # PID-3 repetitions besides the identifier: (id, assigning authority, type).
    other_identifiers: tuple[tuple[str, str, str], ...]
    pid: Segment
    prior: PatientIdentifier | None = None  # MRG-1
    mrg: Segment | None = None


@dataclass(frozen=True)
class AdtMessage:
    header: MessageHeader
    message_datetime: datetime | None
    action: AdtAction
    changes: tuple[PatientChange, ...]


def parse_adt_message(raw: bytes | str, *, default_zone: tzinfo | None = None) -> AdtMessage:
    """Parse and check an inbound ADT; raises an `hl7.errors.Hl7Error` naming what is wrong."""
    message = parse_er7(decode_message(raw) if isinstance(raw, bytes) else raw)
    header = parse_header(message)
    action = check_supported(header)
    if not header.control_id:
        raise RequiredFieldMissing("MSH-10 message control id is empty", _at("MSH", 10))
    message_datetime = None
    if sent := message.msh.value(7):
        try:
            message_datetime = parse_timestamp(sent, default_zone=default_zone)
        except ValueError as exc:
            raise DataTypeError(f"MSH-7 date/time of message: {exc}", _at("MSH", 7)) from exc
    return AdtMessage(header, message_datetime, action, _changes(message, action))


def check_supported(header: MessageHeader) -> AdtAction:
    """AR unless MSH-9 is an ADT event this receiver acts on, in a version it reads."""
    if header.message_type != "ADT":
        raise UnsupportedMessageType(
            f"message type {header.message_type or '(empty)'} is not ADT", _at("MSH", 9, 1)
        )
    action = ADT_EVENTS.get(header.trigger_event)
    if action is None:
        events = ", ".join(sorted(ADT_EVENTS))
        raise UnsupportedTriggerEvent(
            f"trigger event {header.message_code} is not supported; supported: {events}",
            _at("MSH", 9, 2),
        )
    if header.version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"version {header.version or '(empty)'} is not accepted for {header.message_code};"
            f" accepted: {', '.join(SUPPORTED_VERSIONS)}",
            _at("MSH", 12),
        )
    return action


def _changes(message: Er7Message, action: AdtAction) -> tuple[PatientChange, ...]:
    pids = list(message.all("PID"))
    if not pids:
        raise SegmentSequenceError("PID segment missing", ErrorLocation("PID"))
    changes = []
    for pid in pids:
        mrg = _following(message, pid, "MRG") if action in _WITH_PRIOR else None
        if action in _WITH_PRIOR and mrg is None:
            raise SegmentSequenceError(
                f"MRG segment missing after PID[{pid.sequence}]: it names the prior patient",
                ErrorLocation("MRG", pid.sequence),
            )
        changes.append(
            PatientChange(
                patient=read_patient(pid),
                other_identifiers=_other_identifiers(pid),
                pid=pid,
                prior=_prior(mrg) if mrg is not None else None,
                mrg=mrg,
            )
        )
    return tuple(changes)


def _following(message: Er7Message, pid: Segment, name: str) -> Segment | None:
    """The `name` segment after this PID and before the next PID."""
    after = False
    for segment in message.segments:
        if segment is pid:
            after = True
        elif after and segment.name == "PID":
            return None
        elif after and segment.name == name:
            return segment
    return None


def _prior(mrg: Segment) -> PatientIdentifier:
    """MRG-1, prior patient identifier list: its first repetition with an id."""
    for repetition in mrg.repetitions(1):
        if repetition.component(1):
            return PatientIdentifier(
                id=repetition.component(1),
                assigning_authority=read_hd_component(repetition, 4),
                identifier_type=repetition.component(5),
            )
    raise RequiredFieldMissing(
        "MRG-1 prior patient identifier list has no id", ErrorLocation("MRG", mrg.sequence, 1)
    )


def _other_identifiers(pid: Segment) -> tuple[tuple[str, str, str], ...]:
    """PID-3 repetitions with an id, after the first (the patient's identifier)."""
    found = [
        (
            repetition.component(1),
            read_hd_component(repetition, 4).name,
            repetition.component(5),
        )
        for repetition in pid.repetitions(3)
        if repetition.component(1)
    ]
    return tuple(found[1:])


def _at(segment: str, field: int, component: int | None = None) -> ErrorLocation:
    return ErrorLocation(segment, 1, field, component)

"""Orders from the hospital information system: HL7 ORM^O01 / OMI^O23 in, ACK out.

One message at a time per connection (the MLLP server's guarantee). For each message:
    1. the message is parsed (hl7.orders), and every value the sidecar will store or offer on
       the worklist is checked against what will hold it (sidecar.order_fields);
    2. every order group is applied (sidecar.orders);
    3. the message, its ACK and the order changes are committed in one transaction;
    4. only then is AA sent: every AA is a durable order, and one the worklist can offer.
A repeated MSH-10 from the same sender gets its original acknowledgement when the message is the
same one sent again (MSH-7 aside: some engines stamp a resend anew), and AE 205 when it is a
different message under a control id already used. Anything wrong answers AE (content) or AR
(message type, version) with an ERR segment naming the field, and the message is still logged.
Supported (ORC-1, ORC-5) pairs are listed in ORDER_CONTROL; anything else is answered AE, never
silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, select

from hl7.ack import Acknowledgement, build_ack, new_control_id
from hl7.datatypes import PersonName, Provider
from hl7.er7 import decode_message, encode_message, parse_er7
from hl7.errors import (
    DataTypeError,
    DuplicateKeyIdentifier,
    ErrorLocation,
    Hl7Error,
    NotAnHl7Message,
    RequiredFieldMissing,
    TableValueNotFound,
    UnknownKeyIdentifier,
)
from hl7.header import MessageHeader, read_header
from hl7.order_message import ImagingOrder as OrderGroup
from hl7.order_message import OrderControl, OrderMessage
from hl7.orders import parse_order_message
from hl7.server import Peer
from sidecar import orders
from sidecar.dicom_text import stored
from sidecar.models.common import table_of, utcnow
from sidecar.models.orders import (
    Hl7Direction,
    Hl7Message,
    ImagingOrder,
    Modality,
    OrderStatus,
    Priority,
)
from sidecar.order_fields import order_value_problems
from sidecar.workflow import InvalidTransition

log = logging.getLogger(__name__)

_S = OrderStatus
# ORC-1 order control -> the ORC-5 order status values accepted with it, and for SC the status
# it requests. Pairs not listed are answered AE (HL7 table 0119 / 0038).
ORDER_CONTROL: dict[OrderControl, dict[str, OrderStatus | None]] = {
    OrderControl.NEW_ORDER: {"": None, "SC": None},
    OrderControl.CHANGE_ORDER: {"": None, "SC": None},
    OrderControl.CANCEL_ORDER: {"": _S.CANCELLED, "CA": _S.CANCELLED},
    OrderControl.DISCONTINUE_ORDER: {"": _S.CANCELLED, "DC": _S.CANCELLED, "CA": _S.CANCELLED},
    OrderControl.STATUS_CHANGED: {
        "SC": _S.SCHEDULED,
        "IP": _S.IN_PROGRESS,
        "CM": _S.COMPLETED,
        "HD": _S.ON_HOLD,
        "CA": _S.CANCELLED,
        "DC": _S.CANCELLED,
    },
    OrderControl.HOLD_ORDER: {"": _S.ON_HOLD, "HD": _S.ON_HOLD},
    OrderControl.RELEASE_HOLD: {"": None, "SC": None},
}

_INSERT_LOG_ROW = insert(table_of(Hl7Message))

# DICOM modality codes for OBR-24 / IPC-5 values that are not our modality names.
_MODALITY_ALIASES = {"PET": Modality.PT, "PETCT": Modality.PET_CT, "XR": Modality.DX}


class OrderIntake:
    """The MLLP handler: `await intake(raw, peer)` returns the ACK bytes."""

    def __init__(
        self,
        engine: Engine,
        *,
        zone: tzinfo,
        announce: Callable[[int], None],
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._zone = zone
        self._announce = announce
        self._now = now

    async def __call__(self, raw: bytes, peer: Peer) -> bytes:
        # Database work blocks; the event loop keeps serving other connections meanwhile.
        return await asyncio.to_thread(self.handle, raw)

    def handle(self, raw: bytes) -> bytes:
        try:
            return self._handle(raw)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The intake's pool does not test connections before use (a round trip per
            # message): one that died while idle (database restarted) fails here, and the pool
            # drops it. Once more on a fresh one. Nothing was committed, or the COMMIT itself was
            # cut after it took effect: then this try is answered as a repeated MSH-10.
            log.warning("HL7 intake: database connection lost; message handled again")
            return self._handle(raw)

    def _handle(self, raw: bytes) -> bytes:
        header = read_header(raw)
        sender = _sender(header)
        text = decode_message(raw)
        try:
            if header is None:
                raise NotAnHl7Message("the message does not start with an MSH segment")
            message = parse_order_message(text, default_zone=self._zone)
            check_header(message.header)
            check_no_nul(text)
            return self._apply(text, message, sender)
        except Hl7Error as error:
            return self._refuse(text, header, sender, error)

    # -- outcomes ------------------------------------------------------------------------------

    def _apply(self, text: str, message: OrderMessage, sender: str) -> bytes:
        """One transaction: the orders, the log row naming the first of them, the commit; the
        AA goes out only after it. Duplicates are detected by the database's unique constraints
        rather than by queries first: fewer round trips on the hot path, and no race between two
        connections. A repeated MSH-10 fails the log row's unique key (a new order sent again
        fails its accession number's first): the original ACK answers the same message sent
        again, AE 205 a different one; nothing of either is kept."""
        header = message.header
        ack = build_ack(header, None, control_id=new_control_id(), timestamp=self._now())
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                changed = [
                    self._apply_group(session, message, group, actor=f"hl7:{sender}")
                    for group in message.orders
                ]
                _log(
                    session,
                    _log_row(
                        text,
                        header,
                        sender,
                        status="accepted",
                        ack_code="AA",
                        ack=ack.text,
                        order_id=changed[0] if changed else None,
                        now=self._now(),
                    ),
                )
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                original = self._answer_to_repeat(sender, header.control_id, text)
                if original is not None:
                    return original
                raise DuplicateKeyIdentifier(
                    "the accession number or Study Instance UID is already in use",
                    ErrorLocation("OBR", 1, 18),
                ) from exc
            except Hl7Error:
                session.rollback()
                raise
        for order_id in changed:
            self._announce(order_id)
        log.info(
            "HL7 %s %s from %s accepted: %d order(s)",
            header.message_code,
            header.control_id,
            sender,
            len(changed),
        )
        return ack.encode()

    def _refuse(
        self, text: str, header: MessageHeader | None, sender: str, error: Hl7Error
    ) -> bytes:
        """AE or AR, logged. A refused message whose control id was used before: the original
        answer when it is the same message again, else AE 205 (logged under a key of its own)."""
        repeat = isinstance(error, RepeatedControlId)
        ack, row = self._refusal(text, header, sender, error, repeat=repeat)
        with Session(self._engine) as session:
            try:
                _log(session, row)
                session.commit()
            except IntegrityError:
                session.rollback()
                try:
                    original = self._answer_to_repeat(sender, row["control_id"], text)
                except RepeatedControlId as repeated:
                    original, error = None, repeated
                if original is not None:
                    return original
                if not isinstance(error, RepeatedControlId):
                    error = RepeatedControlId()
                ack, row = self._refusal(text, header, sender, error, repeat=True)
                _log(session, row)
                session.commit()
        log.info(
            "HL7 message %s from %s answered %s: %s",
            row["control_id"],
            sender,
            ack.code,
            int(error.error_code),
        )
        return ack.encode()

    def _refusal(
        self,
        text: str,
        header: MessageHeader | None,
        sender: str,
        error: Hl7Error,
        *,
        repeat: bool = False,
    ) -> tuple[Acknowledgement, dict[str, Any]]:
        ack = build_ack(header, error, control_id=new_control_id(), timestamp=self._now())
        row = _log_row(
            text,
            header,
            sender,
            status="rejected" if ack.code == "AR" else "error",
            ack_code=ack.code,
            ack=ack.text,
            order_id=None,
            now=self._now(),
            error=str(error),
            repeat=repeat,
        )
        return ack, row

    def _answer_to_repeat(self, sender: str, control_id: str, text: str) -> bytes | None:
        """The ACK first sent for this control id when `text` is that message again; raises
        RepeatedControlId when the control id was used for another message; None when it was
        not used (the conflict was elsewhere)."""
        with Session(self._engine) as session:
            logged = session.exec(
                select(Hl7Message).where(
                    Hl7Message.direction == Hl7Direction.INBOUND,
                    Hl7Message.sender == sender,
                    Hl7Message.control_id == control_id,
                )
            ).first()
        if logged is None or logged.ack_raw is None:
            return None
        if not same_message(logged.raw, _storable(text)):
            raise RepeatedControlId()
        log.info("duplicate HL7 message %s from %s: original ACK sent again", control_id, sender)
        ack_header = read_header(logged.ack_raw)
        return encode_message(logged.ack_raw, ack_header.character_set if ack_header else "")

    # -- order control -------------------------------------------------------------------------

    def _apply_group(
        self, session: Session, message: OrderMessage, group: OrderGroup, *, actor: str
    ) -> int:
        """Applies one order group; returns the id of the order it created or changed."""
        control = group.order_control
        accepted = ORDER_CONTROL.get(control)
        where = ErrorLocation("ORC", group.sequence, 1)
        if accepted is None:
            raise TableValueNotFound(f"order control {control.value} is not supported", where)
        if group.order_status not in accepted:
            raise TableValueNotFound(
                f"order status {group.order_status or '(empty)'} is not supported with order "
                f"control {control.value}",
                ErrorLocation("ORC", group.sequence, 5),
            )
        if control == OrderControl.NEW_ORDER:
            values = checked_order_values(message, group)
            # A taken accession number or Study Instance UID fails the unique constraints at
            # commit: answered AE 205 by _apply, one query fewer than asking first.
            return orders.insert_order(session, values, actor=actor, source="hl7")
        order = find_order(session, group)
        try:
            if control == OrderControl.CHANGE_ORDER:
                if order.status in (_S.COMPLETED, _S.CANCELLED):
                    raise InvalidTransition("order", order.status, order.status, ())
                changes = {
                    k: v
                    for k, v in checked_order_values(message, group).items()
                    if k not in ("accession_number", "study_instance_uid")
                }
                orders.update_order(session, order, changes, actor=actor)
                return _id(order)
            if control == OrderControl.RELEASE_HOLD:
                target = orders.initial_status(order)
            else:
                target = accepted[group.order_status] or _S.SCHEDULED
            orders.change_status(session, order, target, actor=actor)
            return _id(order)
        except InvalidTransition as exc:
            raise TableValueNotFound(
                f"order {order.accession_number} is {order.status.value}: {control.value} "
                "cannot apply",
                where,
            ) from exc


def find_order(session: Session, group: OrderGroup) -> ImagingOrder:
    """The order an XO/CA/DC/SC/HD/RL refers to: placer number, filler number, accession."""
    keys: list[tuple[Any, str]] = []
    if group.placer_order_number and group.placer_order_number.entity_id:
        keys.append((ImagingOrder.placer_order_number, group.placer_order_number.entity_id))
    if group.filler_order_number and group.filler_order_number.entity_id:
        keys.append((ImagingOrder.filler_order_number, group.filler_order_number.entity_id))
    if group.accession_number:
        keys.append((ImagingOrder.accession_number, group.accession_number))
    if not keys:
        raise RequiredFieldMissing(
            "ORC-2 placer order number (or ORC-3 / OBR-18) is needed to find the order",
            ErrorLocation("ORC", group.sequence, 2),
        )
    for column, value in keys:
        found = session.exec(select(ImagingOrder).where(column == value)).first()
        if found is not None:
            return found
    raise UnknownKeyIdentifier(
        "no order matches the placer or filler order number",
        ErrorLocation("ORC", group.sequence, 2),
    )


def order_values(message: OrderMessage, group: OrderGroup) -> dict[str, Any]:
    """Domain values of an order group; absent values are left out. Not yet checked against
    what will hold them: see checked_order_values."""
    patient, visit = message.patient, message.visit
    procedure = group.procedure
    reason = group.reason_for_study
    ordering = group.ordering_provider
    values: dict[str, Any] = {
        "patient_id": patient.identifier.id,
        "issuer_of_patient_id": patient.identifier.assigning_authority.name or None,
        "patient_name": person_name(patient.name),
        "patient_birth_date": patient.birth_date,
        "patient_sex": patient.sex.value if patient.sex and patient.sex.value in "MFO" else None,
        "referring_physician": provider_name(visit.referring_provider if visit else None),
        "ordering_provider": provider_name(ordering),
        "provider_id": (ordering.id or None) if ordering else None,
        "facility_id": message.header.sending_facility.name or None,
        "procedure_code": (procedure.code or None) if procedure else None,
        "procedure_description": (procedure.text or None) if procedure else None,
        "modality": modality(group),
        "clinical_indication": (reason.text or reason.code) if reason else None,
        "priority": Priority(group.priority.value),
        "scheduled_at": group.scheduled_start,
        "placer_order_number": _entity(group.placer_order_number),
        "filler_order_number": _entity(group.filler_order_number),
        "requested_procedure_id": group.requested_procedure_id or None,
        "accession_number": group.accession_number or None,
        "study_instance_uid": group.study_instance_uid or None,
    }
    return {k: v for k, v in values.items() if v not in (None, "")}


def checked_order_values(message: OrderMessage, group: OrderGroup) -> dict[str, Any]:
    """order_values, refused with AE 102 naming the field when a value does not fit where it
    goes: its column, or the worklist item a modality will read (sidecar.order_fields)."""
    values = order_values(message, group)
    problems = order_value_problems(values)
    if problems:
        name, problem = problems[0]
        location, label = value_source(name, group)
        raise DataTypeError(f"{location} {label} {problem}", location)
    return values


FieldPosition = tuple[str, int, int | None]  # segment, field, component

#: Where each order value comes from: the field read first, the one read when the group does not
#: send the first (None: there is one source), and what HL7 calls it. As
#: hl7.order_message.ImagingOrder reads them: ORC before OBR, IPC before OBR and ZDS.
_SOURCES: dict[str, tuple[FieldPosition, FieldPosition | None, str]] = {
    "patient_id": (("PID", 3, 1), None, "patient identifier"),
    "issuer_of_patient_id": (("PID", 3, 4), None, "assigning authority"),
    "patient_name": (("PID", 5, None), None, "patient name"),
    "referring_physician": (("PV1", 8, None), None, "referring doctor"),
    "facility_id": (("MSH", 4, None), None, "sending facility"),
    "procedure_code": (("OBR", 4, 1), None, "procedure code"),
    "procedure_description": (("OBR", 4, 2), None, "procedure text"),
    "clinical_indication": (("OBR", 31, None), None, "reason for study"),
    "ordering_provider": (("ORC", 12, None), ("OBR", 16, None), "ordering provider"),
    "provider_id": (("ORC", 12, 1), ("OBR", 16, 1), "ordering provider id"),
    "placer_order_number": (("ORC", 2, 1), ("OBR", 2, 1), "placer order number"),
    "filler_order_number": (("ORC", 3, 1), ("OBR", 3, 1), "filler order number"),
    "accession_number": (("IPC", 1, 1), ("OBR", 18, None), "accession number"),
    "requested_procedure_id": (("IPC", 2, 1), ("OBR", 19, None), "requested procedure id"),
    "study_instance_uid": (("IPC", 3, 1), ("ZDS", 1, 1), "study instance UID"),
}
_ONCE_PER_MESSAGE = frozenset({"MSH", "PID", "PV1"})


def value_source(name: str, group: OrderGroup) -> tuple[ErrorLocation, str]:
    """Where an order value came from in the message, and what HL7 calls that field."""
    first, fallback, label = _SOURCES[name]
    segment, field, component = first if fallback is None or _sends(group, first) else fallback
    sequence = 1 if segment in _ONCE_PER_MESSAGE else group.sequence
    return ErrorLocation(segment, sequence, field, component), label


def _sends(group: OrderGroup, position: FieldPosition) -> bool:
    """Whether the group's value is read from `position` (an ORC or IPC field)."""
    common, ipc = group.common_order, group.procedure_control
    sent = {
        ("ORC", 12): common.ordering_provider is not None,
        ("ORC", 2): common.placer_order_number is not None,
        ("ORC", 3): common.filler_order_number is not None,
        ("IPC", 1): bool(ipc and ipc.accession_number),
        ("IPC", 2): bool(ipc and ipc.requested_procedure_id),
        ("IPC", 3): bool(ipc and ipc.study_instance_uid),
    }
    return sent[position[:2]]


def modality(group: OrderGroup) -> Modality:
    code = group.modality.strip().upper()
    location = ErrorLocation("OBR", group.sequence, 24)
    if not code:
        raise RequiredFieldMissing("OBR-24 (modality) is required to schedule the order", location)
    try:
        return _MODALITY_ALIASES.get(code) or Modality(code)
    except ValueError as exc:
        raise TableValueNotFound(
            f"modality {code} is not one the department performs", location
        ) from exc


def person_name(name: PersonName) -> str | None:
    """XPN/XCN to DICOM PN: family^given^middle^prefix^suffix, trailing empties dropped."""
    parts = [name.family_name, name.given_name, name.middle_name, name.prefix, name.suffix]
    return "^".join(parts).rstrip("^") or None


def provider_name(provider: Provider | None) -> str | None:
    return person_name(provider.name) if provider else None


def _entity(identifier: Any) -> str | None:
    return (identifier.entity_id or None) if identifier else None


def _sender(header: MessageHeader | None) -> str:
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
    """AE 102 for an MSH-10, MSH-3 or MSH-4 the message log cannot hold as sent."""
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


def _storable(text: str) -> str:
    """Text PostgreSQL can keep: a NUL (refused by check_no_nul) shown as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def _log_row(
    text: str,
    header: MessageHeader | None,
    sender: str,
    *,
    status: str,
    ack_code: str,
    ack: str,
    order_id: int | None,
    now: datetime,
    error: str | None = None,
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
        "error_text": _storable(error)[:1000] if error else None,
        "raw": _storable(text),
        "ack_raw": ack,
        "order_id": order_id,
        "received_at": now,
        "processed_at": now,
        "report_id": None,
        "result_status": None,
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


def _log(session: Session, row: dict[str, Any]) -> None:
    """Stores the row in the session's transaction: a plain INSERT, no ORM object (the hot path).
    A repeated MSH-10 from the same sender fails the table's unique key (IntegrityError)."""
    session.connection().execute(_INSERT_LOG_ROW, row)


def _id(order: ImagingOrder) -> int:
    assert order.id is not None
    return order.id

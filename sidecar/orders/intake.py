"""Orders from the hospital information system: HL7 ORM^O01 / OMI^O23 in, ACK out.

One message at a time per connection (the MLLP server's guarantee). For each message:
    1. the message is parsed (hl7.orders), every value the sidecar will store or offer on
       the worklist is checked against what will hold it (sidecar.orders.fields), and what
       the order leaves empty is taken from the procedure catalog (sidecar.procedures);
    2. every order group is applied (sidecar.orders.service);
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
import functools
import logging
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, select

from hl7.ack import Acknowledgement, build_ack, new_control_id
from hl7.er7 import decode_message, encode_message
from hl7.errors import (
    DuplicateKeyIdentifier,
    ErrorLocation,
    Hl7Error,
    NotAnHl7Message,
    TableValueNotFound,
    UnknownKeyIdentifier,
)
from hl7.header import MessageHeader, read_header
from hl7.mllp.server import Peer
from hl7.order_message import ImagingOrder as OrderGroup
from hl7.order_message import OrderControl, OrderMessage
from hl7.orders import parse_order_message
from sidecar.core.models import utcnow
from sidecar.core.workflow import InvalidTransition
from sidecar.orders import service as orders
from sidecar.orders.hl7_values import checked_order_values
from sidecar.orders.intake_log import (
    Applied,
    RepeatedControlId,
    check_header,
    check_no_nul,
    insert_log_row,
    log_row,
    same_message,
    sender_of,
    storable,
)
from sidecar.orders.models import ImagingOrder, OrderStatus
from sidecar.orders.order_control import ORDER_CONTROL, find_order
from sidecar.patients import service as patients
from sidecar.procedures import catalog as procedures
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus

log = logging.getLogger(__name__)


# DICOM modality codes for OBR-24 / IPC-5 values that are not our modality names.


class OrderIntake:
    """The MLLP handler: `await intake(raw, peer)` returns the ACK bytes."""

    def __init__(
        self,
        engine: Engine,
        *,
        zone: tzinfo,
        announce: Callable[[int], None],
        now: Callable[[], datetime] = utcnow,
        facility_field: str = "MSH-4",
    ) -> None:
        self._engine = engine
        self._zone = zone
        self._facility_field = facility_field  # ORDER_FACILITY_FIELD
        self._announce = announce
        self._now = now

    @property
    def engine(self) -> Engine:
        """The intake's own pool (disposed when the service stops)."""
        return self._engine

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
        sender = sender_of(header)
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
        """The orders of the message, in one transaction with its log row. A new order sent again
        fails its accession number's unique key: AE 205 naming OBR-18."""

        def apply(session: Session) -> Applied:
            changed = [
                self._apply_group(session, message, group, actor=f"hl7:{sender}")
                for group in message.orders
            ]
            return Applied(
                changed, changed[0] if changed else None, _implied_orc_note(message), "order(s)"
            )

        return self._commit_accepted(
            text,
            message.header,
            sender,
            apply,
            lambda: DuplicateKeyIdentifier(
                "the accession number or Study Instance UID is already in use",
                ErrorLocation("OBR", 1, 18),
            ),
        )

    def _commit_accepted(
        self,
        text: str,
        header: MessageHeader,
        sender: str,
        apply: Callable[[Session], Applied],
        on_conflict: Callable[[], Hl7Error],
    ) -> bytes:
        """One transaction: what the message changes (`apply`), its log row, the commit; the AA
        goes out only after it. Duplicates are detected by the database's unique constraints
        rather than by queries first: fewer round trips on the hot path, and no race between two
        connections. A repeated MSH-10 fails the log row's unique key: the original ACK answers
        the same message sent again, and any other unique key failing answers `on_conflict`;
        nothing of either is kept. The orders changed are announced after the commit."""
        ack = build_ack(header, None, control_id=new_control_id(), timestamp=self._now())
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                applied = apply(session)
                insert_log_row(
                    session,
                    log_row(
                        text,
                        header,
                        sender,
                        status=Hl7MessageStatus.ACCEPTED,
                        ack_code="AA",
                        ack=ack.text,
                        order_id=applied.logged_order_id,
                        now=self._now(),
                        note=applied.note,
                    ),
                )
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                original = self._answer_to_repeat(sender, header.control_id, text)
                if original is not None:
                    return original
                raise on_conflict() from exc
            except Hl7Error:
                session.rollback()
                raise
        announced = list(dict.fromkeys(applied.order_ids))
        for order_id in announced:
            self._announce(order_id)
        log.info(
            "HL7 %s %s from %s accepted: %d %s",
            header.message_code,
            header.control_id,
            sender,
            len(announced),
            applied.what,
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
                insert_log_row(session, row)
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
                insert_log_row(session, row)
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
        row = log_row(
            text,
            header,
            sender,
            status=Hl7MessageStatus.REJECTED if ack.code == "AR" else Hl7MessageStatus.ERROR,
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
        if not same_message(logged.raw, storable(text)):
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
            values = checked_order_values(
                message,
                group,
                facility_field=self._facility_field,
                catalog=functools.partial(procedures.defaults_for, session),
            )
            values.update(_patient_of(session, values, actor=actor))
            # A taken accession number or Study Instance UID fails the unique constraints at
            # commit: answered AE 205 by _apply, one query fewer than asking first.
            return orders.insert_order(session, values, actor=actor, source="hl7")
        order = find_order(session, group)
        try:
            if control == OrderControl.CHANGE_ORDER:
                if order.status in (OrderStatus.COMPLETED, OrderStatus.CANCELLED):
                    raise InvalidTransition("order", order.status, order.status, ())
                changes = {
                    k: v
                    for k, v in checked_order_values(
                        message,
                        group,
                        facility_field=self._facility_field,
                        catalog=functools.partial(procedures.defaults_for, session),
                    ).items()
                    if k not in ("accession_number", "study_instance_uid")
                }
                changes.update(_patient_of(session, changes, actor=actor))
                orders.update_order(session, order, changes, actor=actor)
                return _id(order)
            if control == OrderControl.RELEASE_HOLD:
                target = orders.initial_status(order)
            else:
                target = accepted[group.order_status] or OrderStatus.SCHEDULED
            orders.change_status(session, order, target, actor=actor)
            return _id(order)
        except InvalidTransition as exc:
            raise TableValueNotFound(
                f"order {order.accession_number} is {order.status.value}: {control.value} "
                "cannot apply",
                where,
            ) from exc


def _patient_of(session: Session, values: dict[str, Any], *, actor: str) -> dict[str, Any]:
    """The order's patient columns from the registry (sidecar.patients); AE 204 naming the
    surviving identifier (ERR-8) when PID-3 names a patient merged into another."""
    try:
        return patients.for_order(session, values, actor=actor)
    except patients.MergedAway as merged:
        survivor = merged.surviving
        raise UnknownKeyIdentifier(
            f"PID-3 was merged into {survivor.patient_id}^^^{survivor.issuer_of_patient_id}",
            ErrorLocation("PID", 1, 3),
        ) from merged


def _implied_orc_note(message: OrderMessage) -> str | None:
    """What the message log says of order groups sent without ORC (read as new orders)."""
    implied = [str(group.sequence) for group in message.orders if group.common_order.implied]
    if not implied:
        return None
    return f"ORC segment missing: order group {', '.join(implied)} read as a new order (ORC-1 NW)"


def _id(order: ImagingOrder) -> int:
    assert order.id is not None
    return order.id

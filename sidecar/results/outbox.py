"""Delivering queued results (ORU^R01) and order status updates (ORM^O01,
sidecar.results.status_updates) to the HIS over MLLP, one at a time, on one thread.

- A message is done only when the HIS answers AA (or CA): it is then `delivered`, and a final or
  corrected result completes its order.
- AE or AR (or CE/CR) is the HIS refusing it: `failed`, with the HIS's own error text; it stays
  failed until an administrator retries it (`retry`).
- No answer (HIS down, connection refused or broken, no ACK in time): the message stays
  `pending` and is tried again after a doubling delay (1, 2, 4 ... s, capped), while nothing
  else goes to the HIS either.
- In order per order: a message is not sent while an earlier message of the same order (result
  or status update) is still pending or failed (an F must never arrive after its C, nor a
  result before the status that the exam started).
- Across restarts nothing is lost (the outbox is a table) and nothing is filed twice: a message
  whose ACK was lost in a crash is sent again with the same MSH-10, which the HIS recognises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine, and_, or_
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from hl7.ack import parse_ack
from hl7.er7 import encode_message
from hl7.errors import Hl7Error
from hl7.mllp.client import MllpClient, MllpError
from sidecar.core import audit, correlation
from sidecar.core.background import BackgroundWorker, backoff_delay, seconds_until_next_attempt
from sidecar.core.dependencies import provide_optional
from sidecar.core.models import utcnow
from sidecar.operations import metrics
from sidecar.orders.models import ImagingOrder
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.results.service import RESULT_MESSAGE_TYPE, complete_order
from sidecar.results.status_updates import ORDER_STATUS_MESSAGE_TYPE

log = logging.getLogger(__name__)

OUTBOX_ACTOR = "system:result-outbox"
_ACCEPTED = ("AA", "CA")

ClientFactory = Callable[[], MllpClient]
Clock = Callable[[], datetime]


class ResultOutbox(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        connect: ClientFactory,
        *,
        max_delay: float = 60.0,
        clock: Clock = utcnow,
        on_order_changed: Callable[[ImagingOrder], None] | None = None,
    ) -> None:
        super().__init__("result-outbox", clock=clock)
        self._engine = engine
        self._connect = connect
        self._max_delay = max_delay
        self._on_order_changed = on_order_changed
        self._client: MllpClient | None = None
        self.last_error: str | None = None

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        self._disconnect()

    def lease_lost(self) -> None:
        """Another node sends to the HIS now: one connection to it, the holder's (a HIS may
        take one connection per sender)."""
        self._disconnect()

    def run_once(self) -> float | None:
        """Sends every due message in turn; returns seconds until the next one is due (None:
        nothing waiting). Stops at the first message the HIS did not answer."""
        while not self.stopping:
            now = self.clock()
            with Session(self._engine) as session:
                message = next_due(session, now)
                if message is None:
                    return seconds_until_next(session, now)
                assert message.id is not None
                message_id, raw, control_id = message.id, message.raw, message.control_id
            # Every line of this delivery carries its MSH-10 (sidecar.core.correlation).
            with correlation.bound(control_id):
                try:
                    ack = self._send(raw)
                except MllpError as exc:
                    return self._record_no_answer(message_id, str(exc))
                self._record_answer(message_id, ack)
        return None

    def _send(self, raw: str) -> bytes:
        if self._client is None:
            self._client = self._connect()
        try:
            return self._client.send(encode_message(raw, "UNICODE UTF-8"))
        except MllpError:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _record_no_answer(self, message_id: int, reason: str) -> float:
        with Session(self._engine) as session:
            message = session.get(Hl7Message, message_id)
            assert message is not None
            message.attempts += 1
            delay = backoff_delay(message.attempts, cap=self._max_delay)
            message.next_attempt_at = self.clock() + timedelta(seconds=delay)
            message.error_text = f"no answer from the HIS (attempt {message.attempts}): {reason}"[
                :1000
            ]
            session.add(message)
            kind = _kind(message)
            session.commit()
        metrics.hl7_sent(kind, "no_answer")
        self.last_error = reason
        log.warning(
            "HIS did not answer result message %d; next attempt in %.0f s", message_id, delay
        )
        return delay

    def _record_answer(self, message_id: int, ack: bytes) -> None:
        try:
            summary = parse_ack(ack)
            code, text = summary.code, summary.text
        except Hl7Error as exc:
            code, text = "", f"unreadable acknowledgement: {exc}"
        changed: ImagingOrder | None = None
        with Session(self._engine) as session:
            message = session.get(Hl7Message, message_id)
            assert message is not None
            message.attempts += 1
            message.ack_code = code[:2] or None
            message.ack_raw = ack.decode("utf-8", errors="replace")
            message.processed_at = self.clock()
            message.next_attempt_at = None
            if code in _ACCEPTED:
                message.status = Hl7MessageStatus.DELIVERED
                message.error_text = None
                changed = self._complete_order(session, message)
            else:
                message.status = Hl7MessageStatus.FAILED
                message.error_text = (f"{code}: {text}" if code else text)[:1000]
            session.add(message)
            audit.record(
                session,
                actor=OUTBOX_ACTOR,
                action=f"{_kind(message)}.{message.status}",
                entity_type="hl7_message",
                entity_id=message.id,
                report_id=message.report_id,
                order_id=message.order_id,
                ack_code=message.ack_code,
            )
            kind = _kind(message)
            session.commit()
            metrics.hl7_sent(kind, "delivered" if code in _ACCEPTED else "refused")
            if changed is not None:
                session.refresh(changed)
        self.last_error = None if code in _ACCEPTED else text
        if changed is not None and self._on_order_changed is not None:
            self._on_order_changed(changed)

    @staticmethod
    def _complete_order(session: Session, message: Hl7Message) -> ImagingOrder | None:
        """A final (or corrected) result delivered: the order is done."""
        if message.result_status not in ("F", "C") or message.order_id is None:
            return None
        order = session.get(ImagingOrder, message.order_id)
        if order is None or not complete_order(session, order, actor=OUTBOX_ACTOR):
            return None
        return order


def retry(session: Session, message: Hl7Message, *, actor: str, now: datetime) -> None:
    """An administrator sends a failed result again (same bytes, same MSH-10); the caller
    commits and wakes the outbox."""
    message.status = Hl7MessageStatus.PENDING
    message.next_attempt_at = now
    session.add(message)
    audit.record(
        session,
        actor=actor,
        action=f"{_kind(message)}.retried",
        entity_type="hl7_message",
        entity_id=message.id,
        report_id=message.report_id,
        order_id=message.order_id,
    )


def _kind(message: Hl7Message) -> str:
    """What the audit trail calls the message: a result, or an order status update."""
    return "status_update" if message.order_status else "result"


#: What the outbox delivers: results and order status updates, in one queue per order.
OUTBOX_MESSAGE_TYPES = (RESULT_MESSAGE_TYPE, ORDER_STATUS_MESSAGE_TYPE)


def _results() -> list[Any]:
    return [
        Hl7Message.direction == Hl7Direction.OUTBOUND,
        col(Hl7Message.message_type).in_(OUTBOX_MESSAGE_TYPES),
    ]


def next_due(session: Session, now: datetime) -> Hl7Message | None:
    """The oldest due pending message whose order has no earlier message still on its way: one
    pending (results and status updates keep their order), or a result the HIS refused (an F
    must not overtake it). A status update the HIS refused does not hold the order's results
    back: a HIS that takes results but not ORM^O01 status messages still gets its results."""
    earlier = aliased(Hl7Message)
    blocked = (
        select(earlier.id)
        .where(
            earlier.direction == Hl7Direction.OUTBOUND,
            col(earlier.message_type).in_(OUTBOX_MESSAGE_TYPES),
            earlier.order_id == Hl7Message.order_id,
            col(earlier.id) < Hl7Message.id,
            or_(
                col(earlier.status) == Hl7MessageStatus.PENDING,
                and_(
                    col(earlier.status) == Hl7MessageStatus.FAILED,
                    col(earlier.message_type) == RESULT_MESSAGE_TYPE,
                ),
            ),
        )
        .exists()
    )
    return session.exec(
        select(Hl7Message)
        .where(
            *_results(),
            Hl7Message.status == Hl7MessageStatus.PENDING,
            col(Hl7Message.next_attempt_at) <= now,
            ~blocked,
        )
        .order_by(col(Hl7Message.id))
        .limit(1)
    ).first()


def seconds_until_next(session: Session, now: datetime) -> float | None:
    return seconds_until_next_attempt(
        session,
        Hl7Message.next_attempt_at,
        *_results(),
        Hl7Message.status == Hl7MessageStatus.PENDING,
        now=now,
    )


#: The outbox a route wakes after committing a result; None when results are not sent.
ResultOutboxDep = Annotated[ResultOutbox | None, Depends(provide_optional(ResultOutbox))]

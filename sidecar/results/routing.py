"""Where results and status updates go: who sends and who receives them (MSH-3..6), which are
sent, and how times are written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Annotated, Any

from fastapi import Depends
from sqlmodel import Session, col, select

from hl7.result_message import FlaggedFinding
from sidecar.core import audit
from sidecar.core.dependencies import provide
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus

#: Critical results raised on a report, flagged on its OBX lines (sidecar.findings.service).
FindingSource = Callable[[Session, int], Sequence[FlaggedFinding]]


@dataclass
class ResultRouting:
    """Who sends and who receives results (MSH-3..6), and how times are written."""

    enabled: bool
    sending_application: str
    sending_facility: str
    receiving_application: str = ""
    receiving_facility: str = ""
    send_preliminary: bool = False
    # Order status updates (ORM^O01) go through the same outbox (sidecar.results.status_updates).
    send_status_updates: bool = False
    zone: tzinfo | None = None
    finding_sources: list[FindingSource] = field(default_factory=list)
    # RESULTS_EMBED_PDF: the report rendered as a PDF, carried in the ORU as an ED OBX.
    pdf_source: Callable[[Session, RadiologyReport], bytes] | None = None


def receiver_of(session: Session, order: ImagingOrder, routing: ResultRouting) -> tuple[str, str]:
    """Configured MSH-5/6, else whoever sent the order (its ORM's MSH-3/4), else 'HIS'."""
    if routing.receiving_application:
        return routing.receiving_application, routing.receiving_facility
    sender = session.exec(
        select(Hl7Message.sender)
        .where(
            Hl7Message.order_id == order.id,
            Hl7Message.direction == Hl7Direction.INBOUND,
        )
        .order_by(col(Hl7Message.id))
    ).first()
    if sender:
        application, _, facility = sender.partition("^")
        return application, routing.receiving_facility or facility
    return "HIS", routing.receiving_facility


def enqueue(
    session: Session,
    routing: ResultRouting,
    receiver: tuple[str, str],
    *,
    message_type: str,
    control_id: str,
    raw: str,
    order_id: int | None,
    now: datetime,
    actor: str,
    action: str,
    **columns: Any,
) -> Hl7Message:
    """Writes a message for the HIS into the outbox (pending, due now) and audits it as
    `action`; `columns` are the message's own (report and result status, or order status),
    recorded in the audit event too. The caller commits, and wakes the outbox after."""
    row = Hl7Message(
        direction=Hl7Direction.OUTBOUND,
        control_id=control_id,
        message_type=message_type,
        sender=f"{routing.sending_application}^{routing.sending_facility}",
        receiver="^".join(receiver),
        status=Hl7MessageStatus.PENDING,
        raw=raw,
        order_id=order_id,
        received_at=now,
        next_attempt_at=now,
        **columns,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=action,
        entity_type="hl7_message",
        entity_id=row.id,
        order_id=order_id,
        **columns,
    )
    return row


#: What a route is given to queue results with.
ResultRoutingDep = Annotated[ResultRouting, Depends(provide(ResultRouting))]

"""Where results and status updates go: who sends and who receives them (MSH-3..6), which are
sent, and how times are written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Annotated

from fastapi import Depends
from sqlmodel import Session, col, select

from hl7.result_message import FlaggedFinding
from sidecar.core.dependencies import provide
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport
from sidecar.results.message_log import Hl7Direction, Hl7Message

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


#: What a route is given to queue results with.
ResultRoutingDep = Annotated[ResultRouting, Depends(provide(ResultRouting))]

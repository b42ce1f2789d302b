"""Linking a study to an imaging order by hand: the one rule behind POST
/api/studies/{id}/link-order and the orders page's form (sidecar.web.orders_page).

Images under another patient id: 409, unless an administrator moves the study to the order's
patient. Images and an order that were not linked mean the exam started: the HIS hears it first
(ORC-5 IP); a report already written on the study joins the order's result. Committed here, then
the result outbox is woken and the worklist told of the order.

Both the study and the order must lie in the caller's reach (sidecar.access.care_scope: a user
limited to facilities links nothing of another facility); out of reach answers 404, as a record
that does not exist.
"""

from __future__ import annotations

from sqlmodel import Session, select

from hl7.order_status_message import OrderStatusCode
from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core.errors import ConflictingState, NotPermitted, UnknownRecord
from sidecar.orders import matching as order_matching
from sidecar.orders.events import OrderEvents
from sidecar.orders.models import ImagingOrder
from sidecar.results import service as results
from sidecar.results.outbox import ResultOutbox
from sidecar.results.routing import ResultRouting
from sidecar.results.status_updates import queue_status_update
from sidecar.studies.lookup import readable_study
from sidecar.studies.models import Study


def link_order(
    session: Session,
    study_id: int,
    order_id: int,
    user: User,
    scope: CareScope,
    *,
    move_to_order_patient: bool,
    routing: ResultRouting,
    outbox: ResultOutbox | None,
    events: OrderEvents,
) -> Study:
    """Links the study to the order and commits; the study as it now is."""
    study = readable_study(session, study_id, scope)
    order = session.exec(
        select(ImagingOrder).where(ImagingOrder.id == order_id, *scope.orders())
    ).first()
    if order is None:
        raise UnknownRecord(f"imaging order {order_id} not found")
    if study.order_id is not None:
        raise ConflictingState(f"study {study.id} is already linked to order {study.order_id}")
    taken = session.exec(select(Study.id).where(Study.order_id == order.id)).first()
    if taken is not None:
        raise ConflictingState(f"order {order.id} is already linked to study {taken}")
    try:
        moved = order_matching.link(session, study, order, actor=user.username)
    except order_matching.PatientMismatch as exc:
        if not move_to_order_patient:
            raise ConflictingState(
                f"study {study.id} and order {order.id} belong to different patient ids; "
                "correct the patient id first, or (an administrator) move the study to the "
                "order's patient with moveToOrderPatient"
            ) from exc
        if user.role != Role.ADMIN:
            raise NotPermitted("only an administrator may move a study to another patient") from exc
        moved = order_matching.move_to_order_patient(session, study, order, actor=user.username)
    # Images and an order that were not linked: the exam started, the HIS hears it first.
    started = moved and (
        queue_status_update(
            session, order, OrderStatusCode.IN_PROCESS, routing, actor=user.username
        )
        is not None
    )
    assert study.id is not None
    joined = results.report_joins_order(session, study.id, order, routing, actor=user.username)
    queued = started or joined
    session.commit()
    session.refresh(study)
    if queued and outbox is not None:
        outbox.wake()
    if moved:
        session.refresh(order)
        events.announce(order)
    return study

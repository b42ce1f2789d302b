"""Imaging orders: one set of operations for orders from REST and from HL7.

Every change is audited in the same transaction, and announced to listeners after the commit
(the worklist follows the orders: only SCHEDULED orders are offered to modalities).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import Session, select

from sidecar import audit, status_changes
from sidecar.identifiers import new_accession_number, new_study_instance_uid
from sidecar.models.common import utcnow
from sidecar.models.orders import ImagingOrder, OrderStatus
from sidecar.refusals import ConflictingState
from sidecar.workflow import ORDER_WORKFLOW

OrderListener = Callable[[ImagingOrder], None]


class DuplicateOrder(ConflictingState):
    """An accession number or Study Instance UID already belongs to another order."""


def initial_status(order: ImagingOrder) -> OrderStatus:
    """An order with a time is on the schedule; without one it waits for scheduling."""
    return OrderStatus.SCHEDULED if order.scheduled_at is not None else OrderStatus.PENDING


def create_order(
    session: Session,
    values: dict[str, Any],
    *,
    actor: str,
    source: str,
    check_unique: bool = True,
) -> ImagingOrder:
    """Creates an order from domain values (snake_case); the caller commits.

    With check_unique, a taken accession number or Study Instance UID raises DuplicateOrder
    naming it; without, the unique constraints raise IntegrityError (one query fewer each).
    """
    values = {k: v for k, v in values.items() if v is not None}
    accession = values.pop("accession_number", None) or new_accession_number(session)
    study_uid = values.pop("study_instance_uid", None) or new_study_instance_uid()
    if check_unique:
        _check_unique(session, accession, study_uid)
    # The worklist needs a Requested Procedure ID; one procedure per order, so the accession
    # number serves when the HIS sends none.
    values.setdefault("requested_procedure_id", accession)
    order = ImagingOrder(
        accession_number=accession, study_instance_uid=study_uid, source=source, **values
    )
    order.status = initial_status(order)
    session.add(order)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="order.created",
        entity_type="order",
        entity_id=order.id,
        status=order.status,
        source=source,
    )
    return order


def update_order(
    session: Session, order: ImagingOrder, changes: dict[str, Any], *, actor: str
) -> ImagingOrder:
    """Applies field changes (not status); a PENDING order given a time becomes SCHEDULED."""
    changes = {k: v for k, v in changes.items() if k != "status"}
    for name, value in changes.items():
        setattr(order, name, value)
    if order.status == OrderStatus.PENDING and order.scheduled_at is not None:
        order.status = OrderStatus.SCHEDULED
    order.updated_at = utcnow()
    session.add(order)
    audit.record(
        session,
        actor=actor,
        action="order.updated",
        entity_type="order",
        entity_id=order.id,
        fields=sorted(changes),
        status=order.status,
    )
    return order


def change_status(
    session: Session, order: ImagingOrder, target: OrderStatus, *, actor: str
) -> ImagingOrder:
    """Moves the order through ORDER_WORKFLOW; raises InvalidTransition otherwise."""
    if OrderStatus(order.status) != target:
        status_changes.move(
            session, order, ORDER_WORKFLOW, target, actor=actor, entity_type="order"
        )
    return order


def _check_unique(session: Session, accession: str, study_uid: str) -> None:
    for column, value, label in (
        (ImagingOrder.accession_number, accession, "accession number"),
        (ImagingOrder.study_instance_uid, study_uid, "Study Instance UID"),
    ):
        other = session.exec(select(ImagingOrder.id).where(column == value)).first()
        if other is not None:
            raise DuplicateOrder(f"{label} {value} already belongs to order {other}")

"""Imaging orders: one set of operations for orders from REST and from HL7.

Every change is audited in the same transaction, and announced to listeners after the commit
(the worklist follows the orders: only SCHEDULED orders are offered to modalities).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, select

from sidecar.core import audit
from sidecar.core.errors import ConflictingState, UnacceptableValue
from sidecar.core.models import table_of, utcnow
from sidecar.core.workflow import move, move_if
from sidecar.orders.identifiers import new_accession_number, new_study_instance_uid
from sidecar.orders.models import ORDER_WORKFLOW, ImagingOrder, OrderStatus, Priority
from sidecar.procedures import catalog

# Values go as parameters of one statement, not into it: compiled once per set of columns.
_INSERT_ORDER = insert(table_of(ImagingOrder)).returning(table_of(ImagingOrder).c.id)


class DuplicateOrder(ConflictingState):
    """An accession number or Study Instance UID already belongs to another order."""


def initial_status(order: ImagingOrder) -> OrderStatus:
    """An order with a time is on the schedule; without one it waits for scheduling."""
    return _initial_status(order.scheduled_at)


def _initial_status(scheduled_at: datetime | None) -> OrderStatus:
    return OrderStatus.SCHEDULED if scheduled_at is not None else OrderStatus.PENDING


def with_catalog(session: Session, values: dict[str, Any]) -> dict[str, Any]:
    """A new order's values (from the API) completed from the catalog entry of its procedure
    code where they say nothing (None): modality, body part, station, protocol, coding system,
    description, priority. Without a modality and a code the catalog knows: 422 on modality."""
    code = values.get("procedure_code")
    entry = catalog.defaults_for(session, code) if code else None
    if entry is not None:
        for name, value in entry.values.items():
            if values.get(name) is None:
                values[name] = value
        if values.get("priority") is None:
            values["priority"] = entry.priority
    if values.get("modality") is None:
        known = f" (procedure code {code} is not)" if code else ""
        raise UnacceptableValue(
            "body.modality",
            f"is required unless procedureCode is in the procedure catalog{known}",
        )
    return values


def create_order(
    session: Session,
    values: dict[str, Any],
    *,
    actor: str,
    source: str,
) -> ImagingOrder:
    """Creates an order from domain values (snake_case); the caller commits. A taken accession
    number or Study Instance UID raises DuplicateOrder naming it."""
    row = _new_order_row(session, values, source=source)
    _check_unique(session, row["accession_number"], row["study_instance_uid"])
    order = ImagingOrder(**row)
    session.add(order)
    session.flush()
    assert order.id is not None
    _audit_created(session, order.id, order.status, actor=actor, source=source)
    return order


def insert_order(session: Session, values: dict[str, Any], *, actor: str, source: str) -> int:
    """Creates an order as create_order does, without the ORM: one INSERT ... RETURNING id, and
    no object built, tracked and flushed (about a millisecond of CPU less per order, the HL7
    intake's hot path). A taken accession number or Study Instance UID raises IntegrityError
    from the unique constraints. Returns the new order's id; the caller commits."""
    row = _new_order_row(session, values, source=source)
    order_id: int = session.connection().execute(_INSERT_ORDER, row).scalar_one()
    _audit_created(session, order_id, row["status"], actor=actor, source=source)
    return order_id


def _new_order_row(session: Session, values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Every column of a new order but its id: an accession number and a Study Instance UID
    generated when absent, the initial status and the timestamps."""
    row = {k: v for k, v in values.items() if v is not None}
    accession = row.pop("accession_number", None) or new_accession_number(session)
    # The worklist needs a Requested Procedure ID; one procedure per order, so the accession
    # number serves when the HIS sends none.
    row.setdefault("requested_procedure_id", accession)
    row.setdefault("priority", Priority.ROUTINE)
    now = utcnow()
    row.update(
        accession_number=accession,
        study_instance_uid=row.pop("study_instance_uid", None) or new_study_instance_uid(),
        status=_initial_status(row.get("scheduled_at")),
        source=source,
        created_at=now,
        updated_at=now,
    )
    return row


def _audit_created(
    session: Session, order_id: int, status: OrderStatus, *, actor: str, source: str
) -> None:
    audit.record(
        session,
        actor=actor,
        action="order.created",
        entity_type="order",
        entity_id=order_id,
        status=status,
        source=source,
    )


def update_order(
    session: Session, order: ImagingOrder, changes: dict[str, Any], *, actor: str
) -> ImagingOrder:
    """Applies field changes (not status); a PENDING order given a time becomes SCHEDULED."""
    changes = {k: v for k, v in changes.items() if k != "status"}
    for name, value in changes.items():
        setattr(order, name, value)
    if order.status == OrderStatus.PENDING and order.scheduled_at is not None:
        # Audited below as the order's update, which names its new status.
        move(session, order, ORDER_WORKFLOW, OrderStatus.SCHEDULED, actor=actor, audited=False)
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
        move(session, order, ORDER_WORKFLOW, target, actor=actor)
    return order


def start(session: Session, order: ImagingOrder, *, actor: str) -> bool:
    """The exam has started (its first images, or the modality's MPPS): the order moves to
    IN_PROGRESS, off the worklist, once. Of callers racing to start it (an N-CREATE and the
    first images, two modalities) exactly one moves it and gets True: the one that tells the
    HIS. The caller commits."""
    current = OrderStatus(order.status)
    if not ORDER_WORKFLOW.can(current, OrderStatus.IN_PROGRESS):
        return False
    assert order.id is not None
    moved = move_if(
        session,
        ImagingOrder,
        order.id,
        ORDER_WORKFLOW,
        current,
        OrderStatus.IN_PROGRESS,
        at=utcnow(),
    )
    session.refresh(order)
    if moved:
        audit.record(
            session,
            actor=actor,
            action="order.status_changed",
            entity_type="order",
            entity_id=order.id,
            previous=current,
            status=OrderStatus.IN_PROGRESS,
        )
    return moved


def _check_unique(session: Session, accession: str, study_uid: str) -> None:
    for column, value, label in (
        (ImagingOrder.accession_number, accession, "accession number"),
        (ImagingOrder.study_instance_uid, study_uid, "Study Instance UID"),
    ):
        other = session.exec(select(ImagingOrder.id).where(column == value)).first()
        if other is not None:
            raise DuplicateOrder(f"{label} {value} already belongs to order {other}")

"""Imaging orders (seed 001 paths). Orders from the HIS over HL7 are the same kind of thing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from sqlmodel import Session, col, select

from hl7.order_status_message import OrderStatusCode
from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import SessionDep
from sidecar.core.errors import ConflictingState, UnacceptableValue, UnknownRecord
from sidecar.core.models import Page, SupportedTime, api_alias
from sidecar.core.pagination import (
    Pagination,
    PaginationDep,
    RecordId,
    equal_to,
    paginate,
    record_id_query,
)
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.orders import service as orders
from sidecar.orders.events import OrderEventsDep
from sidecar.orders.models import (
    ImagingOrder,
    Modality,
    OrderCreate,
    OrderDetail,
    OrderPublic,
    OrderStatus,
    OrderUpdate,
    Priority,
)
from sidecar.patients import service as patients
from sidecar.results.outbox import ResultOutboxDep
from sidecar.results.routing import ResultRouting, ResultRoutingDep
from sidecar.results.status_updates import queue_status_update

router = APIRouter(prefix="/api/imaging-orders", tags=["imaging orders"])

_R = Role
OrderReader = Annotated[
    User,
    Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST, _R.RADIOLOGIST, _R.PHYSICIAN, _R.INTEGRATION)),
]
OrderEditor = Annotated[User, Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST, _R.INTEGRATION))]


@router.post("", response_model=OrderPublic, status_code=status.HTTP_201_CREATED)
def create_order(
    body: OrderCreate, session: SessionDep, user: OrderEditor, events: OrderEventsDep
) -> ImagingOrder:
    values = orders.with_catalog(session, body.model_dump())
    values.update(patients.for_order(session, values, actor=user.username))
    order = orders.create_order(session, values, actor=user.username, source="api")
    session.commit()
    session.refresh(order)
    events.announce(order)  # the worklist follows the committed change
    return order


@router.get("", response_model=Page[OrderPublic])
def list_orders(
    session: SessionDep,
    _: OrderReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
    patient_id: Annotated[str | None, Query(alias="patientId", max_length=64)] = None,
    accession_number: Annotated[str | None, Query(alias="accessionNumber", max_length=16)] = None,
    order_status: Annotated[OrderStatus | None, Query(alias="status")] = None,
    modality: Modality | None = None,
    priority: Priority | None = None,
    scheduled_from: Annotated[SupportedTime | None, Query(alias="scheduledFrom")] = None,
    scheduled_to: Annotated[SupportedTime | None, Query(alias="scheduledTo")] = None,
    patient_record_id: Annotated[int | None, record_id_query("patientRecordId")] = None,
) -> dict[str, Any]:
    conditions = equal_to(
        (ImagingOrder.patient_id, patient_id),
        (ImagingOrder.patient_record_id, patient_record_id),
        (ImagingOrder.accession_number, accession_number),
        (ImagingOrder.status, order_status),
        (ImagingOrder.modality, modality),
        (ImagingOrder.priority, priority),
    )
    conditions.extend(scope.orders())
    if scheduled_from:
        conditions.append(col(ImagingOrder.scheduled_at) >= scheduled_from)
    if scheduled_to:
        conditions.append(col(ImagingOrder.scheduled_at) <= scheduled_to)
    return _page(session, conditions, pagination)


@router.get("/patient/{patient_id}", response_model=Page[OrderPublic])
def list_patient_orders(
    patient_id: str,
    session: SessionDep,
    _: OrderReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    return _page(session, [ImagingOrder.patient_id == patient_id, *scope.orders()], pagination)


@router.get("/{order_id}", response_model=OrderDetail)
def get_order(
    order_id: RecordId, session: SessionDep, _: OrderReader, scope: CareScopeDep
) -> OrderDetail:
    """An order, when the caller may read it (404 otherwise, as for one that does not exist),
    with the procedure steps the modality reported for it."""
    order = session.exec(
        select(ImagingOrder).where(ImagingOrder.id == order_id, *scope.orders())
    ).first()
    if order is None:
        raise UnknownRecord(f"imaging order {order_id} not found")
    steps = session.exec(
        select(PerformedProcedureStep)
        .where(PerformedProcedureStep.order_id == order.id)
        .order_by(col(PerformedProcedureStep.id))
    ).all()
    return OrderDetail.model_validate(
        {**OrderPublic.model_validate(order).model_dump(), "performed_procedure_steps": steps}
    )


@router.patch("/{order_id}", response_model=OrderPublic)
def update_order(
    order_id: RecordId,
    body: OrderUpdate,
    session: SessionDep,
    user: OrderEditor,
    events: OrderEventsDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
) -> ImagingOrder:
    order = get_order_or_404(session, order_id)
    changes = body.model_dump(exclude_unset=True)
    target = changes.pop("status", None)
    if OrderStatus(order.status) in (OrderStatus.COMPLETED, OrderStatus.CANCELLED) and changes:
        raise ConflictingState(
            f"order {order_id} is {order.status.value} and can no longer be edited"
        )
    if changes:
        changes.update(_patient_of(session, order, changes, actor=user.username))
        orders.update_order(session, order, changes, actor=user.username)
    cancelled = False
    if target is not None:
        was = OrderStatus(order.status)
        orders.change_status(session, order, target, actor=user.username)
        cancelled = target == OrderStatus.CANCELLED and was != target
        if cancelled:
            _tell_his_cancelled(session, order, routing, actor=user.username)
    session.commit()
    session.refresh(order)
    events.announce(order)  # the worklist follows the committed change
    if cancelled and outbox is not None:
        outbox.wake()
    return order


@router.delete("/{order_id}", response_model=OrderPublic)
def cancel_order(
    order_id: RecordId,
    session: SessionDep,
    user: OrderEditor,
    events: OrderEventsDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
) -> ImagingOrder:
    """Cancels the order; the row stays, for the record. The HIS is told (ORC-5 CA)."""
    order = get_order_or_404(session, order_id)
    cancelled = OrderStatus(order.status) != OrderStatus.CANCELLED
    orders.change_status(session, order, OrderStatus.CANCELLED, actor=user.username)
    if cancelled:
        _tell_his_cancelled(session, order, routing, actor=user.username)
    session.commit()
    session.refresh(order)
    events.announce(order)  # the worklist follows the committed change
    if cancelled and outbox is not None:
        outbox.wake()
    return order


def _tell_his_cancelled(
    session: Session, order: ImagingOrder, routing: ResultRouting, *, actor: str
) -> None:
    """An order cancelled here, not by the HIS (whose own cancellations arrive over HL7)."""
    queue_status_update(session, order, OrderStatusCode.CANCELLED, routing, actor=actor)


def _patient_of(
    session: Session, order: ImagingOrder, changes: dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """A new patient id (or issuer) moves the order to that patient; demographics are the
    patient's, corrected with PATCH /api/patients/{id}, not one order's."""
    for name in patients.DEMOGRAPHICS:
        if name in changes:
            raise UnacceptableValue(
                f"body.{api_alias(name)}",
                "is the patient's: correct it with PATCH /api/patients/{id}",
            )
    if "patient_id" not in changes and "issuer_of_patient_id" not in changes:
        return {}
    identifier = {
        "patient_id": changes.get("patient_id", order.patient_id),
        "issuer_of_patient_id": changes.get("issuer_of_patient_id", order.issuer_of_patient_id),
    }
    return patients.for_order(session, identifier, actor=actor)


def get_order_or_404(session: Session, order_id: int) -> ImagingOrder:
    order = session.get(ImagingOrder, order_id)
    if order is None:
        raise UnknownRecord(f"imaging order {order_id} not found")
    return order


def _page(session: Session, conditions: list[Any], pagination: Pagination) -> dict[str, Any]:
    newest_first = [col(ImagingOrder.scheduled_at).desc().nulls_last(), col(ImagingOrder.id).desc()]
    return paginate(session, ImagingOrder, conditions, newest_first, pagination)

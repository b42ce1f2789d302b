"""/app/orders: the technologist's day. Today's orders (scheduled today in the department's time
zone) with their performed procedure steps and whether the images arrived, today's arrivals, and
the studies no order claims, each with a form linking it to an order.

What it shows is what the API answers the same user (GET /api/imaging-orders, GET
/api/performed-procedure-steps, GET /api/studies?matched=false: the same care scope); linking
goes through sidecar.studies.order_link, as POST /api/studies/{id}/link-order does, audited
there. The order is chosen from the patient's open orders or by its accession number, sent in
the form's body (never in a URL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep
from sidecar.core.errors import InvalidRequest, Refusal
from sidecar.core.models import MAX_RECORD_ID
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.mpps.service import in_reach as steps_in_reach
from sidecar.orders.events import OrderEventsDep
from sidecar.orders.models import ImagingOrder, OrderStatus
from sidecar.results.outbox import ResultOutboxDep
from sidecar.results.routing import ResultRoutingDep
from sidecar.studies.lookup import listed_studies
from sidecar.studies.models import Study
from sidecar.studies.order_link import link_order
from sidecar.web.session import page_roles
from sidecar.web.templating import page_link, render
from sidecar.worklist.publisher import zone_of

router = APIRouter(include_in_schema=False)

Technologist = Annotated[User, Depends(page_roles(*page_link("orders").roles))]

#: How the page names the order statuses (the domain's values stay in the data).
STATUS_LABELS = {
    OrderStatus.PENDING: "Pending",
    OrderStatus.SCHEDULED: "Scheduled",
    OrderStatus.IN_PROGRESS: "In progress",
    OrderStatus.COMPLETED: "Completed",
    OrderStatus.CANCELLED: "Cancelled",
    OrderStatus.ON_HOLD: "On hold",
}
# The orders a study may still be linked to.
_OPEN = (OrderStatus.PENDING, OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS, OrderStatus.ON_HOLD)
_UNMATCHED_SHOWN = 50


@dataclass
class OrderRow:
    order: ImagingOrder
    status_label: str
    steps: list[PerformedProcedureStep] = field(default_factory=list)
    study: Study | None = None


@dataclass
class UnmatchedRow:
    study: Study
    candidates: list[ImagingOrder]


@dataclass
class LinkForm:
    """What a link form sent, kept on an error so that nothing typed is lost."""

    study_id: int
    order_id: int | None = None
    accession_number: str = ""
    move: bool = False
    error: str = ""


def today(now: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The department's day holding `now`, from its midnight to the next one, in UTC."""
    local = now.astimezone(zone).date()
    start = datetime.combine(local, time(), tzinfo=zone)
    end = datetime.combine(local + timedelta(days=1), time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def _orders_of_today(session: Session, scope: CareScope, day: tuple[datetime, datetime]) -> Any:
    start, end = day
    orders = session.exec(
        select(ImagingOrder)
        .where(
            col(ImagingOrder.scheduled_at) >= start,
            col(ImagingOrder.scheduled_at) < end,
            *scope.orders(),
        )
        .order_by(col(ImagingOrder.scheduled_at), col(ImagingOrder.id))
    ).all()
    rows = {order.id: OrderRow(order, STATUS_LABELS[OrderStatus(order.status)]) for order in orders}
    if not rows:
        return []
    ids = list(rows)
    steps = session.exec(
        select(PerformedProcedureStep)
        .where(col(PerformedProcedureStep.order_id).in_(ids), *steps_in_reach(scope))
        .order_by(col(PerformedProcedureStep.id))
    ).all()
    for step in steps:
        rows[step.order_id].steps.append(step)
    studies = session.exec(
        select(Study).where(col(Study.order_id).in_(ids), listed_studies(), *scope.studies())
    ).all()
    for study in studies:
        rows[study.order_id].study = study
    return list(rows.values())


def _arrivals(session: Session, scope: CareScope, day: tuple[datetime, datetime]) -> Any:
    start, end = day
    return session.exec(
        select(Study)
        .where(
            col(Study.images_received_at) >= start,
            col(Study.images_received_at) < end,
            listed_studies(),
            *scope.studies(),
        )
        .order_by(col(Study.images_received_at).desc(), col(Study.id).desc())
    ).all()


def _unmatched(session: Session, scope: CareScope) -> list[UnmatchedRow]:
    """The studies no order claims (GET /api/studies?matched=false), newest first, each with its
    patient's open orders no study holds yet."""
    studies = session.exec(
        select(Study)
        .where(col(Study.order_id).is_(None), listed_studies(), *scope.studies())
        .order_by(col(Study.created_at).desc(), col(Study.id).desc())
        .limit(_UNMATCHED_SHOWN)
    ).all()
    rows = []
    for study in studies:
        candidates: list[ImagingOrder] = []
        if study.patient_id:
            candidates = list(
                session.exec(
                    select(ImagingOrder)
                    .where(
                        ImagingOrder.patient_id == study.patient_id,
                        col(ImagingOrder.status).in_(_OPEN),
                        col(ImagingOrder.id).not_in(
                            select(Study.order_id).where(col(Study.order_id).is_not(None))
                        ),
                        *scope.orders(),
                    )
                    .order_by(col(ImagingOrder.scheduled_at).desc().nulls_last())
                ).all()
            )
        rows.append(UnmatchedRow(study, candidates))
    return rows


def _context(
    session: Session, user: User, clock: ClockDep, settings: SettingsDep
) -> dict[str, Any]:
    now = clock()
    scope = CareScope(user, now)
    day = today(now, zone_of(settings.timezone))
    return {
        "orders": _orders_of_today(session, scope, day),
        "arrivals": _arrivals(session, scope, day),
        "unmatched": _unmatched(session, scope),
        "day_start": day[0],
        "forms": {},
        "is_admin": user.role is Role.ADMIN,
        "live": "order study",
    }


@router.get("/app/orders", response_class=HTMLResponse)
def orders_page(
    request: Request,
    user: Technologist,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    linked: Annotated[int | None, Query(ge=1, le=MAX_RECORD_ID)] = None,
) -> HTMLResponse:
    context = _context(session, user, clock, settings)
    context["linked"] = linked
    return render(request, "orders.html", context)


@router.get("/app/orders/rows", response_class=HTMLResponse)
def orders_rows(
    request: Request,
    user: Technologist,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> HTMLResponse:
    """The page's live part, refreshed when an order or a study changes."""
    return render(request, "_orders_rows.html", _context(session, user, clock, settings))


@router.post("/app/orders/link", response_model=None)
def link_study(
    request: Request,
    user: Technologist,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    events: OrderEventsDep,
    study_id: Annotated[int, Form(ge=1, le=MAX_RECORD_ID)],
    order_id: Annotated[str, Form()] = "",
    accession_number: Annotated[str, Form(max_length=64)] = "",
    move_to_order_patient: Annotated[bool, Form()] = False,
) -> Response:
    """Links the study to the order typed (accession number) or chosen; errors are shown at the
    study's form with what was sent."""
    form = LinkForm(study_id, None, accession_number.strip(), move_to_order_patient)
    htmx = bool(request.headers.get("HX-Request"))
    try:
        form.order_id = _chosen_order(session, user, clock, form, order_id)
        link_order(
            session,
            study_id,
            form.order_id,
            user,
            CareScope(user, clock()),
            move_to_order_patient=move_to_order_patient,
            routing=routing,
            outbox=outbox,
            events=events,
        )
    except Refusal as refusal:
        session.rollback()
        form.error = refusal.message
        context = _context(session, user, clock, settings)
        context["forms"] = {study_id: form}
        if htmx:  # htmx swaps only a 2xx answer: the error goes in the fragment
            return render(request, "_orders_rows.html", context)
        context["linked"] = None
        return render(request, "orders.html", context, status_code=refusal.status_code)
    if htmx:
        context = _context(session, user, clock, settings)
        context["linked"] = study_id
        return render(request, "_orders_rows.html", context)
    return RedirectResponse(f"/app/orders?linked={study_id}", status_code=303)


def _chosen_order(
    session: Session, user: User, clock: ClockDep, form: LinkForm, order_id: str
) -> int:
    """The order typed by accession number (it wins), else the one chosen in the list."""
    if form.accession_number:
        found = session.exec(
            select(ImagingOrder.id).where(
                ImagingOrder.accession_number == form.accession_number,
                *CareScope(user, clock()).orders(),
            )
        ).first()
        if found is None:
            raise InvalidRequest(
                f"Accession number: no order has accession number {form.accession_number}"
            )
        return found
    if not order_id.strip():
        raise InvalidRequest("Order: choose an order, or type its accession number")
    if not _number(order_id) or not 1 <= int(order_id) <= MAX_RECORD_ID:
        raise InvalidRequest("Order: not an order of the list")
    return int(order_id)


def _number(value: str) -> bool:
    """ASCII digits only: str.isdigit() takes '²' too, which int() refuses."""
    return value.isascii() and value.isdigit()

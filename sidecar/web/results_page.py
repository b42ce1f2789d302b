"""/app/results: a referring physician's results. Their patients' signed reports, newest first,
each readable as a page (print styles) and as the PDF; and the critical findings sent to them and
not yet acknowledged, each with the acknowledgement form (how it was received, the read-back).

Through the APIs a physician may use, with their rules: reports as GET /api/reports answers
them (sidecar.reports.service.readable_report and the care scope: a report out of reach is 404),
the PDF at /app/reports/{id}/pdf (sidecar.web.study_page, the same scope), findings as GET
/api/critical-findings/pending scopes them,
acknowledged through sidecar.findings.service.acknowledge (audited there) as POST
/api/critical-findings/{id}/acknowledge is. Administrators see every signed report and pending
finding; only the finding's recipients acknowledge it (the service refuses others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import Refusal
from sidecar.core.models import api_alias
from sidecar.core.pagination import RecordId
from sidecar.findings import service as findings
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.findings.models import (
    UNACKNOWLEDGED,
    AcknowledgementMethod,
    CriticalFinding,
    FindingAcknowledge,
    FindingNotification,
)
from sidecar.orders.models import ImagingOrder
from sidecar.reports import service as reports
from sidecar.reports.models import RadiologyReport, ReportStatus
from sidecar.reports.rendering import compose
from sidecar.studies.models import Study
from sidecar.web.session import page_roles
from sidecar.web.templating import page_link, render

router = APIRouter(include_in_schema=False)

Physician = Annotated[User, Depends(page_roles(*page_link("results").roles))]

_SIGNED = (ReportStatus.FINAL, ReportStatus.AMENDED, ReportStatus.CORRECTED)
_SHOWN = 100
METHOD_LABELS = {
    AcknowledgementMethod.ELECTRONIC: "Read here (electronic)",
    AcknowledgementMethod.PHONE: "By phone",
    AcknowledgementMethod.IN_PERSON: "In person",
}


@dataclass
class ReportRow:
    report: RadiologyReport
    study: Study
    order: ImagingOrder | None
    signer: str


@dataclass
class AcknowledgeForm:
    """What an acknowledgement form sent, kept on an error so that nothing typed is lost."""

    method: str = AcknowledgementMethod.ELECTRONIC.value
    read_back_confirmed: bool = False
    read_back_text: str = ""
    acknowledged_by_name: str = ""
    notes: str = ""
    errors: list[str] = field(default_factory=list)


def _signed_reports(session: Session, scope: CareScope) -> list[ReportRow]:
    rows = session.exec(
        select(RadiologyReport, Study, ImagingOrder, User.username)
        .join(Study, col(Study.id) == col(RadiologyReport.study_id))
        .join(ImagingOrder, col(ImagingOrder.id) == col(RadiologyReport.order_id), isouter=True)
        .join(User, col(User.id) == col(RadiologyReport.signed_by_id), isouter=True)
        .where(
            col(RadiologyReport.status).in_(_SIGNED),
            col(RadiologyReport.deleted_at).is_(None),
            *scope.reports(),
        )
        .order_by(col(RadiologyReport.signed_at).desc(), col(RadiologyReport.id).desc())
        .limit(_SHOWN)
    ).all()
    return [ReportRow(report, study, order, signer or "") for report, study, order, signer in rows]


def _pending_findings(session: Session, user: User, scope: CareScope) -> list[Any]:
    """Not yet acknowledged, the longest waiting first; a physician's: those sent to them (the
    ones they may acknowledge), of what the care scope lets them read."""
    conditions: list[Any] = [col(CriticalFinding.status).in_(UNACKNOWLEDGED), *scope.findings()]
    if user.role is Role.PHYSICIAN:
        sent_to_them = select(FindingNotification.finding_id).where(
            FindingNotification.recipient == (user.provider_id or ""),
            col(FindingNotification.finding_id).is_not(None),
        )
        conditions.append(col(CriticalFinding.id).in_(sent_to_them))
    return list(
        session.exec(
            select(CriticalFinding, Study)
            .join(Study, col(Study.id) == col(CriticalFinding.study_id))
            .where(*conditions)
            .order_by(col(CriticalFinding.created_at), col(CriticalFinding.id))
            .limit(_SHOWN)
        ).all()
    )


def _context(session: Session, user: User, clock: ClockDep) -> dict[str, Any]:
    scope = CareScope(user, clock())
    return {
        "reports": _signed_reports(session, scope),
        "findings": _pending_findings(session, user, scope),
        "forms": {},
        "methods": METHOD_LABELS,
        "may_acknowledge": user.role is Role.PHYSICIAN,
        "acknowledged": None,
        "live": "report finding",
    }


@router.get("/app/results", response_class=HTMLResponse)
def results_page(
    request: Request, user: Physician, session: SessionDep, clock: ClockDep
) -> HTMLResponse:
    context = _context(session, user, clock)
    context["acknowledged"] = request.query_params.get("acknowledged", "").isdigit() or None
    return render(request, "results.html", context)


@router.get("/app/results/rows", response_class=HTMLResponse)
def results_rows(
    request: Request, user: Physician, session: SessionDep, clock: ClockDep
) -> HTMLResponse:
    """The page's live part, refreshed when a report or a finding changes."""
    return render(request, "_results_rows.html", _context(session, user, clock))


@router.get("/app/results/reports/{report_id}", response_class=HTMLResponse)
def report_page(
    report_id: RecordId, request: Request, user: Physician, session: SessionDep, clock: ClockDep
) -> HTMLResponse:
    """The report read-only, as the API's rendering composes it; printable."""
    report = reports.readable_report(session, report_id, CareScope(user, clock()))
    study = session.get(Study, report.study_id)
    assert study is not None
    order = session.get(ImagingOrder, report.order_id) if report.order_id else None
    signer = session.get(User, report.signed_by_id) if report.signed_by_id else None
    context = {"report": report, "rendering": compose(report, study, order, signer)}
    return render(request, "result_report.html", context)


@router.post("/app/results/findings/{finding_id}/acknowledge", response_model=None)
def acknowledge(
    finding_id: RecordId,
    request: Request,
    user: Physician,
    session: SessionDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
    method: Annotated[str, Form(max_length=32)] = "",
    read_back_confirmed: Annotated[bool, Form()] = False,
    read_back_text: Annotated[str, Form(max_length=20000)] = "",
    acknowledged_by_name: Annotated[str, Form(max_length=1000)] = "",
    notes: Annotated[str, Form(max_length=20000)] = "",
) -> Response:
    form = AcknowledgeForm(method, read_back_confirmed, read_back_text, acknowledged_by_name, notes)
    htmx = bool(request.headers.get("HX-Request"))
    status_code = 400
    try:
        body = FindingAcknowledge(
            method=method,
            read_back_confirmed=read_back_confirmed,
            read_back_text=read_back_text.strip() or None,
            acknowledged_by_name=acknowledged_by_name.strip() or None,
            notes=notes.strip() or None,
        )
        finding = findings.readable_finding(session, finding_id, CareScope(user, clock()))
        findings.acknowledge(session, finding, user, body, now=clock())
        session.commit()
        workers.wake()
    except ValidationError as invalid:
        form.errors = [_field_error(error) for error in invalid.errors()]
    except Refusal as refusal:
        session.rollback()
        form.errors = [refusal.message]
        status_code = refusal.status_code
    else:
        if not htmx:
            return RedirectResponse(f"/app/results?acknowledged={finding_id}", status_code=303)
        context = _context(session, user, clock)
        context["acknowledged"] = True
        return render(request, "_results_rows.html", context)
    context = _context(session, user, clock)
    context["forms"] = {finding_id: form}
    if htmx:  # htmx swaps only a 2xx answer: the error goes in the fragment
        return render(request, "_results_rows.html", context)
    return render(request, "results.html", context, status_code=status_code)


_FIELD_LABELS = {
    "method": "How it was received",
    "readBackText": "Read-back",
    "acknowledgedByName": "Received by",
    "notes": "Notes",
}


def _field_error(error: Any) -> str:
    name = api_alias(str(error["loc"][-1])) if error.get("loc") else ""  # either spelling
    return f"{_FIELD_LABELS.get(name, name or 'Form')}: {error['msg']}"

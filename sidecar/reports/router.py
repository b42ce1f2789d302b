"""Radiology reports (seed 001 paths), their signed revisions and a readable rendering.

Only radiologists write, sign, amend and delete. Physicians read signed reports of the patients
of their own orders (their account's provider id); other clinicians read every report.
Optimistic concurrency: every answer carries `ETag: "<version>"`; a write may send the version it
read (`version` in the body, or `If-Match`), and a stale one answers 409.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import HTMLResponse, PlainTextResponse
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import SessionDep, SettingsDep
from sidecar.core.errors import InvalidRequest
from sidecar.core.models import Page
from sidecar.core.pagination import (
    Pagination,
    PaginationDep,
    RecordId,
    equal_to,
    paginate,
    record_id_query,
)
from sidecar.orders.models import ImagingOrder
from sidecar.reports import actions
from sidecar.reports import service as reports
from sidecar.reports.models import (
    RadiologyReport,
    ReportAmend,
    ReportCreate,
    ReportPublic,
    ReportRevisionPublic,
    ReportSign,
    ReportStatus,
    ReportUpdate,
)
from sidecar.reports.pdf import gather, render_pdf
from sidecar.reports.rendering import render_html, render_text
from sidecar.results.outbox import ResultOutbox, ResultOutboxDep
from sidecar.results.routing import ResultRoutingDep
from sidecar.studies.lookup import get_study_or_404
from sidecar.studies.models import Study

router = APIRouter(prefix="/api/reports", tags=["reports"])

_R = Role
Radiologist = Annotated[User, Depends(require_roles(_R.RADIOLOGIST))]
ReportReader = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST, _R.PHYSICIAN))
]
IfMatch = Annotated[str | None, Header(alias="If-Match")]


@router.post("", response_model=ReportPublic, status_code=status.HTTP_201_CREATED)
def create_report(
    body: ReportCreate,
    session: SessionDep,
    user: Radiologist,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    response: Response,
) -> RadiologyReport:
    study = get_study_or_404(session, body.study_id)  # not one removed with its images
    values = body.model_dump(exclude={"study_id", "template_id"}, exclude_unset=True)
    report = actions.create(session, study, user, values, routing, template_id=body.template_id)
    return _commit(session, report, outbox, response)


@router.get("", response_model=Page[ReportPublic])
def list_reports(
    session: SessionDep,
    _: ReportReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
    report_status: Annotated[ReportStatus | None, Query(alias="status")] = None,
    study_id: Annotated[int | None, record_id_query("studyId")] = None,
    order_id: Annotated[int | None, record_id_query("orderId")] = None,
    patient_id: Annotated[str | None, Query(alias="patientId", max_length=64)] = None,
) -> dict[str, Any]:
    """Reports newest first; a physician sees the signed reports of their own patients."""
    conditions = equal_to(
        (RadiologyReport.status, report_status),
        (RadiologyReport.study_id, study_id),
        (RadiologyReport.order_id, order_id),
    )
    if patient_id is not None:
        conditions.append(
            col(RadiologyReport.study_id).in_(
                select(Study.id).where(Study.patient_id == patient_id)
            )
        )
    return _page(session, scope, conditions, pagination)


@router.get("/study/{study_id}", response_model=Page[ReportPublic])
def list_study_reports(
    study_id: RecordId,
    session: SessionDep,
    _: ReportReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    return _page(session, scope, [RadiologyReport.study_id == study_id], pagination)


@router.get("/radiologist/{radiologist_id}", response_model=Page[ReportPublic])
def list_radiologist_reports(
    radiologist_id: RecordId,
    session: SessionDep,
    _: ReportReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    return _page(session, scope, [RadiologyReport.radiologist_id == radiologist_id], pagination)


@router.get("/{report_id}", response_model=ReportPublic)
def get_report(
    report_id: RecordId,
    session: SessionDep,
    _: ReportReader,
    scope: CareScopeDep,
    response: Response,
) -> RadiologyReport:
    report = reports.readable_report(session, report_id, scope)
    response.headers["ETag"] = etag(report)
    return report


@router.get("/{report_id}/versions", response_model=list[ReportRevisionPublic])
def list_versions(
    report_id: RecordId, session: SessionDep, _: ReportReader, scope: CareScopeDep
) -> list[Any]:
    """Every signed revision, oldest first: what was signed, by whom, when and why amended."""
    reports.readable_report(session, report_id, scope)
    return list(reports.revisions(session, report_id))


@router.get(
    "/{report_id}/rendering",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}, "text/html": {}, "application/pdf": {}}}},
)
def render_report(
    report_id: RecordId,
    session: SessionDep,
    _: ReportReader,
    scope: CareScopeDep,
    settings: SettingsDep,
    format: Annotated[str, Query(pattern="^(text|html|pdf)$")] = "text",
) -> Response:
    """The report as a clinician reads it: plain text (default), HTML, or PDF (with the
    amendment history and any critical finding's communication record)."""
    report = reports.readable_report(session, report_id, scope)
    if format == "pdf":
        document = render_pdf(gather(session, report, settings.department_name))
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="report-{report.id}.pdf"'},
        )
    study = session.get(Study, report.study_id)
    order = session.get(ImagingOrder, report.order_id) if report.order_id else None
    signer = session.get(User, report.signed_by_id) if report.signed_by_id else None
    assert study is not None
    if format == "html":
        return HTMLResponse(render_html(report, study, order, signer))
    return PlainTextResponse(render_text(report, study, order, signer))


@router.patch("/{report_id}", response_model=ReportPublic)
def update_report(
    report_id: RecordId,
    body: ReportUpdate,
    session: SessionDep,
    user: Radiologist,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    response: Response,
    if_match: IfMatch = None,
) -> RadiologyReport:
    report = reports.get_report(session, report_id)
    values = body.model_dump(exclude={"version"}, exclude_unset=True)
    expected = _expected(body.version, if_match)
    actions.update(session, report, values, user, routing, expected_version=expected)
    return _commit(session, report, outbox, response)


@router.post("/{report_id}/sign", response_model=ReportPublic)
def sign_report(
    report_id: RecordId,
    session: SessionDep,
    user: Radiologist,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    response: Response,
    body: ReportSign | None = None,
    if_match: IfMatch = None,
) -> RadiologyReport:
    report = reports.get_report(session, report_id)
    expected = _expected(body.version if body else None, if_match)
    actions.sign(session, report, user, routing, expected_version=expected)
    return _commit(session, report, outbox, response)


@router.post("/{report_id}/amend", response_model=ReportPublic)
def amend_report(
    report_id: RecordId,
    body: ReportAmend,
    session: SessionDep,
    user: Radiologist,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    response: Response,
    if_match: IfMatch = None,
) -> RadiologyReport:
    report = reports.get_report(session, report_id)
    sections = body.model_dump(exclude={"version", "kind", "reason"}, exclude_unset=True)
    actions.amend(
        session,
        report,
        user,
        sections,
        routing,
        kind=body.kind,
        reason=body.reason,
        expected_version=_expected(body.version, if_match),
    )
    return _commit(session, report, outbox, response)


@router.delete("/{report_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_report(
    report_id: RecordId, session: SessionDep, user: Radiologist, if_match: IfMatch = None
) -> None:
    """Deletes a preliminary report (kept on record, out of every list)."""
    report = reports.get_report(session, report_id)
    reports.discard_report(session, report, user, expected_version=_expected(None, if_match))
    session.commit()


def etag(report: RadiologyReport) -> str:
    return f'"{report.version}"'


def _page(
    session: Session, scope: CareScope, conditions: list[Any], pagination: Pagination
) -> dict[str, Any]:
    conditions = [*conditions, col(RadiologyReport.deleted_at).is_(None), *scope.reports()]
    newest_first = [col(RadiologyReport.updated_at).desc(), col(RadiologyReport.id).desc()]
    return paginate(session, RadiologyReport, conditions, newest_first, pagination)


def _expected(body_version: int | None, if_match: str | None) -> int | None:
    if body_version is not None:
        return body_version
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidRequest(f'If-Match must be an ETag this API gave, like "3", not {if_match!r}')
    return int(tag)


def _commit(
    session: Session, report: RadiologyReport, outbox: ResultOutbox | None, response: Response
) -> RadiologyReport:
    actions.commit(session, report, outbox)
    response.headers["ETag"] = etag(report)
    return report

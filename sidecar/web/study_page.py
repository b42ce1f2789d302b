"""/app/studies/{id}: one study (as GET /api/studies/{id} shows it, with the same care scope)
and its report editor, each action through the API's own functions: the report's
(sidecar.reports.actions: "Save draft" and "Sign", which saves what the editor shows and signs
it in one transaction, and "Amend"), and the findings API's (sidecar.findings.service).

Forms are plain POSTs answered 303 back to the page; htmx posts them in place and gets the
section back. A refusal (409: another reader holds the study, someone saved the report
meanwhile; 400: an incomplete report, a field too long) is shown in the section's alert with
the text that was sent, never lost.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep
from sidecar.core.errors import ConflictingState, InvalidRequest, NotPermitted
from sidecar.core.models import MAX_RECORD_ID
from sidecar.core.pagination import RecordId
from sidecar.findings import service as findings
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.findings.models import FindingCreate
from sidecar.findings.policy import FindingPolicyDep
from sidecar.reports import actions
from sidecar.reports import service as reports
from sidecar.reports.models import SECTIONS, AmendmentKind, ReportAmend, ReportSections
from sidecar.reports.pdf import gather, render_pdf
from sidecar.results.outbox import ResultOutboxDep
from sidecar.results.routing import ResultRoutingDep
from sidecar.studies.lookup import readable_study
from sidecar.studies.pictures import (
    OrthancDep,
    ThumbnailCacheDep,
    picture_response,
    study_thumbnail_picture,
)
from sidecar.viewer.front import ViewerLinksDep
from sidecar.web.care import PageScope
from sidecar.web.session import PageUser
from sidecar.web.study_view import editor_of, may_write, report_of, study_context
from sidecar.web.templating import render

router = APIRouter(include_in_schema=False)

Text = Annotated[str, Form()]


@router.get("/app/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request,
    study_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    links: ViewerLinksDep,
) -> HTMLResponse:
    context = study_context(session, user, scope, links, study_id)
    return render(request, "study.html", context)


@router.get("/app/studies/{study_id}/thumbnail")
def study_thumbnail(
    study_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    orthanc: OrthancDep,
    cache: ThumbnailCacheDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """GET /api/studies/{id}/thumbnail for the page's session (an <img> sends the cookie)."""
    del user
    picture = study_thumbnail_picture(session, study_id, scope, orthanc, cache)
    return picture_response(picture, if_none_match)


@router.get("/app/reports/{report_id}/pdf")
def report_pdf(
    report_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    settings: SettingsDep,
) -> Response:
    """GET /api/reports/{id}/rendering?format=pdf for the page's session (the study page's and
    the results page's link): sent as an attachment, so the link downloads it (a browser
    without a PDF viewer would not show it inline)."""
    del user
    report = reports.readable_report(session, report_id, scope)
    document = render_pdf(gather(session, report, settings.department_name))
    return Response(
        document,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="report-{report.id}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/app/studies/{study_id}/report", response_class=HTMLResponse)
def report_sent(
    request: Request,
    study_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    links: ViewerLinksDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    action: Text = "save",
    version: Text = "",
    template_id: Text = "",
    technique: Text = "",
    comparison: Text = "",
    findings: Text = "",
    impression: Text = "",
    recommendations: Text = "",
) -> Response:
    """ "Start from template" (fills the editor, saves nothing), "Save draft", or "Sign"."""
    _writer(user)
    texts = _texts(technique, comparison, findings, impression, recommendations)
    editor = {"sections": texts, "version": version}
    study = readable_study(session, study_id, scope)
    try:
        expected = _version(version)
        if action == "template":
            if not _number(template_id):
                raise InvalidRequest("Start from template: choose a template first")
            if int(template_id) > MAX_RECORD_ID:
                raise InvalidRequest("Start from template: report template not found")
            filled = {**texts, **actions.template_sections(session, int(template_id))}
            editor = {"sections": filled, "version": version}
            applied = "Template applied: check each section, then save or sign."
            return _section(request, session, user, scope, links, study_id, editor, applied)
        sections = _sections(texts)
        if action == "sign":
            report = actions.save_and_sign(
                session, study, user, sections, routing, expected_version=expected
            )
            done = "Report signed."
        elif action == "save":
            report = actions.save(
                session, study, user, sections, routing, expected_version=expected
            )
            done = "Draft saved."
        else:
            raise InvalidRequest("action: save, sign or template")
        actions.commit(session, report, outbox)
    except (ConflictingState, InvalidRequest) as refused:
        session.rollback()
        return _refused(request, session, user, scope, links, study_id, editor, refused)
    return _done(request, session, user, scope, links, study_id, done)


@router.post("/app/studies/{study_id}/report/amend", response_class=HTMLResponse)
def report_amended(
    request: Request,
    study_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    links: ViewerLinksDep,
    routing: ResultRoutingDep,
    outbox: ResultOutboxDep,
    version: Text = "",
    kind: Text = AmendmentKind.AMENDED.value,
    reason: Text = "",
    technique: Text = "",
    comparison: Text = "",
    findings: Text = "",
    impression: Text = "",
    recommendations: Text = "",
) -> Response:
    """POST /api/reports/{id}/amend: every section as the form shows it, with the reason."""
    _writer(user)
    readable_study(session, study_id, scope)
    texts = _texts(technique, comparison, findings, impression, recommendations)
    editor = {"sections": texts, "version": version, "reason": reason, "kind": kind}
    try:
        report = report_of(session, study_id, scope)
        if report is None:
            raise ConflictingState(f"study {study_id} has no report to amend")
        try:
            body = ReportAmend.model_validate(
                {**_sections(texts), "kind": kind, "reason": reason.strip()}
            )
        except ValidationError as invalid:
            raise InvalidRequest(_invalid(invalid)) from None
        actions.amend(
            session,
            report,
            user,
            body.model_dump(exclude={"version", "kind", "reason"}),
            routing,
            kind=body.kind,
            reason=body.reason,
            expected_version=_version(version),
        )
        actions.commit(session, report, outbox)
    except (ConflictingState, InvalidRequest) as refused:
        session.rollback()
        return _refused(request, session, user, scope, links, study_id, editor, refused)
    return _done(request, session, user, scope, links, study_id, "Report amended.")


@router.post("/app/studies/{study_id}/findings", response_class=HTMLResponse)
def finding_raised(
    request: Request,
    study_id: RecordId,
    session: SessionDep,
    user: PageUser,
    scope: PageScope,
    links: ViewerLinksDep,
    policy: FindingPolicyDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
    severity: Text = "",
    description: Text = "",
    recommendation: Text = "",
) -> Response:
    """POST /api/findings on this study (and its report, if it has one)."""
    _writer(user)
    study = readable_study(session, study_id, scope)
    report = report_of(session, study_id, scope)
    sent = {"severity": severity, "description": description, "recommendation": recommendation}
    try:
        try:
            body = FindingCreate.model_validate(
                {
                    "study_id": study_id,
                    "report_id": report.id if report else None,
                    "severity": severity,
                    "description": description.strip(),
                    "recommendation": recommendation.strip() or None,
                }
            )
        except ValidationError as invalid:
            raise InvalidRequest(_invalid(invalid)) from None
        values = body.model_dump(exclude_unset=True)
        findings.raise_finding(session, study, user, values, policy, now=clock())
        session.commit()
        workers.wake()
    except (ConflictingState, InvalidRequest) as refused:
        session.rollback()
        context = study_context(session, user, scope, links, study_id)
        context.update(finding_sent=sent, finding_message=refused.message)
        return render(request, "study.html", context, status_code=refused.status_code)
    if request.headers.get("HX-Request"):
        context = study_context(session, user, scope, links, study_id)
        context.update(finding_message="Critical finding raised.", finding_ok=True)
        return render(request, "_study_findings.html", context)
    return RedirectResponse(f"/app/studies/{study_id}#findings", status_code=303)


def _writer(user: Any) -> None:
    if not may_write(user):  # the reports and findings APIs' role
        raise NotPermitted("this action needs one of the roles: radiologist")


def _number(value: str) -> bool:
    """ASCII digits only: str.isdigit() takes '²' too, which int() refuses."""
    return value.isascii() and value.isdigit()


def _texts(*values: str) -> dict[str, str]:
    return dict(zip(SECTIONS, values, strict=True))


def _version(value: str) -> int | None:
    if not value:
        return None
    if not _number(value) or int(value) < 1:
        raise InvalidRequest("version: the report version the editor read")
    return int(value)


def _sections(texts: dict[str, str]) -> dict[str, Any]:
    """The editor's sections as the reports API takes them (an empty field: no text)."""
    values = {name: text if text.strip() else None for name, text in texts.items()}
    try:
        return ReportSections.model_validate(values).model_dump()
    except ValidationError as invalid:
        raise InvalidRequest(_invalid(invalid)) from None


def _invalid(invalid: ValidationError) -> str:
    names = {"": "the form", **{name: name.capitalize() for name in SECTIONS}}
    parts = []
    for error in invalid.errors():
        field = str(error["loc"][-1]) if error.get("loc") else ""
        parts.append(f"{names.get(field, field.capitalize())}: {error['msg']}")
    return "; ".join(parts)


def _section(
    request: Request,
    session: SessionDep,
    user: Any,
    scope: Any,
    links: Any,
    study_id: int,
    editor: dict[str, Any],
    message: str,
    *,
    ok: bool = True,
    status_code: int = 200,
    saved_now: Any = None,
) -> HTMLResponse:
    context = study_context(session, user, scope, links, study_id, editor=editor)
    context.update(message=message, message_ok=ok, saved_now=saved_now)
    if request.headers.get("HX-Request"):  # htmx swaps 2xx answers: a refusal too
        return render(request, "_study_report.html", context)
    return render(request, "study.html", context, status_code=status_code)


def _refused(
    request: Request,
    session: SessionDep,
    user: Any,
    scope: Any,
    links: Any,
    study_id: int,
    editor: dict[str, Any],
    refused: ConflictingState | InvalidRequest,
) -> HTMLResponse:
    """The section again with the text that was sent and the refusal; a stale version also
    shows the report as saved now, and the editor then writes over that version."""
    saved = report_of(session, study_id, scope)
    saved_now = None
    stale = saved is not None and editor.get("version", "") != str(saved.version)
    if isinstance(refused, ConflictingState) and saved is not None and stale:
        saved_now = editor_of(saved)["sections"]
        editor = {**editor, "version": str(saved.version)}
    return _section(
        request,
        session,
        user,
        scope,
        links,
        study_id,
        editor,
        refused.message,
        ok=False,
        status_code=refused.status_code,
        saved_now=saved_now,
    )


def _done(
    request: Request,
    session: SessionDep,
    user: Any,
    scope: Any,
    links: Any,
    study_id: int,
    message: str,
) -> Response:
    if request.headers.get("HX-Request"):
        editor = editor_of(report_of(session, study_id, scope))
        return _section(request, session, user, scope, links, study_id, editor, message)
    return RedirectResponse(f"/app/studies/{study_id}#report", status_code=303)

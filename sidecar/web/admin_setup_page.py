"""/app/admin/rules and /app/admin/templates: assignment rules (list, create, delete) and report
templates (list, create, edit, delete), for administrators only, through the services the API
calls (sidecar.reading.rules_service, sidecar.reports.templates_service): the same checks and
audit rows as /api/assignment-rules and /api/report-templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import Refusal
from sidecar.core.pagination import RecordId
from sidecar.orders.models import Priority
from sidecar.reading import rules_service
from sidecar.reading.models import RuleCreate
from sidecar.reports import templates_service
from sidecar.reports.models import SECTIONS as REPORT_SECTIONS
from sidecar.reports.templates import ReportTemplate, TemplateCreate, TemplateUpdate
from sidecar.web.admin_sections import SECTIONS, PageAdmin
from sidecar.web.forms import (
    done,
    form_fields,
    form_list,
    given,
    message_of,
    problems,
    refused_status,
)
from sidecar.web.templating import render

router = APIRouter(include_in_schema=False)

RULE_LABELS = {
    "name": "Name",
    "position": "Position",
    "modality": "Modality",
    "body_part": "Body part",
    "priority": "Priority",
    "procedure_code": "Procedure code",
    "pool": "Radiologists",
}
RULE_DONE = {"created": "The rule was created.", "deleted": "The rule was deleted."}
TEMPLATE_LABELS = {
    "name": "Name",
    "modality": "Modality",
    "body_part": "Body part",
    "procedure_code": "Procedure code",
    "sections": "Sections",
    **{name: name.capitalize() for name in REPORT_SECTIONS},
}
TEMPLATE_DONE = {
    "created": "The template was created.",
    "saved": "The template was saved.",
    "deleted": "The template was deleted.",
}
_CRITERIA = ("modality", "body_part", "priority", "procedure_code")


# -- Assignment rules -----------------------------------------------------------------------------


@router.get("/app/admin/rules", response_class=HTMLResponse)
def rules_page(request: Request, _: PageAdmin, session: SessionDep) -> HTMLResponse:
    return _rules(request, session, message=message_of(RULE_DONE, _done(request), {}))


@router.post("/app/admin/rules")
async def create_rule(
    request: Request, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    fields = await form_fields(request)
    pool = await form_list(request, "pool")
    values: dict[str, Any] = given(fields, "name", "position", *_CRITERIA)
    values["enabled"] = fields.get("enabled") == "on"
    try:
        body = RuleCreate.model_validate({**values, "pool": pool})
        rules_service.create_rule(session, body, admin=admin, now=clock())
    except (ValidationError, Refusal) as error:
        session.rollback()
        return _rules(request, session, sent=fields, pool=pool, error=error)
    return done("/app/admin/rules", "created")


@router.post("/app/admin/rules/{rule_id}/delete")
def delete_rule(rule_id: RecordId, admin: PageAdmin, session: SessionDep) -> Response:
    rules_service.delete_rule(session, rules_service.get_rule(session, rule_id), admin=admin)
    return done("/app/admin/rules", "deleted")


def _rules(
    request: Request,
    session: Session,
    *,
    message: str = "",
    sent: dict[str, str] | None = None,
    pool: list[str] | None = None,
    error: Exception | None = None,
) -> HTMLResponse:
    radiologists = session.exec(
        select(User).where(User.role == Role.RADIOLOGIST).order_by(col(User.username))
    ).all()
    names = {user.id: user.username for user in session.exec(select(User))}
    context = {
        "sections": SECTIONS,
        "rules": rules_service.list_rules(session),
        "names": names,
        "radiologists": radiologists,
        "priorities": list(Priority),
        "message": message,
        "sent": sent if sent is not None else {"enabled": "on"},
        "pool": pool or [],
        "errors": problems(error, RULE_LABELS) if error else [],
    }
    status = refused_status(request, error) if error else 200
    return render(request, "admin_rules.html", context, status_code=status)


# -- Report templates -----------------------------------------------------------------------------


@router.get("/app/admin/templates", response_class=HTMLResponse)
def templates_page(request: Request, _: PageAdmin, session: SessionDep) -> HTMLResponse:
    return _templates(request, session, message=message_of(TEMPLATE_DONE, _done(request), {}))


@router.post("/app/admin/templates")
async def create_template(
    request: Request, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    fields = await form_fields(request)
    try:
        body = TemplateCreate.model_validate(_template_values(fields, create=True))
        templates_service.create_template(session, body, admin=admin, now=clock())
    except (ValidationError, Refusal) as error:
        session.rollback()
        return _templates(request, session, sent=fields, error=error)
    return done("/app/admin/templates", "created")


@router.get("/app/admin/templates/{template_id}", response_class=HTMLResponse)
def edit_template_page(
    request: Request, template_id: RecordId, _: PageAdmin, session: SessionDep
) -> HTMLResponse:
    template = templates_service.get_template(session, template_id)
    return _template_editor(request, template, _fields_of(template))


@router.post("/app/admin/templates/{template_id}")
async def save_template(
    request: Request, template_id: RecordId, admin: PageAdmin, session: SessionDep, clock: ClockDep
) -> Response:
    """Every field as the form shows it: an emptied criterion or section is removed."""
    template = templates_service.get_template(session, template_id)
    fields = await form_fields(request)
    try:
        body = TemplateUpdate.model_validate(_template_values(fields, create=False))
        templates_service.update_template(session, template, body, admin=admin, now=clock())
    except (ValidationError, Refusal) as error:
        session.rollback()
        return _template_editor(request, template, fields, error=error)
    return done("/app/admin/templates", "saved")


@router.post("/app/admin/templates/{template_id}/delete")
def delete_template(template_id: RecordId, admin: PageAdmin, session: SessionDep) -> Response:
    template = templates_service.get_template(session, template_id)
    templates_service.delete_template(session, template, admin=admin)
    return done("/app/admin/templates", "deleted")


def _template_values(fields: dict[str, str], *, create: bool) -> dict[str, Any]:
    criteria = ("modality", "body_part", "procedure_code")
    if create:
        values: dict[str, Any] = given(fields, "name", *criteria)
    else:
        values = {"name": fields.get("name") or None}
        values.update({name: fields.get(name) or None for name in criteria})
    values["sections"] = {name: fields.get(name) or None for name in REPORT_SECTIONS}
    return values


def _fields_of(template: ReportTemplate) -> dict[str, str]:
    names = ("name", "modality", "body_part", "procedure_code")
    fields = {name: getattr(template, name) or "" for name in names}
    fields.update({name: template.sections.get(name, "") for name in REPORT_SECTIONS})
    return fields


def _templates(
    request: Request,
    session: Session,
    *,
    message: str = "",
    sent: dict[str, str] | None = None,
    error: Exception | None = None,
) -> HTMLResponse:
    context = {
        "sections": SECTIONS,
        "templates": templates_service.list_templates(session),
        "report_sections": REPORT_SECTIONS,
        "message": message,
        "sent": sent or {},
        "errors": problems(error, TEMPLATE_LABELS) if error else [],
    }
    status = refused_status(request, error) if error else 200
    return render(request, "admin_templates.html", context, status_code=status)


def _template_editor(
    request: Request,
    template: ReportTemplate,
    fields: dict[str, str],
    *,
    error: Exception | None = None,
) -> HTMLResponse:
    context = {
        "sections": SECTIONS,
        "template": template,
        "report_sections": REPORT_SECTIONS,
        "sent": fields,
        "message": "",
        "errors": problems(error, TEMPLATE_LABELS) if error else [],
    }
    status = refused_status(request, error) if error else 200
    return render(request, "admin_template_edit.html", context, status_code=status)


def _done(request: Request) -> str | None:
    return request.query_params.get("done")

"""Report templates managed by administrators: one function for each change, called by the API
(sidecar.reports.templates_router) and the admin page (sidecar.web) alike; each audits and
commits. (The templates themselves and their matching: sidecar.reports.templates.)"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from sidecar.accounts.models import User
from sidecar.core import audit
from sidecar.core.errors import UnknownRecord
from sidecar.reports.templates import (
    ReportTemplate,
    TemplateCreate,
    TemplatePublic,
    TemplateUpdate,
    section_texts,
)


def list_templates(session: Session) -> list[ReportTemplate]:
    return list(session.exec(select(ReportTemplate).order_by(col(ReportTemplate.id))))


def get_template(session: Session, template_id: int) -> ReportTemplate:
    template = session.get(ReportTemplate, template_id)
    if template is None:
        raise UnknownRecord(f"report template {template_id} not found")
    return template


def create_template(
    session: Session, body: TemplateCreate, *, admin: User, now: datetime
) -> TemplatePublic:
    template = ReportTemplate(
        name=body.name,
        modality=body.modality,
        body_part=body.body_part,
        procedure_code=body.procedure_code,
        sections=section_texts(body.sections),
        created_at=now,
        updated_at=now,
    )
    session.add(template)
    session.flush()
    _audit(session, admin, "report_template.created", template, sorted(body.model_fields_set))
    return _commit(session, template)


def update_template(
    session: Session, template: ReportTemplate, body: TemplateUpdate, *, admin: User, now: datetime
) -> TemplatePublic:
    for name in body.model_fields_set - {"sections"}:
        setattr(template, name, getattr(body, name))
    if body.sections is not None:
        template.sections = section_texts(body.sections)
    template.updated_at = now
    session.add(template)
    _audit(session, admin, "report_template.updated", template, sorted(body.model_fields_set))
    return _commit(session, template)


def delete_template(session: Session, template: ReportTemplate, *, admin: User) -> None:
    _audit(session, admin, "report_template.deleted", template, [])
    session.delete(template)
    session.commit()


def _audit(
    session: Session, admin: User, action: str, template: ReportTemplate, fields: list[str]
) -> None:
    audit.record(
        session,
        actor=admin.username,
        action=action,
        entity_type="report_template",
        entity_id=template.id,
        fields=fields,
    )


def _commit(session: Session, template: ReportTemplate) -> TemplatePublic:
    session.commit()
    session.refresh(template)
    return TemplatePublic.of(template)

"""Report templates (issue 14, item 6): administrators manage them; radiologists read them and
ask which suit a study (`?studyId=`, best first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from sqlmodel import Session, col, select

from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import UnknownRecord
from sidecar.core.pagination import RecordId, record_id_query
from sidecar.orders.models import ImagingOrder
from sidecar.reports.templates import (
    ReportTemplate,
    TemplateCreate,
    TemplatePublic,
    TemplateUpdate,
    section_texts,
    suggestions,
)
from sidecar.studies.models import Study

router = APIRouter(prefix="/api/report-templates", tags=["reports"])

TemplateReader = Annotated[User, Depends(require_roles(Role.ADMIN, Role.RADIOLOGIST))]


@router.get("", response_model=list[TemplatePublic])
def list_templates(
    session: SessionDep,
    _: TemplateReader,
    study_id: Annotated[int | None, record_id_query("studyId")] = None,
) -> list[TemplatePublic]:
    """Every template; with `studyId`, those that suit the study, the most specific first."""
    templates = list(session.exec(select(ReportTemplate).order_by(col(ReportTemplate.id))))
    if study_id is not None:
        study = session.get(Study, study_id)
        if study is None:
            raise UnknownRecord(f"study {study_id} not found")
        order = session.get(ImagingOrder, study.order_id) if study.order_id else None
        templates = suggestions(templates, study, order)
    return [TemplatePublic.of(t) for t in templates]


@router.post("", response_model=TemplatePublic, status_code=status.HTTP_201_CREATED)
def create_template(
    body: TemplateCreate, session: SessionDep, admin: Admin, clock: ClockDep
) -> TemplatePublic:
    now = clock()
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


@router.patch("/{template_id}", response_model=TemplatePublic)
def update_template(
    template_id: RecordId, body: TemplateUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> TemplatePublic:
    template = _get(session, template_id)
    for name in body.model_fields_set - {"sections"}:
        setattr(template, name, getattr(body, name))
    if body.sections is not None:
        template.sections = section_texts(body.sections)
    template.updated_at = clock()
    session.add(template)
    _audit(session, admin, "report_template.updated", template, sorted(body.model_fields_set))
    return _commit(session, template)


@router.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(template_id: RecordId, session: SessionDep, admin: Admin) -> None:
    template = _get(session, template_id)
    _audit(session, admin, "report_template.deleted", template, [])
    session.delete(template)
    session.commit()


def _get(session: Session, template_id: int) -> ReportTemplate:
    template = session.get(ReportTemplate, template_id)
    if template is None:
        raise UnknownRecord(f"report template {template_id} not found")
    return template


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

"""Report templates (issue 14, item 6): administrators manage them; radiologists read them and
ask which suit a study (`?studyId=`, best first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import UnknownRecord
from sidecar.core.pagination import RecordId, record_id_query
from sidecar.orders.models import ImagingOrder
from sidecar.reports import templates_service
from sidecar.reports.templates import (
    TemplateCreate,
    TemplatePublic,
    TemplateUpdate,
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
    templates = templates_service.list_templates(session)
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
    return templates_service.create_template(session, body, admin=admin, now=clock())


@router.patch("/{template_id}", response_model=TemplatePublic)
def update_template(
    template_id: RecordId, body: TemplateUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> TemplatePublic:
    template = templates_service.get_template(session, template_id)
    return templates_service.update_template(session, template, body, admin=admin, now=clock())


@router.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(template_id: RecordId, session: SessionDep, admin: Admin) -> None:
    template = templates_service.get_template(session, template_id)
    templates_service.delete_template(session, template, admin=admin)

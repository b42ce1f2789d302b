"""The audit trail, for administrators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col

from sidecar.accounts.dependencies import Admin
from sidecar.core.audit import AuditEvent, AuditEventPublic
from sidecar.core.dependencies import SessionDep
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, equal_to, paginate

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEventPublic])
def list_audit_events(
    session: SessionDep,
    _: Admin,
    pagination: PaginationDep,
    entity_type: Annotated[str | None, Query(alias="entityType", max_length=32)] = None,
    entity_id: Annotated[str | None, Query(alias="entityId", max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    conditions = equal_to(
        (AuditEvent.entity_type, entity_type),
        (AuditEvent.entity_id, entity_id),
        (AuditEvent.action, action),
        (AuditEvent.actor, actor),
    )
    return paginate(session, AuditEvent, conditions, [col(AuditEvent.id).desc()], pagination)

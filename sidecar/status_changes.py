"""A record moved through its status workflow: checked, stamped and audited in one place."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from sqlmodel import Session

from sidecar import audit
from sidecar.models.common import utcnow
from sidecar.workflow import Workflow

StatusT = TypeVar("StatusT", bound=StrEnum)


def move(
    session: Session,
    record: Any,
    workflow: Workflow[StatusT],
    target: StatusT,
    *,
    actor: str,
    entity_type: str,
) -> None:
    """Raises InvalidTransition when `workflow` does not allow it; the caller commits.
    `record` has `id`, `status` and `updated_at`."""
    previous = type(target)(record.status)
    workflow.check(previous, target)
    record.status = target
    record.updated_at = utcnow()
    session.add(record)
    audit.record(
        session,
        actor=actor,
        action=f"{entity_type}.status_changed",
        entity_type=entity_type,
        entity_id=record.id,
        previous=previous,
        status=target,
    )

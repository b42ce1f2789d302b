"""The workflow engine: every status of an order, a study, a report or a critical finding is
written here, and only here, checked against that record's workflow.

A workflow is data (which status may follow which), declared beside its table
(sidecar.orders.models.ORDER_WORKFLOW, sidecar.studies.models.STUDY_WORKFLOW,
sidecar.reports.models.REPORT_WORKFLOW, sidecar.findings.models.FINDING_WORKFLOW). `move` changes a
loaded record's status, stamps it and audits `<entity>.status_changed` (unless the caller records
a more telling event of its own, e.g. `report.signed`); `move_if` is the conditional UPDATE for
a change that must not race with another writer (a finding notified while it is acknowledged).
A transition the workflow does not allow raises InvalidTransition (409).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import update
from sqlmodel import Session

from sidecar.core import audit
from sidecar.core.errors import ConflictingState
from sidecar.core.models import utcnow

StatusT = TypeVar("StatusT", bound=StrEnum)


class InvalidTransition(ConflictingState):
    def __init__(
        self, workflow: str, current: StrEnum, target: StrEnum, allowed: Iterable[StrEnum]
    ):
        names = ", ".join(sorted(s.value for s in allowed)) or "none (final state)"
        super().__init__(
            f"{workflow} status cannot change from {current.value} to {target.value}; "
            f"allowed from {current.value}: {names}"
        )
        self.current = current
        self.target = target


class Workflow(Generic[StatusT]):
    """`name` in refusals ("critical finding"), `entity_type` in the audit trail."""

    def __init__(
        self, name: str, entity_type: str, transitions: Mapping[StatusT, Iterable[StatusT]]
    ) -> None:
        self.name = name
        self.entity_type = entity_type
        self._transitions = {state: frozenset(targets) for state, targets in transitions.items()}

    def allowed_from(self, current: StatusT) -> frozenset[StatusT]:
        return self._transitions.get(current, frozenset())

    def can(self, current: StatusT, target: StatusT) -> bool:
        return target in self.allowed_from(current)

    def check(self, current: StatusT, target: StatusT) -> None:
        if not self.can(current, target):
            raise InvalidTransition(self.name, current, target, self.allowed_from(current))


def move(
    session: Session,
    record: Any,
    workflow: Workflow[StatusT],
    target: StatusT,
    *,
    actor: str,
    audited: bool = True,
    at: datetime | None = None,
) -> StatusT:
    """Moves `record` (with `id`, `status` and `updated_at`) to `target`; returns the status it
    had. Raises InvalidTransition when `workflow` does not allow it; the caller commits.
    `audited` False: the caller's own audit event of the change says it (with the status)."""
    previous = type(target)(record.status)
    workflow.check(previous, target)
    record.status = target
    record.updated_at = at or utcnow()
    session.add(record)
    if audited:
        audit.record(
            session,
            actor=actor,
            action=f"{workflow.entity_type}.status_changed",
            entity_type=workflow.entity_type,
            entity_id=record.id,
            previous=previous,
            status=target,
        )
    return previous


def move_if(
    session: Session,
    table: Any,
    record_id: int,
    workflow: Workflow[StatusT],
    current: StatusT,
    target: StatusT,
    *,
    at: datetime,
) -> bool:
    """current -> target for the record with this id if it is still `current`, in one
    conditional UPDATE that leaves its version alone: a writer racing with it (holding the
    record) wins either way, and never gets a 409 for it. True when this call moved it (of
    two racing callers, one does). The caller commits, and audits what it moved."""
    workflow.check(current, target)
    result = session.execute(
        update(table)
        .where(table.id == record_id, table.status == current)
        .values(status=target, updated_at=at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)

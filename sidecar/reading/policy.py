"""Turnaround targets and who is told when a study waits too long, from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import case, func, or_
from sqlmodel import col

from sidecar.core.dependencies import provide
from sidecar.core.settings import Settings
from sidecar.orders.models import Priority
from sidecar.reading.models import StudyReading
from sidecar.studies.models import Study, StudyStatus

#: Ready to read: images complete and no final report (a preliminary one may exist).
READY_TO_READ = (StudyStatus.COMPLETED, StudyStatus.PRELIMINARY)

#: A study without a priority (no order) is read as routine.
DEFAULT_PRIORITY = Priority.ROUTINE


@dataclass(frozen=True)
class ReadingPolicy:
    targets: dict[Priority, timedelta]
    escalation_contact: str
    escalation_after: timedelta
    notify: bool  # a notification service is configured
    public_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadingPolicy:
        return cls(
            targets={
                Priority.STAT: timedelta(minutes=settings.reading_target_minutes_stat),
                Priority.URGENT: timedelta(minutes=settings.reading_target_minutes_urgent),
                Priority.ROUTINE: timedelta(minutes=settings.reading_target_minutes_routine),
            },
            escalation_contact=settings.reading_escalation_contact,
            escalation_after=timedelta(minutes=settings.reading_escalation_minutes),
            notify=bool(settings.notification_service_url),
            public_url=settings.public_url,
        )

    def due(
        self, priority: Priority, ready_at: datetime | None, review_due_at: datetime | None = None
    ) -> datetime | None:
        """When the study should be read: its priority's target from when it was ready, or
        sooner when a critical AI finding asks for review by `review_due_at`."""
        target = None if ready_at is None else ready_at + self.targets[priority]
        if target is None or review_due_at is None:
            return target or review_due_at
        return min(target, review_due_at)

    def overdue_condition(self, now: datetime) -> Any:
        """A condition: the study's due time has passed at `now` (one threshold per priority,
        so the database compares plain timestamps), or its AI review deadline has."""
        return or_(
            *(
                (priority_of() == priority.value) & (ready_time() <= now - target)
                for priority, target in self.targets.items()
            ),
            col(StudyReading.review_due_at) <= now,
        )


def priority_of() -> Any:
    """The study's priority as text, a study without one being routine."""
    return func.coalesce(col(Study.priority), DEFAULT_PRIORITY.value)


def priority_rank() -> Any:
    """STAT first, then URGENT, then the rest."""
    return case(
        (col(Study.priority) == Priority.STAT.value, 0),
        (col(Study.priority) == Priority.URGENT.value, 1),
        else_=2,
    )


def review_first() -> list[Any]:
    """Within a priority, a study whose critical AI finding awaits review first, the soonest
    review deadline first (sidecar.analyses.review)."""
    deadline = col(StudyReading.review_due_at)
    return [case((deadline.is_(None), 1), else_=0), deadline]


def ready_time() -> Any:
    """Images complete: when the study was seen ready to read, else when its images were last
    registered (a study registered before reading existed has no reading row)."""
    return func.coalesce(col(StudyReading.ready_at), col(Study.images_received_at))


def as_priority(value: str | None) -> Priority:
    try:
        return Priority(value) if value else DEFAULT_PRIORITY
    except ValueError:
        return DEFAULT_PRIORITY


ReadingPolicyDep = Annotated[ReadingPolicy, Depends(provide(ReadingPolicy))]

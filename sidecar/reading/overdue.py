"""The overdue worker: a study not read by its target time (READING_TARGET_MINUTES_<PRIORITY>
from images complete, or its AI review deadline if sooner: sidecar.analyses.review) is marked
overdue and its assigned radiologist told; if it is still unread READING_ESCALATION_MINUTES
later, the escalation contact (READING_ESCALATION_CONTACT) is told. A study nobody holds goes
straight to the escalation contact. Both messages go through the critical findings' durable
notification outbox, with ids only.

The step reached is stored on the study's reading row (`overdue_level`) in the same transaction
as its notification: a restart sends nothing twice. The clock is injected: tests move a fake
clock and call `run_once()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, or_
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from sidecar.core import audit
from sidecar.core.background import BackgroundWorker
from sidecar.core.models import utcnow
from sidecar.findings.models import NotificationKind
from sidecar.reading import holder
from sidecar.reading.models import StudyReading
from sidecar.reading.notify import queue_reading_notification
from sidecar.reading.policy import (
    READY_TO_READ,
    ReadingPolicy,
    as_priority,
    priority_of,
    ready_time,
)
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

OVERDUE_ACTOR = "system:reading-overdue"
NOT_OVERDUE, ASSIGNEE_TOLD, CONTACT_TOLD = 0, 1, 2


class ReadingOverdue(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        policy: ReadingPolicy,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("reading-overdue", clock=clock, idle_poll=60.0)
        self._engine = engine
        self._policy = policy
        self._on_queued = on_queued or (lambda: None)

    def run_once(self) -> float | None:
        """Takes every study whose next step is due one step on; returns seconds until the next
        step falls due (None: nothing waiting)."""
        now = self.clock()
        with Session(self._engine) as session:
            newly_overdue = session.exec(
                self._waiting(NOT_OVERDUE).where(self._policy.overdue_condition(now))
            ).all()
            to_escalate = session.exec(
                self._waiting(ASSIGNEE_TOLD).where(
                    col(StudyReading.overdue_at) <= now - self._policy.escalation_after
                )
            ).all()
        queued = sum(self._step(study_id, now) for study_id in [*newly_overdue, *to_escalate])
        if queued:
            self._on_queued()
        return self._seconds_until_next(now)

    @staticmethod
    def _waiting(level: int) -> Any:
        at_level = col(StudyReading.overdue_level) == level
        if level == NOT_OVERDUE:
            at_level = or_(col(StudyReading.id).is_(None), at_level)
        return (
            select(Study.id)
            .outerjoin(StudyReading, col(StudyReading.study_id) == col(Study.id))
            .where(col(Study.status).in_(READY_TO_READ), at_level)
            .order_by(col(Study.id))
        )

    def _step(self, study_id: int, now: datetime) -> bool:
        with Session(self._engine) as session:
            study = session.get(Study, study_id)
            if study is None or study.status not in READY_TO_READ:
                return False  # read meanwhile
            reading = holder.ensure_reading(session, study)
            priority = as_priority(study.priority)
            due = self._policy.due(
                priority, reading.ready_at or study.images_received_at, reading.review_due_at
            )
            if due is None or due > now:
                return False
            assignee = holder.active_holder(session, reading)
            detail: dict[str, Any] = {"dueAt": due.isoformat(), "assignedTo": None}
            if assignee is not None:
                detail["assignedTo"] = {"id": assignee.id, "name": assignee.username}
            if reading.overdue_level == NOT_OVERDUE:
                reading.overdue_at = now
                audit.record(
                    session,
                    actor=OVERDUE_ACTOR,
                    action="study.reading_overdue",
                    entity_type="study",
                    entity_id=study.id,
                    priority=priority,
                    radiologist_id=assignee.id if assignee else None,
                )
            if reading.overdue_level == NOT_OVERDUE and assignee is not None:
                reading.overdue_level = ASSIGNEE_TOLD
                recipient, role = assignee.username, "assigned_radiologist"
            elif reading.overdue_at is not None and (
                reading.overdue_level == NOT_OVERDUE
                or reading.overdue_at + self._policy.escalation_after <= now
            ):
                reading.overdue_level = CONTACT_TOLD
                recipient, role = self._policy.escalation_contact or "", "escalation_contact"
            else:
                return False
            session.add(reading)
            queue_reading_notification(
                session,
                study,
                NotificationKind.READING_OVERDUE,
                recipient=recipient or None,
                role=role,
                policy=self._policy,
                now=now,
                actor=OVERDUE_ACTOR,
                level=reading.overdue_level,
                escalationLevel=reading.overdue_level,
                **detail,
            )
            level = reading.overdue_level
            try:
                session.commit()
            except StaleDataError:  # claimed or assigned at this very moment: next round
                session.rollback()
                return False
        log.warning("study %d overdue for reading: step %d", study_id, level)
        return True

    def _seconds_until_next(self, now: datetime) -> float | None:
        upcoming: list[datetime] = []
        with Session(self._engine) as session:
            for priority, target in self._policy.targets.items():
                earliest = session.exec(
                    self._waiting(NOT_OVERDUE)
                    .with_only_columns(func.min(ready_time()))
                    .where(priority_of() == priority.value)
                    .order_by(None)
                ).one()
                if earliest is not None:
                    upcoming.append(earliest + target)
            review = session.exec(
                self._waiting(NOT_OVERDUE)
                .with_only_columns(func.min(StudyReading.review_due_at))
                .order_by(None)
            ).one()
            if review is not None:
                upcoming.append(review)
            told = session.exec(
                self._waiting(ASSIGNEE_TOLD)
                .with_only_columns(func.min(StudyReading.overdue_at))
                .order_by(None)
            ).one()
            if told is not None:
                upcoming.append(told + self._policy.escalation_after)
        if not upcoming:
            return None
        return max(0.0, (min(upcoming) - now).total_seconds())

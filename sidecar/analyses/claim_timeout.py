"""Claims whose performer went silent: a work item IN PROGRESS with no sign of its performer (the
claim, an update) for AI_CLAIM_TIMEOUT_MINUTES is released: SCHEDULED again for any analyzer,
its Transaction UID forgotten (the silent performer's later requests are refused), the
performer's access to the study ended, the task SCHEDULED again.

One node of the cluster does it (a leased job); the release is decided on the work item's
version, so a performer that updates or completes at that very moment keeps its claim (the
release is skipped and looked at again when due).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, func
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from sidecar.analyses.models import ENDED, Analysis, AnalysisStatus, AnalysisTask, Workitem
from sidecar.analyses.models import WorkitemState as State
from sidecar.analyses.status import refresh_status
from sidecar.analyses.workitem_states import (
    OUTPUT_INFORMATION,
    PERFORMED_PROCEDURE,
    PROGRESS_INFORMATION,
    set_state,
)
from sidecar.core import audit
from sidecar.core.background import BackgroundWorker
from sidecar.core.models import utcnow

log = logging.getLogger(__name__)

RELEASE_ACTOR = "system:claim-timeout"


def release(session: Session, workitem: Workitem, now: datetime, actor: str) -> None:
    """SCHEDULED again, for any analyzer: the claim's Transaction UID forgotten, the performer's
    access to the study ended, the task SCHEDULED; committed. Raises StaleDataError when the
    performer acted meanwhile (then its claim stands)."""
    task = session.get(AnalysisTask, workitem.task_id)
    dataset = set_state(workitem, State.SCHEDULED, now)
    dataset[PROGRESS_INFORMATION] = {"vr": "SQ"}
    dataset[PERFORMED_PROCEDURE] = {"vr": "SQ"}
    dataset.pop(OUTPUT_INFORMATION, None)
    workitem.dataset = dataset
    performer = workitem.performer_id
    workitem.transaction_uid = workitem.performer_id = None
    workitem.claimed_at = workitem.performer_seen_at = None
    session.add(workitem)
    if task is not None and task.status not in ENDED:
        task.status = AnalysisStatus.SCHEDULED
        session.add(task)
        session.flush()
        analysis = session.get(Analysis, task.analysis_id)
        if analysis is not None:
            refresh_status(session, analysis, now)
    audit.record(
        session,
        actor=actor,
        action="workitem.released",
        entity_type="workitem",
        entity_id=workitem.id,
        task_id=workitem.task_id,
        performer_id=performer,
    )
    session.commit()


class ClaimTimeout(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        timeout: timedelta,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_released: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__("workitem-claim-timeout", clock=clock, idle_poll=60.0)
        self._engine = engine
        self.timeout = timeout
        # Told the performer's user id after each release (its cached access to the study).
        self._on_released = on_released or (lambda _user_id: None)

    def run_once(self) -> float | None:
        """Releases every claim silent for the timeout; returns seconds until the next one would
        be (None: no claim is held)."""
        now = self.clock()
        with Session(self._engine) as session:
            due = session.exec(
                select(Workitem.id).where(
                    col(Workitem.state) == State.IN_PROGRESS,
                    col(Workitem.performer_seen_at) <= now - self.timeout,
                )
            ).all()
        for workitem_id in due:
            if self.stopping:
                break
            self._release(int(workitem_id or 0), now)
        with Session(self._engine) as session:
            oldest = session.exec(
                select(func.min(col(Workitem.performer_seen_at))).where(
                    col(Workitem.state) == State.IN_PROGRESS
                )
            ).one()
        if oldest is None:
            return None
        return max(1.0, (oldest + self.timeout - now).total_seconds())

    def _release(self, workitem_id: int, now: datetime) -> None:
        with Session(self._engine) as session:
            workitem = session.get(Workitem, workitem_id)
            seen = workitem.performer_seen_at if workitem is not None else None
            if workitem is None or workitem.state is not State.IN_PROGRESS or seen is None:
                return
            if seen > now - self.timeout:
                return  # a sign of life since the search
            performer = workitem.performer_id
            try:
                release(session, workitem, now, RELEASE_ACTOR)
            except StaleDataError:  # the performer acted at this very moment
                session.rollback()
                return
        log.warning("work item %d released: its performer was silent too long", workitem_id)
        if performer is not None:
            self._on_released(performer)

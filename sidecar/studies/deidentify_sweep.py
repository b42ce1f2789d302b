"""De-identified copies never left half-made: following Orthanc's job that makes a copy, and
sweeping the copies abandoned midway (the sidecar stopped while Orthanc made one, or gave up
waiting for it).

A copy still "creating" ABANDONED_AFTER its recording is abandoned. Once Orthanc's job making
it is over (asked to stop first, when it still runs), whatever Orthanc holds under the copy's
Study Instance UID is deleted and the copy is marked failed, with a reason, audited. Orthanc not
answering: the copy waits for the next sweep (never marked failed with parts of it left). The
row stays, so the registration of stable studies keeps passing over its UID: a piece arriving
late is never filed as a clinical study.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from sidecar.core import audit
from sidecar.core.background import BackgroundWorker, Clock
from sidecar.core.dependencies import provide_optional
from sidecar.core.models import utcnow
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError
from sidecar.studies.deidentification import ABANDONED_AFTER, CopyStatus, DeidentifiedCopy

log = logging.getLogger(__name__)

SWEEP_ACTOR = "deidentification-sweep"
#: Orthanc's job states of a job not over yet (it may still write).
UNFINISHED_JOB_STATES = frozenset({"Pending", "Running", "Paused", "Retry"})
ABANDONED_REASON = "abandoned: the sidecar stopped or gave up before Orthanc finished the copy"


def wait_for_job(orthanc: OrthancClient, job_id: str, *, timeout: float) -> dict[str, Any] | None:
    """Orthanc's job once it is over (State Success or Failure; {"State": "Unknown"} when
    Orthanc forgot it); None when `timeout` seconds pass first. OrthancError: Orthanc stopped
    answering meanwhile."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        job = orthanc.job(job_id)
        if job is None:
            return {"State": "Unknown"}
        if job.get("State") not in UNFINISHED_JOB_STATES:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(pause, left))
        pause = min(pause * 2, 1.0)


def sweep_abandoned(session: Session, orthanc: OrthancClient, *, now: datetime) -> int:
    """Sweeps every abandoned copy whose Orthanc job is over; asks Orthanc to stop the jobs
    still running (swept on a later round). The number still waiting. OrthancError: Orthanc
    stopped answering; the copy it was sweeping is left as it was, for the next round."""
    abandoned = session.exec(
        select(DeidentifiedCopy)
        .where(
            DeidentifiedCopy.status == CopyStatus.CREATING,
            col(DeidentifiedCopy.created_at) <= now - ABANDONED_AFTER,
        )
        .order_by(col(DeidentifiedCopy.id))
    ).all()
    waiting = 0
    for copy in abandoned:
        if not _sweep(session, orthanc, copy):
            waiting += 1
    return waiting


def _sweep(session: Session, orthanc: OrthancClient, copy: DeidentifiedCopy) -> bool:
    if copy.orthanc_job_id:
        job = orthanc.job(copy.orthanc_job_id)
        if job is not None and job.get("State") in UNFINISHED_JOB_STATES:
            orthanc.cancel_job(copy.orthanc_job_id)
            return False  # Orthanc may still write: deleted once its job is over
    deleted = 0
    for orthanc_id in orthanc.studies_with_uid(copy.study_instance_uid):
        orthanc.delete_study(orthanc_id)
        deleted += 1
    copy.status = CopyStatus.FAILED
    copy.failure_reason = copy.failure_reason or ABANDONED_REASON
    session.add(copy)
    audit.record(
        session,
        actor=SWEEP_ACTOR,
        action="study.deidentification_abandoned",
        entity_type="study",
        entity_id=copy.source_study_id,
        copy_id=copy.id,
        orthanc_studies_deleted=deleted,
        reason=copy.failure_reason,
    )
    session.commit()
    log.info(
        "de-identified copy %s of study %s abandoned: %d Orthanc studies of it deleted",
        copy.id,
        copy.source_study_id,
        deleted,
    )
    return True


@dataclass(frozen=True)
class CopyBacklog:
    creating: int  # being made, or abandoned and not swept yet
    abandoned: int  # waiting for the sweep (alert when it stays above zero)


def backlog(session: Session, *, now: datetime) -> CopyBacklog:
    creating = DeidentifiedCopy.status == CopyStatus.CREATING
    old = col(DeidentifiedCopy.created_at) <= now - ABANDONED_AFTER
    count = select(func.count()).select_from(DeidentifiedCopy)
    return CopyBacklog(
        creating=session.exec(count.where(creating)).one(),
        abandoned=session.exec(count.where(creating, old)).one(),
    )


class DeidentificationSweep(BackgroundWorker):
    """Sweeps abandoned copies at start and then as each copy being made becomes abandoned;
    every `retry` seconds while Orthanc fails or a job is still being stopped."""

    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        clock: Clock = utcnow,
        idle_poll: float = 300.0,
        retry: float = 60.0,
    ) -> None:
        super().__init__("deidentification-sweep", clock=clock, idle_poll=idle_poll)
        self._engine = engine
        self._orthanc = orthanc
        self._retry = retry
        self.last_error: str | None = None

    def run_once(self) -> float | None:
        now = self.clock()
        with Session(self._engine) as session:
            try:
                waiting = sweep_abandoned(session, self._orthanc, now=now)
            except OrthancError as exc:
                session.rollback()
                self.last_error = str(exc)
                log.warning("de-identified copies not swept, Orthanc failing: %s", exc)
                return self._retry
            self.last_error = None
            if waiting:
                return self._retry
            oldest = session.exec(
                select(DeidentifiedCopy.created_at)
                .where(DeidentifiedCopy.status == CopyStatus.CREATING)
                .order_by(col(DeidentifiedCopy.created_at))
                .limit(1)
            ).first()
        if oldest is None:
            return None
        return max(1.0, (oldest + ABANDONED_AFTER - now).total_seconds())


DeidentificationSweepDep = Annotated[
    DeidentificationSweep | None, Depends(provide_optional(DeidentificationSweep))
]

"""De-identified copies never left half-made: following Orthanc's job that makes a copy, and
sweeping the copies abandoned midway (the sidecar stopped while Orthanc made one, or gave up
waiting for it).

A copy still "creating" ABANDONED_AFTER its recording is abandoned. Once Orthanc's job making
it is over (asked to stop first, when it still runs), whatever Orthanc holds under the copy's
Study Instance UID is deleted and the copy is marked failed, with a reason, audited. Orthanc not
answering: the copy waits for the next sweep (never marked failed with parts of it left). The
row stays, so the registration of stable studies keeps passing over its UID: a piece arriving
late is never filed as a clinical study.

Orthanc's jobs are each Orthanc's own: in a cluster (sidecar.core.cluster) another node's
Orthanc does not know them, and answers as for a job over. Every node sweeps, so each follows
only the jobs of its own Orthanc (the copy's `orthanc_node`; copies recorded before clusters
have none, and are anyone's); the copy of another node is left to it while that node is alive,
and swept by whichever node comes first once it is gone (its job gone with it), deleting what
was written through this node's Orthanc, which shares the index and storage. The copy's row is
locked while it is swept, so two nodes never both mark and audit it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from sidecar.core import audit
from sidecar.core.background import BackgroundWorker, Clock
from sidecar.core.cluster_models import live_nodes
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


def sweep_abandoned(
    session: Session,
    orthanc: OrthancClient,
    *,
    now: datetime,
    node_name: str,
    alive: Collection[str],
) -> int:
    """Sweeps every abandoned copy whose Orthanc job is over: this node's (`node_name`) once its
    Orthanc says so, asked to stop first when it still runs; another node's once that node is
    not among the `alive` ones. The number still waiting (a job being stopped, a live node's
    copy, a copy another node is sweeping). OrthancError: Orthanc stopped answering; the copy
    it was sweeping is left as it was, for the next round."""
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
        if not _sweep(session, orthanc, copy, node_name=node_name, alive=alive):
            waiting += 1
    return waiting


def _sweep(
    session: Session,
    orthanc: OrthancClient,
    copy: DeidentifiedCopy,
    *,
    node_name: str,
    alive: Collection[str],
) -> bool:
    """True when the copy needs nothing more from this sweep (swept here, or meanwhile)."""
    if copy.orthanc_node in (None, node_name):
        if copy.orthanc_job_id:
            job = orthanc.job(copy.orthanc_job_id)
            if job is not None and job.get("State") in UNFINISHED_JOB_STATES:
                orthanc.cancel_job(copy.orthanc_job_id)
                return False  # Orthanc may still write: deleted once its job is over
    elif copy.orthanc_node in alive:
        return False  # its node follows its job (this Orthanc does not know it)
    copy_id = copy.id
    # Locked, and read again: another node may have swept it since it was listed, or be
    # sweeping it now (SQLite, one node: no lock, none needed).
    current = session.exec(
        select(DeidentifiedCopy)
        .where(DeidentifiedCopy.id == copy_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    if current is None:
        return False  # being swept by another node: seen again on a later round
    if current.status is not CopyStatus.CREATING:
        session.rollback()
        return True
    deleted = 0
    for orthanc_id in orthanc.studies_with_uid(current.study_instance_uid):
        orthanc.delete_study(orthanc_id)
        deleted += 1
    current.status = CopyStatus.FAILED
    current.failure_reason = current.failure_reason or ABANDONED_REASON
    session.add(current)
    audit.record(
        session,
        actor=SWEEP_ACTOR,
        action="study.deidentification_abandoned",
        entity_type="study",
        entity_id=current.source_study_id,
        copy_id=current.id,
        orthanc_studies_deleted=deleted,
        reason=current.failure_reason,
    )
    source_study_id, copy_node = current.source_study_id, current.orthanc_node
    session.commit()
    log.info(
        "de-identified copy %s of study %s abandoned (its job on node %s): %d Orthanc studies"
        " of it deleted",
        copy_id,
        source_study_id,
        copy_node or "unrecorded",
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
    every `retry` seconds while Orthanc fails, a job is still being stopped or a copy is
    another live node's. This node is `node_name` (NODE_NAME); another node is taken for gone
    once it has not written its heartbeat for `node_gone_after` seconds."""

    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        node_name: str,
        node_gone_after: float,
        clock: Clock = utcnow,
        idle_poll: float = 300.0,
        retry: float = 60.0,
    ) -> None:
        super().__init__("deidentification-sweep", clock=clock, idle_poll=idle_poll)
        self._engine = engine
        self._orthanc = orthanc
        self._retry = retry
        self._node_name = node_name
        self._node_gone_after = timedelta(seconds=node_gone_after)
        self.last_error: str | None = None

    def run_once(self) -> float | None:
        now = self.clock()
        with Session(self._engine) as session:
            try:
                waiting = sweep_abandoned(
                    session,
                    self._orthanc,
                    now=now,
                    node_name=self._node_name,
                    alive=live_nodes(session, self._node_gone_after),
                )
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

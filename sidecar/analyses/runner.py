"""The runner: performs the tasks of the analyzers that run inside the sidecar (built in, ONNX).

Every node runs one, each taking one task at a time: a SCHEDULED task, or one whose hold has
lapsed (its node was killed mid-analysis, or it is waiting to be tried again), is taken with an
optimistic update of its version (two nodes cannot both take it) and held for HOLD, the hold
renewed while the images are read. The study's images are read from Orthanc one at a time and
handed to the analyzer (only their headers are kept, for the report); the findings are written
as a DICOM Structured Report (sidecar.analyses.structured_report) stored in the study in
Orthanc, and only then is the task COMPLETED with its findings (sidecar.analyses.status).

A failure that may pass (Orthanc unreachable, say) is tried again after a delay, up to
MAX_ATTEMPTS takes; one that will not (the analyzer says the study cannot be analysed, the study
is gone) fails the task at once, with the reason. A node killed after storing the report but
before recording it leaves the task to be taken again: the study then holds two reports of it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import pydicom
from fastapi import Depends
from pydicom import Dataset
from sqlalchemy import Engine, case, or_
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, func, select

from sidecar.analyses import status
from sidecar.analyses.analyzers import AnalyzerRegistry
from sidecar.analyses.findings import (
    AnalysisError,
    Analyzer,
    AnalyzerFinding,
    Severity,
)
from sidecar.analyses.models import (
    ENDED,
    Analysis,
    AnalysisPriority,
    AnalysisStatus,
    AnalysisTask,
    AnalyzerKind,
)
from sidecar.analyses.service import images_problem
from sidecar.analyses.structured_report import build_report
from sidecar.analyses.study_input import study_context, study_images
from sidecar.core import audit
from sidecar.core.background import BackgroundWorker, backoff_delay
from sidecar.core.dependencies import provide
from sidecar.core.models import utcnow
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError, OrthancNotFound
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

RUNNER_ACTOR = "system:ai-runner"
HOLD = timedelta(minutes=5)
MAX_ATTEMPTS = 3
_IN_PROCESS = (AnalyzerKind.BUILT_IN, AnalyzerKind.ONNX)
_RANK = case(
    (col(Analysis.priority) == AnalysisPriority.HIGH.value, 0),
    (col(Analysis.priority) == AnalysisPriority.MEDIUM.value, 1),
    else_=2,
)

ReportBuilder = Callable[..., Dataset]


class _Abandoned(BaseException):
    """The task is no longer this node's (taken by another after its hold lapsed, or ended),
    or the runner is stopping: leave it. Not an Exception: raised while the analyzer reads the
    images, it must pass through the analyzer's own error handling untouched."""

    def __init__(self, stopping: bool) -> None:
        super().__init__("stopping" if stopping else "the task is no longer held here")
        self.stopping = stopping


class _Fails(Exception):
    """The task fails now, whatever attempt it is: the message says why."""


@dataclass
class _Held:
    task_id: int
    version: int
    analyzer: Analyzer
    attempts: int


class AnalysisRunner(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        registry: AnalyzerRegistry,
        *,
        review_after: timedelta,
        clock: Callable[[], datetime] = utcnow,
        on_review_requested: Callable[[], None] | None = None,
        report_builder: ReportBuilder = build_report,
        hold: timedelta = HOLD,
        max_attempts: int = MAX_ATTEMPTS,
        retry_after: float = 30.0,
    ) -> None:
        super().__init__("analysis-runner", clock=clock, idle_poll=15.0)
        self._engine = engine
        self._orthanc = orthanc
        self._registry = registry
        self._review_after = review_after
        self._on_review_requested = on_review_requested or (lambda: None)
        self._build_report = report_builder
        self._hold = hold
        self._max_attempts = max_attempts
        self._retry_after = retry_after

    def run_once(self) -> float | None:
        """Performs one task, if one is waiting (0: look for the next at once); else the
        seconds until a held task's hold lapses (None: nothing is waiting)."""
        now = self.clock()
        held = self._take(now)
        if held is None:
            return self._seconds_until_next(now)
        self._perform(held)
        return 0.0

    # -- taking a task -------------------------------------------------------------------------

    def _take(self, now: datetime) -> _Held | None:
        with Session(self._engine) as session:
            candidates = session.exec(
                select(AnalysisTask.id)
                .join(Analysis, col(Analysis.id) == col(AnalysisTask.analysis_id))
                .where(col(AnalysisTask.kind).in_(_IN_PROCESS), self._waiting(now))
                .order_by(_RANK, col(AnalysisTask.id))
                .limit(20)
            ).all()
        for task_id in candidates:
            if self.stopping:
                return None
            held = self._try_take(task_id or 0, now)
            if held is not None:
                return held
        return None

    @staticmethod
    def _waiting(now: datetime) -> Any:
        lapsed = (col(AnalysisTask.status) == AnalysisStatus.IN_PROGRESS) & or_(
            col(AnalysisTask.held_until).is_(None), col(AnalysisTask.held_until) <= now
        )
        return or_(col(AnalysisTask.status) == AnalysisStatus.SCHEDULED, lapsed)

    def _try_take(self, task_id: int, now: datetime) -> _Held | None:
        with Session(self._engine) as session:
            task = session.get(AnalysisTask, task_id)
            if (
                task is None
                or not session.exec(
                    select(AnalysisTask.id).where(AnalysisTask.id == task_id, self._waiting(now))
                ).first()
            ):
                return None  # taken or ended meanwhile
            found = self._registry.find(task.analyzer)
            try:
                if found is None or found.analyzer is None:
                    self._end(session, task, f"analyzer {task.analyzer} is not registered", now)
                    return None
                if task.attempts >= self._max_attempts:
                    # Its node stopped mid-analysis each time (killed, out of memory): a study
                    # that kills its node would otherwise take one down every HOLD, forever.
                    reason = (
                        f"not finished in {task.attempts} attempts: the node performing it"
                        " stopped each time (killed, or out of memory)"
                    )
                    self._end(session, task, reason, now)
                    return None
                task.attempts += 1
                task.held_until = now + self._hold
                status.start_task(session, task, now)
                session.commit()
            except StaleDataError:  # another node took it at this very moment
                session.rollback()
                return None
            log.info("analysis task %d taken, attempt %d", task_id, task.attempts)
            return _Held(task_id, task.version, found.analyzer, task.attempts)

    def _seconds_until_next(self, now: datetime) -> float | None:
        with Session(self._engine) as session:
            upcoming = session.exec(
                select(func.min(AnalysisTask.held_until)).where(
                    col(AnalysisTask.kind).in_(_IN_PROCESS),
                    col(AnalysisTask.status) == AnalysisStatus.IN_PROGRESS,
                    col(AnalysisTask.held_until) > now,
                )
            ).one()
        return None if upcoming is None else max(0.0, (upcoming - now).total_seconds())

    # -- performing it -------------------------------------------------------------------------

    def _perform(self, held: _Held) -> None:
        try:
            findings, report = self._analyse(held)
            self._store_and_complete(held, findings, report)
        except _Abandoned as abandoned:
            if abandoned.stopping:
                self._release(held, given_back=True)
            log.info("analysis task %d left: %s", held.task_id, abandoned)
        except _Fails as failure:
            self._fail(held, str(failure))
        except AnalysisError as refused:
            self._fail(held, str(refused) or "the analyzer could not analyse the study")
        except Exception as exc:  # Orthanc down, a bug: tried again, a few times
            reason = _reason(exc)
            if held.attempts >= self._max_attempts:
                self._fail(held, f"failed {held.attempts} times, the last: {reason}")
            else:
                log.warning("analysis task %d failed (%s); trying again", held.task_id, reason)
                self._release(held, backoff_delay(held.attempts, cap=600, first=self._retry_after))

    def _analyse(self, held: _Held) -> tuple[list[AnalyzerFinding], Dataset]:
        with Session(self._engine) as session:
            task = session.get(AnalysisTask, held.task_id)
            analysis = session.get(Analysis, task.analysis_id) if task else None
            study = session.get(Study, analysis.study_id) if analysis else None
            if task is None or study is None:
                raise _Abandoned(stopping=False)
            if (problem := images_problem(study)) is not None or study.removed_at is not None:
                raise _Fails(problem or f"study {study.id} was removed")
            context = study_context(session, study)
            orthanc_id, analyzer_name = study.orthanc_id or "", task.analyzer
        headers: list[Dataset] = []
        renewed = time.monotonic()

        def before_each() -> None:
            nonlocal renewed
            if self.stopping:
                raise _Abandoned(stopping=True)
            if time.monotonic() - renewed > self._hold.total_seconds() / 3:
                self._renew(held)
                renewed = time.monotonic()

        images = study_images(self._orthanc, orthanc_id, headers, before_each)
        try:
            findings = list(held.analyzer.analyze(images, context))
        except OrthancNotFound:
            raise _Fails("the study's images are no longer in Orthanc") from None
        finally:
            images.close()
        if not headers:
            raise _Fails("the study holds no images to analyse")
        try:
            report = self._build_report(
                findings,
                headers,
                analyzer_name=analyzer_name,
                analyzer_version=held.analyzer.version,
            )
        except ValueError as exc:
            raise _Fails(f"the analyzer's findings cannot be written as a report: {exc}") from exc
        return findings, report

    def _renew(self, held: _Held) -> None:
        with Session(self._engine) as session:
            task = session.get(AnalysisTask, held.task_id)
            if task is None or task.version != held.version or task.status in ENDED:
                raise _Abandoned(stopping=False)
            task.held_until = self.clock() + self._hold
            session.add(task)
            try:
                session.commit()
            except StaleDataError:
                raise _Abandoned(stopping=False) from None
            held.version = task.version

    def _store_and_complete(
        self, held: _Held, findings: Sequence[AnalyzerFinding], report: Dataset
    ) -> None:
        self._renew(held)  # still ours: the report goes into the study
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        self._orthanc.store_instance(buffer.getvalue())
        report_uid = str(report.SOPInstanceUID)
        for _ in range(3):  # a reading row changed at the same moment: recorded again
            now = self.clock()
            with Session(self._engine) as session:
                task = session.get(AnalysisTask, held.task_id)
                if task is None or task.version != held.version:
                    raise _Abandoned(stopping=False)
                rows = status.complete_task(
                    session, task, findings, report_uid, now, review_after=self._review_after
                )
                audit.record(
                    session,
                    actor=RUNNER_ACTOR,
                    action="analysis.task_completed",
                    entity_type="analysis",
                    entity_id=task.analysis_id,
                    task_id=task.id,
                    analyzer=task.analyzer,
                    findings=len(rows),
                    report_sop_instance_uid=report_uid,
                )
                critical = any(row.severity == Severity.CRITICAL.value for row in rows)
                try:
                    session.commit()
                except StaleDataError:
                    session.rollback()
                    continue
            log.info("analysis task %d completed: %d findings", held.task_id, len(rows))
            if critical:
                self._on_review_requested()
            return
        raise RuntimeError("the task's results could not be recorded")

    def _release(self, held: _Held, delay: float = 0.0, *, given_back: bool = False) -> None:
        """Lets the task be taken again after `delay` seconds (by any node); `given_back`: its
        node is stopping in good order, which is no attempt of the study's."""
        with Session(self._engine) as session:
            task = session.get(AnalysisTask, held.task_id)
            if task is None or task.version != held.version:
                return
            task.held_until = self.clock() + timedelta(seconds=delay)
            if given_back:
                task.attempts = max(task.attempts - 1, 0)
            session.add(task)
            try:
                session.commit()
            except StaleDataError:
                session.rollback()

    def _fail(self, held: _Held, reason: str) -> None:
        with Session(self._engine) as session:
            task = session.get(AnalysisTask, held.task_id)
            if task is None or task.version != held.version:
                return
            try:
                self._end(session, task, reason, self.clock())
            except StaleDataError:
                session.rollback()
                return
        log.warning("analysis task %d failed", held.task_id)

    @staticmethod
    def _end(session: Session, task: AnalysisTask, reason: str, now: datetime) -> None:
        status.end_task(session, task, AnalysisStatus.FAILED, reason, now)
        audit.record(
            session,
            actor=RUNNER_ACTOR,
            action="analysis.task_failed",
            entity_type="analysis",
            entity_id=task.analysis_id,
            task_id=task.id,
            analyzer=task.analyzer,
            attempts=task.attempts,
        )
        session.commit()


def _reason(exc: Exception) -> str:
    """Why an attempt failed, for the requester: Orthanc's errors name paths and ids only; of
    anything else, its kind."""
    return str(exc)[:300] if isinstance(exc, OrthancError) else type(exc).__name__


AnalysisRunnerDep = Annotated[AnalysisRunner, Depends(provide(AnalysisRunner))]

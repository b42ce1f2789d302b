"""How an analysis' status follows its tasks, and what recording a task's results does: the one
place both the in-process runner and a completed UPS work item go through."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from sidecar.analyses.findings import AnalyzerFinding
from sidecar.analyses.models import (
    ENDED,
    Analysis,
    AnalysisFinding,
    AnalysisStatus,
    AnalysisTask,
)
from sidecar.analyses.review import ask_for_review


def status_of(tasks: Sequence[AnalysisTask]) -> AnalysisStatus:
    """SCHEDULED until a task starts; IN_PROGRESS while any task is not over; once all are
    over: FAILED if one failed, else CANCELED if one was canceled, else COMPLETED."""
    states = {task.status for task in tasks}
    if not states or states == {AnalysisStatus.SCHEDULED}:
        return AnalysisStatus.SCHEDULED
    if not states <= set(ENDED):
        return AnalysisStatus.IN_PROGRESS
    for ended in (AnalysisStatus.FAILED, AnalysisStatus.CANCELED):
        if ended in states:
            return ended
    return AnalysisStatus.COMPLETED


def refresh_status(session: Session, analysis: Analysis, now: datetime) -> None:
    """Sets the analysis' status (and its start and end) from its tasks, in the session."""
    tasks = session.exec(
        select(AnalysisTask).where(col(AnalysisTask.analysis_id) == analysis.id)
    ).all()
    status = status_of(tasks)
    if status != AnalysisStatus.SCHEDULED and analysis.started_at is None:
        analysis.started_at = now
    if status in ENDED and analysis.ended_at is None:
        analysis.ended_at = now
    analysis.status = status
    session.add(analysis)


def finding_rows(
    task: AnalysisTask, study_id: int, findings: Sequence[AnalyzerFinding]
) -> list[AnalysisFinding]:
    """The rows of a task's findings, as its Structured Report holds them."""
    rows = []
    for found in findings:
        image, box = found.image, found.box
        rows.append(
            AnalysisFinding(
                analysis_id=task.analysis_id,
                task_id=task.id or 0,
                study_id=study_id,
                model=found.model[:64],
                finding=found.finding[:256],
                confidence=min(max(found.confidence, 0.0), 1.0),
                severity=found.severity.value,
                recommendation=found.recommendation[:256],
                series_instance_uid=image.series_instance_uid if image else None,
                sop_instance_uid=image.sop_instance_uid if image else None,
                sop_class_uid=image.sop_class_uid if image else None,
                frame=image.frame if image else None,
                x=box.x if box else None,
                y=box.y if box else None,
                width=box.width if box else None,
                height=box.height if box else None,
            )
        )
    return rows


def complete_task(
    session: Session,
    task: AnalysisTask,
    findings: Sequence[AnalyzerFinding],
    report_sop_instance_uid: str,
    now: datetime,
    *,
    review_after: timedelta,
) -> list[AnalysisFinding]:
    """A task's results are stored in the study (the Structured Report `report_sop_instance_uid`):
    its findings recorded, the task COMPLETED, the analysis' status refreshed. A critical
    finding raises the study to STAT, due for review `review_after` (AI_REVIEW_MINUTES) from
    `now` (sidecar.analyses.review); it raises no critical finding. In the caller's
    transaction; the caller audits the completion."""
    analysis = _analysis_of(session, task)
    rows = finding_rows(task, analysis.study_id, findings)
    session.add_all(rows)
    task.status = AnalysisStatus.COMPLETED
    task.report_sop_instance_uid = report_sop_instance_uid
    task.held_until = None
    task.ended_at = now
    session.add(task)
    session.flush()
    refresh_status(session, analysis, now)
    assert analysis.id is not None
    ask_for_review(
        session, analysis.study_id, analysis.id, rows, now=now, review_after=review_after
    )
    return rows


def end_task(
    session: Session, task: AnalysisTask, status: AnalysisStatus, reason: str, now: datetime
) -> None:
    """A task FAILED or CANCELED, with why (no patient data); the analysis' status refreshed."""
    if status not in (AnalysisStatus.FAILED, AnalysisStatus.CANCELED):
        raise ValueError(f"a task ends FAILED or CANCELED, not {status}")
    analysis = _analysis_of(session, task)
    task.status = status
    task.reason = reason[:512]
    task.held_until = None
    task.ended_at = now
    session.add(task)
    session.flush()
    refresh_status(session, analysis, now)


def start_task(session: Session, task: AnalysisTask, now: datetime) -> None:
    """A task IN_PROGRESS (claimed by its analyzer); the analysis' status refreshed."""
    analysis = _analysis_of(session, task)
    task.status = AnalysisStatus.IN_PROGRESS
    task.started_at = task.started_at or now
    session.add(task)
    session.flush()
    refresh_status(session, analysis, now)


def _analysis_of(session: Session, task: AnalysisTask) -> Analysis:
    analysis = session.get(Analysis, task.analysis_id)
    if analysis is None:  # a task belongs to its analysis (foreign key)
        raise LookupError(f"analysis {task.analysis_id} of task {task.id} not found")
    return analysis

"""Analyses as the API shows them (seed 002's shape), read in a few queries whatever the page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, func, select

from sidecar.accounts.models import User
from sidecar.analyses.api_models import (
    AnalysisDetail,
    AnalysisSummary,
    Coordinates,
    FindingPublic,
    ReviewPublic,
    TaskPublic,
)
from sidecar.analyses.findings import Severity
from sidecar.analyses.models import Analysis, AnalysisFinding, AnalysisTask
from sidecar.core.pagination import Pagination, page


def public_finding(finding: AnalysisFinding, reviewer: str | None) -> FindingPublic:
    assert finding.id is not None
    coordinates = None
    box = (finding.x, finding.y, finding.width, finding.height)
    if finding.sop_instance_uid and None not in box:
        coordinates = Coordinates(
            x=finding.x or 0.0,
            y=finding.y or 0.0,
            width=finding.width or 0.0,
            height=finding.height or 0.0,
            image_id=finding.sop_instance_uid,
            series_instance_uid=finding.series_instance_uid,
            frame=finding.frame,
        )
    review = None
    if finding.decision is not None:
        review = ReviewPublic(
            decision=finding.decision.value.lower(),
            reviewed_by=reviewer,
            reviewed_at=finding.reviewed_at,
            note=finding.review_note,
        )
    return FindingPublic(
        id=finding.id,
        model=finding.model,
        confidence=finding.confidence,
        finding=finding.finding,
        severity=Severity(finding.severity),
        recommendation=finding.recommendation,
        image_id=finding.sop_instance_uid,
        series_instance_uid=finding.series_instance_uid,
        frame=finding.frame,
        coordinates=coordinates,
        review=review,
    )


def findings_of(session: Session, analysis_id: int) -> list[FindingPublic]:
    """The analysis' findings with their review, the most severe first, then as recorded."""
    rows = session.exec(
        select(AnalysisFinding, User.username)
        .outerjoin(User, col(User.id) == col(AnalysisFinding.reviewed_by_id))
        .where(AnalysisFinding.analysis_id == analysis_id)
        .order_by(col(AnalysisFinding.id))
    ).all()
    order = {severity.value: rank for rank, severity in enumerate(reversed(Severity))}
    found = [public_finding(finding, reviewer) for finding, reviewer in rows]
    return sorted(found, key=lambda f: order.get(f.severity.value, len(order)))


def finding_of(session: Session, finding: AnalysisFinding) -> FindingPublic:
    reviewer = session.get(User, finding.reviewed_by_id) if finding.reviewed_by_id else None
    return public_finding(finding, reviewer.username if reviewer else None)


def summaries(session: Session, analyses: Sequence[Analysis]) -> list[AnalysisSummary]:
    ids = [analysis.id for analysis in analyses]
    tasks: dict[int, list[TaskPublic]] = defaultdict(list)
    for task in session.exec(
        select(AnalysisTask)
        .where(col(AnalysisTask.analysis_id).in_(ids))
        .order_by(col(AnalysisTask.id))
    ).all():
        tasks[task.analysis_id].append(TaskPublic.model_validate(task))
    counts = dict(
        session.exec(
            select(AnalysisFinding.analysis_id, func.count())
            .where(col(AnalysisFinding.analysis_id).in_(ids))
            .group_by(col(AnalysisFinding.analysis_id))
        ).all()
    )
    return [
        AnalysisSummary(
            analysis_id=analysis.id or 0,
            study_id=analysis.study_id,
            status=analysis.status,
            priority=analysis.priority.value.lower(),
            requested_by=analysis.requested_by,
            requested_at=analysis.created_at,
            started_at=analysis.started_at,
            completed_at=analysis.ended_at,
            tasks=tasks[analysis.id or 0],
            finding_count=int(counts.get(analysis.id or 0, 0)),
        )
        for analysis in analyses
    ]


def analysis_detail(session: Session, analysis: Analysis) -> AnalysisDetail:
    summary = summaries(session, [analysis])[0]
    return AnalysisDetail(**summary.model_dump(), findings=findings_of(session, analysis.id or 0))


def study_analyses(session: Session, study_id: int, pagination: Pagination) -> dict[str, Any]:
    """The study's analyses, the newest first."""
    total = session.exec(
        select(func.count()).select_from(Analysis).where(Analysis.study_id == study_id)
    ).one()
    rows = session.exec(
        select(Analysis)
        .where(Analysis.study_id == study_id)
        .order_by(col(Analysis.created_at).desc(), col(Analysis.id).desc())
        .offset(pagination.offset)
        .limit(pagination.limit)
    ).all()
    return page(summaries(session, rows), total, pagination)

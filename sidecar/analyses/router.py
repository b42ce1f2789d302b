"""AI analyses (seed 002 paths): asking for one, reading it with its findings, a study's
analyses, and a radiologist's review of a finding.

Roles: radiologists and administrators ask for and read analyses, within their care scope (a
study out of it answers 404, as one that does not exist); a finding is reviewed by a
radiologist, whose clinical decision it is. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.analyses import review, service, views
from sidecar.analyses.analyzers import AnalyzerRegistryDep
from sidecar.analyses.api_models import (
    AnalysisAccepted,
    AnalysisDetail,
    AnalysisRequest,
    AnalysisSummary,
    FindingPublic,
    ReviewRequest,
)
from sidecar.analyses.models import Analysis, AnalysisFinding, ReviewDecision
from sidecar.analyses.runner import AnalysisRunnerDep
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId
from sidecar.studies.lookup import listed_studies, readable_study
from sidecar.studies.models import Study

router = APIRouter(tags=["analyses"])

AnalysisReader = Annotated[User, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
Reviewer = Annotated[User, Depends(require_roles(Role.RADIOLOGIST))]


@router.post(
    "/api/v1/imaging/analyze/{study_id}",
    response_model=AnalysisAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
def analyze_study(
    study_id: RecordId,
    body: AnalysisRequest,
    session: SessionDep,
    user: AnalysisReader,
    scope: CareScopeDep,
    registry: AnalyzerRegistryDep,
    runner: AnalysisRunnerDep,
    clock: ClockDep,
) -> AnalysisAccepted:
    """Asks each analyzer of `models` (by name, each once) to analyse the study's images. An
    unknown or refused model answers 422 naming it, as a study whose images are not stored
    yet does. The answer comes at once; follow the analysis with GET /api/analyses/{id}."""
    study = readable_study(session, study_id, scope)
    analysis = service.request_analysis(
        session,
        study,
        body.models,
        priority=body.analysis_priority,
        requested_by=user.username,
        registry=registry,
        now=clock(),
    )
    session.commit()
    runner.wake()
    return AnalysisAccepted(
        analysis_id=analysis.id or 0, study_id=analysis.study_id, status=analysis.status
    )


@router.get("/api/analyses/{analysis_id}", response_model=AnalysisDetail)
def get_analysis(
    analysis_id: RecordId, session: SessionDep, _: AnalysisReader, scope: CareScopeDep
) -> AnalysisDetail:
    """The analysis with its tasks (one per analyzer) and findings, the most severe first."""
    return views.analysis_detail(session, _readable_analysis(session, analysis_id, scope))


@router.get("/api/studies/{study_id}/analyses", response_model=Page[AnalysisSummary])
def list_study_analyses(
    study_id: RecordId,
    session: SessionDep,
    _: AnalysisReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    """The study's analyses, the newest first, each with its tasks and how many findings."""
    readable_study(session, study_id, scope)
    return views.study_analyses(session, study_id, pagination)


@router.post(
    "/api/analyses/{analysis_id}/findings/{finding_id}/review", response_model=FindingPublic
)
def review_finding(
    analysis_id: RecordId,
    finding_id: RecordId,
    body: ReviewRequest,
    session: SessionDep,
    user: Reviewer,
    scope: CareScopeDep,
    clock: ClockDep,
) -> FindingPublic:
    """Accepts or rejects an AI finding. The same decision again answers the review already
    recorded; the other one answers 409 (a finding is reviewed once)."""
    analysis = _readable_analysis(session, analysis_id, scope)
    finding = session.get(AnalysisFinding, finding_id)
    if finding is None or finding.analysis_id != analysis.id:
        raise UnknownRecord(f"finding {finding_id} of analysis {analysis_id} not found")
    decision = ReviewDecision(body.decision.upper())
    review.review_finding(session, finding, decision, body.note, reviewer=user, now=clock())
    session.commit()
    session.refresh(finding)
    return views.finding_of(session, finding)


def _readable_analysis(session: Session, analysis_id: int, scope: CareScope) -> Analysis:
    """The analysis, when the caller may read its study; 404 otherwise, as for one that does
    not exist (the answer names no study)."""
    found = session.exec(
        select(Analysis)
        .join(Study, Study.id == Analysis.study_id)  # type: ignore[arg-type]
        .where(Analysis.id == analysis_id, listed_studies(), *scope.studies())
    ).first()
    if found is None:
        raise UnknownRecord(f"analysis {analysis_id} not found")
    return found

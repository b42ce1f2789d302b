"""Critical findings (seed 001 paths), their acknowledgement and time-to-acknowledge metrics.

Roles:
- raise: radiologists;
- read: admin, radiologist, technologist, physician; a physician sees only the findings they
  were notified of (as ordering provider or escalation contact, by their provider id);
- change: the radiologist who raised the finding (text and severity, before acknowledgement;
  RESOLVED after); an administrator may only resolve;
- acknowledge: a physician the finding was sent to, or a radiologist recording a verbal
  hand-over (PHONE or IN_PERSON, read back, naming the receiver) on their behalf;
- metrics: admin, radiologist (quality review).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from sqlmodel import Session, col

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.models import Page, SupportedTime
from sidecar.core.pagination import Pagination, PaginationDep, RecordId, paginate
from sidecar.findings import service as findings
from sidecar.findings.escalation import FindingWorkers, FindingWorkersDep
from sidecar.findings.metrics import finding_metrics
from sidecar.findings.models import (
    UNACKNOWLEDGED,
    CriticalFinding,
    FindingAcknowledge,
    FindingCreate,
    FindingDetail,
    FindingMetrics,
    FindingPublic,
    FindingStatus,
    FindingUpdate,
    NotificationPublic,
    Severity,
)
from sidecar.findings.policy import FindingPolicyDep
from sidecar.studies.lookup import get_study_or_404

router = APIRouter(prefix="/api/critical-findings", tags=["critical findings"])

_R = Role
Radiologist = Annotated[User, Depends(require_roles(_R.RADIOLOGIST))]
FindingReader = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST, _R.PHYSICIAN))
]
FindingEditor = Annotated[User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST))]
Acknowledger = Annotated[User, Depends(require_roles(_R.PHYSICIAN, _R.RADIOLOGIST))]
QualityReviewer = Annotated[User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST))]


@router.post("", response_model=FindingDetail, status_code=status.HTTP_201_CREATED)
def raise_finding(
    body: FindingCreate,
    session: SessionDep,
    user: Radiologist,
    policy: FindingPolicyDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
) -> dict[str, Any]:
    """Raises a finding on a study (and its report); the ordering provider is notified."""
    study = get_study_or_404(session, body.study_id)  # not one removed with its images
    finding = findings.raise_finding(
        session,
        study,
        user,
        body.model_dump(exclude_unset=True),
        policy,
        now=clock(),
    )
    return _commit(session, finding, workers)


@router.get("", response_model=Page[FindingPublic])
def list_findings(
    session: SessionDep,
    _: FindingReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
    finding_status: Annotated[FindingStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
) -> dict[str, Any]:
    conditions = []
    if finding_status is not None:
        conditions.append(CriticalFinding.status == finding_status)
    if severity is not None:
        conditions.append(CriticalFinding.severity == severity)
    return _page(session, scope, conditions, pagination)


@router.get("/pending", response_model=Page[FindingPublic])
def list_pending(
    session: SessionDep,
    _: FindingReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
    severity: Severity | None = None,
) -> dict[str, Any]:
    """Not yet acknowledged (PENDING, NOTIFIED, ESCALATED), the longest waiting first."""
    conditions: list[Any] = [col(CriticalFinding.status).in_(UNACKNOWLEDGED)]
    if severity is not None:
        conditions.append(CriticalFinding.severity == severity)
    return _page(session, scope, conditions, pagination, oldest_first=True)


@router.get("/metrics", response_model=FindingMetrics)
def metrics(
    session: SessionDep,
    user: QualityReviewer,
    policy: FindingPolicyDep,
    clock: ClockDep,
    since: Annotated[SupportedTime | None, Query(description="findings raised from")] = None,
) -> FindingMetrics:
    """Per severity: counts, pending, overdue, and minutes to acknowledge (median, p90)."""
    return finding_metrics(session, policy, now=clock(), since=since)


@router.get("/study/{study_id}", response_model=Page[FindingPublic])
def list_study_findings(
    study_id: RecordId,
    session: SessionDep,
    _: FindingReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    return _page(session, scope, [CriticalFinding.study_id == study_id], pagination)


@router.get("/severity/{severity}", response_model=Page[FindingPublic])
def list_by_severity(
    severity: Severity,
    session: SessionDep,
    _: FindingReader,
    scope: CareScopeDep,
    pagination: PaginationDep,
) -> dict[str, Any]:
    return _page(session, scope, [CriticalFinding.severity == severity], pagination)


@router.get("/{finding_id}", response_model=FindingDetail)
def get_finding(
    finding_id: RecordId, session: SessionDep, _: FindingReader, scope: CareScopeDep
) -> dict[str, Any]:
    """The finding with its notification timeline (each message, its delivery and attempts)."""
    return _detail(session, findings.readable_finding(session, finding_id, scope))


@router.patch("/{finding_id}", response_model=FindingDetail)
def update_finding(
    finding_id: RecordId,
    body: FindingUpdate,
    session: SessionDep,
    user: FindingEditor,
    policy: FindingPolicyDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
) -> dict[str, Any]:
    finding = findings.get_finding(session, finding_id)
    findings.update_finding(
        session,
        finding,
        user,
        body.model_dump(exclude_unset=True),
        policy,
        now=clock(),
    )
    return _commit(session, finding, workers)


@router.post("/{finding_id}/acknowledge", response_model=FindingDetail)
def acknowledge_finding(
    finding_id: RecordId,
    body: FindingAcknowledge,
    session: SessionDep,
    user: Acknowledger,
    scope: CareScopeDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
) -> dict[str, Any]:
    finding = findings.readable_finding(session, finding_id, scope)
    findings.acknowledge(session, finding, user, body, now=clock())
    return _commit(session, finding, workers)


def _page(
    session: Session,
    scope: CareScope,
    conditions: list[Any],
    pagination: Pagination,
    *,
    oldest_first: bool = False,
) -> dict[str, Any]:
    conditions = [*conditions, *scope.findings()]
    created, ident = col(CriticalFinding.created_at), col(CriticalFinding.id)
    order = [created, ident] if oldest_first else [created.desc(), ident.desc()]
    return paginate(session, CriticalFinding, conditions, order, pagination)


def _detail(session: Session, finding: CriticalFinding) -> dict[str, Any]:
    assert finding.id is not None
    timeline = [
        NotificationPublic.model_validate(n) for n in findings.notifications(session, finding.id)
    ]
    return {**FindingPublic.model_validate(finding).model_dump(), "notifications": timeline}


def _commit(session: Session, finding: CriticalFinding, workers: FindingWorkers) -> dict[str, Any]:
    session.commit()
    session.refresh(finding)
    workers.wake()
    return _detail(session, finding)

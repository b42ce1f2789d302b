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

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import AwareDatetime
from sqlmodel import Session, col, select

from sidecar import critical_findings as findings
from sidecar.api.deps import (
    Pagination,
    PaginationDep,
    RecordId,
    SessionDep,
    paginate,
    require_roles,
)
from sidecar.errors import NotFound
from sidecar.finding_metrics import finding_metrics
from sidecar.models.common import Page
from sidecar.models.critical_findings import (
    UNACKNOWLEDGED,
    CriticalFinding,
    FindingAcknowledge,
    FindingCreate,
    FindingDetail,
    FindingMetrics,
    FindingNotification,
    FindingPublic,
    FindingStatus,
    FindingUpdate,
    NotificationPublic,
    Severity,
)
from sidecar.models.studies import Study
from sidecar.models.users import Role, User

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
    body: FindingCreate, session: SessionDep, user: Radiologist, request: Request
) -> dict[str, Any]:
    """Raises a finding on a study (and its report); the ordering provider is notified."""
    study = session.get(Study, body.study_id)
    if study is None:
        raise NotFound(f"study {body.study_id} not found")
    finding = findings.raise_finding(
        session,
        study,
        user,
        body.model_dump(exclude_unset=True),
        request.app.state.finding_policy,
        now=request.app.state.clock(),
    )
    return _commit(session, finding, request)


@router.get("", response_model=Page[FindingPublic])
def list_findings(
    session: SessionDep,
    user: FindingReader,
    pagination: PaginationDep,
    finding_status: Annotated[FindingStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
) -> dict[str, Any]:
    conditions = []
    if finding_status is not None:
        conditions.append(CriticalFinding.status == finding_status)
    if severity is not None:
        conditions.append(CriticalFinding.severity == severity)
    return _page(session, user, conditions, pagination)


@router.get("/pending", response_model=Page[FindingPublic])
def list_pending(
    session: SessionDep,
    user: FindingReader,
    pagination: PaginationDep,
    severity: Severity | None = None,
) -> dict[str, Any]:
    """Not yet acknowledged (PENDING, NOTIFIED, ESCALATED), the longest waiting first."""
    conditions: list[Any] = [col(CriticalFinding.status).in_(UNACKNOWLEDGED)]
    if severity is not None:
        conditions.append(CriticalFinding.severity == severity)
    return _page(session, user, conditions, pagination, oldest_first=True)


@router.get("/metrics", response_model=FindingMetrics)
def metrics(
    session: SessionDep,
    user: QualityReviewer,
    request: Request,
    since: Annotated[AwareDatetime | None, Query(description="findings raised from")] = None,
) -> FindingMetrics:
    """Per severity: counts, pending, overdue, and minutes to acknowledge (median, p90)."""
    return finding_metrics(
        session, request.app.state.finding_policy, now=request.app.state.clock(), since=since
    )


@router.get("/study/{study_id}", response_model=Page[FindingPublic])
def list_study_findings(
    study_id: RecordId, session: SessionDep, user: FindingReader, pagination: PaginationDep
) -> dict[str, Any]:
    return _page(session, user, [CriticalFinding.study_id == study_id], pagination)


@router.get("/severity/{severity}", response_model=Page[FindingPublic])
def list_by_severity(
    severity: Severity, session: SessionDep, user: FindingReader, pagination: PaginationDep
) -> dict[str, Any]:
    return _page(session, user, [CriticalFinding.severity == severity], pagination)


@router.get("/{finding_id}", response_model=FindingDetail)
def get_finding(finding_id: RecordId, session: SessionDep, user: FindingReader) -> dict[str, Any]:
    """The finding with its notification timeline (each message, its delivery and attempts)."""
    return _detail(session, _readable(session, finding_id, user))


@router.patch("/{finding_id}", response_model=FindingDetail)
def update_finding(
    finding_id: RecordId,
    body: FindingUpdate,
    session: SessionDep,
    user: FindingEditor,
    request: Request,
) -> dict[str, Any]:
    finding = _get(session, finding_id)
    findings.update_finding(
        session,
        finding,
        user,
        body.model_dump(exclude_unset=True),
        request.app.state.finding_policy,
        now=request.app.state.clock(),
    )
    return _commit(session, finding, request)


@router.post("/{finding_id}/acknowledge", response_model=FindingDetail)
def acknowledge_finding(
    finding_id: RecordId,
    body: FindingAcknowledge,
    session: SessionDep,
    user: Acknowledger,
    request: Request,
) -> dict[str, Any]:
    finding = _readable(session, finding_id, user)
    findings.acknowledge(session, finding, user, body, now=request.app.state.clock())
    return _commit(session, finding, request)


def _get(session: Session, finding_id: int) -> CriticalFinding:
    finding = session.get(CriticalFinding, finding_id)
    if finding is None:
        raise NotFound(f"critical finding {finding_id} not found")
    return finding


def _physician_scope(user: User) -> list[Any]:
    """Findings the physician was notified of; none without a provider id."""
    if not user.provider_id:
        return [sa.false()]
    sent_to_them = select(FindingNotification.finding_id).where(
        FindingNotification.recipient == user.provider_id
    )
    return [col(CriticalFinding.id).in_(sent_to_them)]


def _readable(session: Session, finding_id: int, user: User) -> CriticalFinding:
    finding = _get(session, finding_id)
    if (
        user.role == Role.PHYSICIAN
        and not session.exec(
            select(CriticalFinding.id).where(
                CriticalFinding.id == finding_id, *_physician_scope(user)
            )
        ).first()
    ):
        # Not "forbidden": whether a finding exists is itself not theirs to know.
        raise NotFound(f"critical finding {finding_id} not found")
    return finding


def _page(
    session: Session,
    user: User,
    conditions: list[Any],
    pagination: Pagination,
    *,
    oldest_first: bool = False,
) -> dict[str, Any]:
    if user.role == Role.PHYSICIAN:
        conditions = [*conditions, *_physician_scope(user)]
    created, ident = col(CriticalFinding.created_at), col(CriticalFinding.id)
    order = [created, ident] if oldest_first else [created.desc(), ident.desc()]
    return paginate(session, CriticalFinding, conditions, order, pagination)


def _detail(session: Session, finding: CriticalFinding) -> dict[str, Any]:
    assert finding.id is not None
    timeline = [
        NotificationPublic.model_validate(n) for n in findings.notifications(session, finding.id)
    ]
    return {**FindingPublic.model_validate(finding).model_dump(), "notifications": timeline}


def _commit(session: Session, finding: CriticalFinding, request: Request) -> dict[str, Any]:
    session.commit()
    session.refresh(finding)
    request.app.state.critical_findings_wake()
    return _detail(session, finding)

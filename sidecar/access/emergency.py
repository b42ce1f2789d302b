"""Break the glass: a physician who must read a patient's records outside their care
relationship (an emergency, a covering colleague's patient) grants themself access for
EMERGENCY_ACCESS_MINUTES, saying why. Nothing stops them; everything is recorded:

- the grant (who, which patient, from which study, why, until when) in `emergency_access`,
  listed for administrators at GET /api/audit/emergency-access;
- an audit event naming the grant;
- a notification to the privacy contact (PRIVACY_CONTACT) through the notification outbox, in
  the same transaction (ids only: the receiver follows the link and authenticates to read more).

Only roles limited to their patients need it (sidecar.access.care_scope); a physician who already
cares for the patient is told so instead (409), so that no alarm is raised for ordinary work.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CARE_LIMITED_ROLES, CareScope
from sidecar.access.models import EmergencyAccess, EmergencyAccessPublic, EmergencyAccessRequest
from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import User
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep, SettingsDep
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId, equal_to, paginate, record_id_query
from sidecar.core.settings import Settings
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.findings.models import NotificationKind
from sidecar.findings.notifications import enqueue
from sidecar.studies.models import Study

router = APIRouter(tags=["emergency access"])

CareLimited = Annotated[User, Depends(require_roles(*CARE_LIMITED_ROLES))]


@router.post(
    "/api/studies/{study_id}/emergency-access",
    response_model=EmergencyAccessPublic,
    status_code=status.HTTP_201_CREATED,
)
def break_the_glass(
    study_id: RecordId,
    body: EmergencyAccessRequest,
    session: SessionDep,
    user: CareLimited,
    settings: SettingsDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
) -> EmergencyAccess:
    """Access to the patient of this study for EMERGENCY_ACCESS_MINUTES, audited with the
    reason and announced to the privacy contact."""
    study = session.get(Study, study_id)
    now = clock()
    scope = CareScope(user, now)
    if study is None or (scope.facilities and study.facility_id not in scope.facilities):
        # Emergency access opens a patient, not another facility.
        raise UnknownRecord(f"study {study_id} not found")
    if study.patient_id is None:
        raise ConflictingState(
            "this study carries no patient id: there is no patient to open; ask the department"
            " to link it to its order"
        )
    if _cares_for(session, scope, study):
        raise ConflictingState(
            "you already have access to this patient's records: no emergency access is needed"
        )
    grant = grant_emergency_access(session, user, study, body.reason, settings, now=now)
    session.commit()
    session.refresh(grant)
    workers.wake()
    return grant


@router.get("/api/audit/emergency-access", response_model=Page[EmergencyAccessPublic])
def list_emergency_access(
    session: SessionDep,
    _: Admin,
    clock: ClockDep,
    pagination: PaginationDep,
    user_id: Annotated[int | None, record_id_query("userId")] = None,
    study_id: Annotated[int | None, record_id_query("studyId")] = None,
    patient_id: Annotated[str | None, Query(alias="patientId", max_length=64)] = None,
    active: Annotated[bool | None, Query(description="true: not yet expired")] = None,
) -> dict[str, Any]:
    """Every emergency access granted, newest first, with its reason: for review."""
    conditions = equal_to(
        (EmergencyAccess.user_id, user_id),
        (EmergencyAccess.study_id, study_id),
        (EmergencyAccess.patient_id, patient_id),
    )
    if active is not None:
        expires = col(EmergencyAccess.expires_at)
        conditions.append(expires > clock() if active else expires <= clock())
    newest_first = [col(EmergencyAccess.granted_at).desc(), col(EmergencyAccess.id).desc()]
    return paginate(session, EmergencyAccess, conditions, newest_first, pagination)


def grant_emergency_access(
    session: Session, user: User, study: Study, reason: str, settings: Settings, *, now: datetime
) -> EmergencyAccess:
    """Writes the grant, its audit event and its notification; the caller commits."""
    assert user.id is not None and study.id is not None and study.patient_id is not None
    grant = EmergencyAccess(
        user_id=user.id,
        username=user.username,
        study_id=study.id,
        patient_id=study.patient_id,
        issuer_of_patient_id=study.issuer_of_patient_id,
        reason=reason,
        granted_at=now,
        expires_at=now + timedelta(minutes=settings.emergency_access_minutes),
    )
    session.add(grant)
    session.flush()
    audit.record(
        session,
        actor=user.username,
        action="access.emergency_granted",
        entity_type="study",
        entity_id=study.id,
        emergency_access_id=grant.id,
        expires_at=grant.expires_at,
    )
    _notify_privacy_contact(session, grant, settings, now=now)
    return grant


def _notify_privacy_contact(
    session: Session, grant: EmergencyAccess, settings: Settings, *, now: datetime
) -> None:
    recipient = settings.privacy_contact or None
    configured = bool(settings.notification_service_url and recipient)
    link = f"{settings.public_url}/api/audit/emergency-access?userId={grant.user_id}"
    enqueue(
        session,
        configured=configured,
        now=now,
        actor=grant.username,
        emergency_access_id=grant.id,
        kind=NotificationKind.EMERGENCY_ACCESS,
        recipient=recipient,
        payload={
            "event": "emergency_access.granted",
            "notificationId": str(uuid.uuid4()),
            "emergencyAccessId": grant.id,
            "userId": grant.user_id,
            "studyId": grant.study_id,
            "grantedAt": grant.granted_at.isoformat(),
            "expiresAt": grant.expires_at.isoformat(),
            "recipient": {"id": recipient, "role": "privacy_contact"},
            "link": link,
        },
    )


def _cares_for(session: Session, scope: CareScope, study: Study) -> bool:
    found = session.exec(select(Study.id).where(Study.id == study.id, *scope.studies())).first()
    return found is not None

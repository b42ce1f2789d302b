"""The reading worklist and who reads which study (issue 14, items 1 and 2).

Radiologists and administrators see the whole queue (within their facilities, if limited).
Administrators assign and unassign; a radiologist claims, takes over and releases.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import InvalidRequest
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.orders.models import Priority
from sidecar.reading import claims, holder
from sidecar.reading.models import (
    AssignRequest,
    ClaimRequest,
    ReadingState,
    WorklistItem,
)
from sidecar.reading.policy import ReadingPolicyDep
from sidecar.reading.queue import worklist, worklist_filter
from sidecar.viewer.front import ViewerLinksDep

router = APIRouter(tags=["reading"])

Reader = Annotated[User, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
Radiologist = Annotated[User, Depends(require_roles(Role.RADIOLOGIST))]


@router.get("/api/reading-worklist", response_model=Page[WorklistItem])
def reading_worklist(
    session: SessionDep,
    user: Reader,
    scope: CareScopeDep,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    pagination: PaginationDep,
    links: ViewerLinksDep,
    assigned_to: Annotated[
        str | None,
        Query(
            alias="assignedTo",
            pattern=r"^(me|unassigned|[1-9][0-9]{0,17})$",
            description="me, unassigned, or a user id",
        ),
    ] = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Z0-9_]{1,16}$")] = None,
    body_part: Annotated[str | None, Query(alias="bodyPart", min_length=1, max_length=64)] = None,
    priority: Priority | None = None,
    overdue: bool | None = None,
) -> dict[str, Any]:
    """Studies ready to read (images complete, no final report), STAT first, then by due
    time; a study with a preliminary report is marked `preliminary`."""
    wanted = worklist_filter(user, assigned_to, modality, body_part, priority, overdue)
    return worklist(session, policy, wanted, scope.studies(), pagination, now=clock(), links=links)


@router.put("/api/studies/{study_id}/assign", response_model=ReadingState)
def assign_study(
    study_id: RecordId,
    body: AssignRequest,
    session: SessionDep,
    admin: Admin,
    scope: CareScopeDep,
    clock: ClockDep,
) -> ReadingState:
    study = claims.study_in_scope(session, study_id, scope)
    radiologist = session.get(User, body.radiologist_id)
    if radiologist is None:
        raise InvalidRequest(f"user {body.radiologist_id} not found")
    with claims.race(session, study_id):
        reading = holder.assign(session, study, radiologist, actor=admin.username, now=clock())
    return claims.commit(session, study_id, reading)


@router.delete("/api/studies/{study_id}/assign", response_model=ReadingState)
def unassign_study(
    study_id: RecordId, session: SessionDep, admin: Admin, scope: CareScopeDep
) -> ReadingState:
    study = claims.study_in_scope(session, study_id, scope)
    reading = holder.unassign(session, study, actor=admin.username)
    return claims.commit(session, study_id, reading)


@router.post("/api/studies/{study_id}/claim", response_model=ReadingState)
def claim_study(
    study_id: RecordId,
    session: SessionDep,
    user: Radiologist,
    scope: CareScopeDep,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    workers: FindingWorkersDep,
    body: ClaimRequest | None = None,
) -> ReadingState:
    """Claims a study to read; one held by another radiologist answers 409 naming them,
    unless `takeOver` is true (audited; the previous holder is notified)."""
    take_over = body.take_over if body else False
    state = claims.claim(
        session, study_id, user, scope, take_over=take_over, now=clock(), policy=policy
    )
    if take_over:
        workers.wake()
    return state


@router.post("/api/studies/{study_id}/release", response_model=ReadingState)
def release_study(
    study_id: RecordId, session: SessionDep, user: Radiologist, scope: CareScopeDep
) -> ReadingState:
    """The holder gives the study back to the queue, unassigned."""
    return claims.release(session, study_id, user, scope)

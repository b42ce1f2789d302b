"""The reading worklist and who reads which study (issue 14, items 1 and 2).

Radiologists and administrators see the whole queue (within their facilities, if limited).
Administrators assign and unassign; a radiologist claims, takes over and releases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import Admin, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import ConflictingState, InvalidRequest, UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.orders.models import Priority
from sidecar.reading import holder
from sidecar.reading.models import (
    AssignRequest,
    ClaimRequest,
    Holder,
    ReadingState,
    StudyReading,
    WorklistItem,
)
from sidecar.reading.policy import ReadingPolicyDep
from sidecar.reading.queue import UNASSIGNED, WorklistFilter, worklist
from sidecar.studies.lookup import listed_studies
from sidecar.studies.models import Study

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
    who: int | str | None = assigned_to
    if assigned_to == "me":
        who = user.id
    elif assigned_to is not None and assigned_to != UNASSIGNED:
        who = int(assigned_to)
    wanted = WorklistFilter(who, modality, body_part, priority, overdue)
    return worklist(session, policy, wanted, scope.studies(), pagination, now=clock())


@router.put("/api/studies/{study_id}/assign", response_model=ReadingState)
def assign_study(
    study_id: RecordId,
    body: AssignRequest,
    session: SessionDep,
    admin: Admin,
    scope: CareScopeDep,
    clock: ClockDep,
) -> ReadingState:
    study = _study(session, study_id, scope)
    radiologist = session.get(User, body.radiologist_id)
    if radiologist is None:
        raise InvalidRequest(f"user {body.radiologist_id} not found")
    with _race(session, study_id):
        reading = holder.assign(session, study, radiologist, actor=admin.username, now=clock())
    return _commit(session, study_id, reading)


@router.delete("/api/studies/{study_id}/assign", response_model=ReadingState)
def unassign_study(
    study_id: RecordId, session: SessionDep, admin: Admin, scope: CareScopeDep
) -> ReadingState:
    study = _study(session, study_id, scope)
    reading = holder.unassign(session, study, actor=admin.username)
    return _commit(session, study_id, reading)


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
    study = _study(session, study_id, scope)
    take_over = body.take_over if body else False
    with _race(session, study_id):
        reading = holder.claim(
            session, study, user, take_over=take_over, now=clock(), policy=policy
        )
    state = _commit(session, study_id, reading)
    if take_over:
        workers.wake()
    return state


@router.post("/api/studies/{study_id}/release", response_model=ReadingState)
def release_study(
    study_id: RecordId, session: SessionDep, user: Radiologist, scope: CareScopeDep
) -> ReadingState:
    """The holder gives the study back to the queue, unassigned."""
    study = _study(session, study_id, scope)
    reading = holder.release(session, study, user)
    return _commit(session, study_id, reading)


def _study(session: Session, study_id: int, scope: CareScope) -> Study:
    study = session.exec(
        select(Study).where(Study.id == study_id, listed_studies(), *scope.studies())
    ).first()
    if study is None:
        raise UnknownRecord(f"study {study_id} not found")
    return study


@contextmanager
def _race(session: Session, study_id: int) -> Iterator[None]:
    """A claim or assignment that raced another one on the same study loses with 409 (the
    version check of the UPDATE, or the one reading row a study has), wherever it is flushed."""
    try:
        yield
    except (StaleDataError, IntegrityError):
        session.rollback()
        raise ConflictingState(
            f"study {study_id} was claimed or assigned by someone else at this moment: "
            "reload the worklist"
        ) from None


def _commit(session: Session, study_id: int, reading: StudyReading | None) -> ReadingState:
    with _race(session, study_id):
        session.commit()
    if reading is None:
        return ReadingState(
            study_id=study_id, assigned_to=None, assigned_at=None, claimed_at=None, assigned_by=None
        )
    session.refresh(reading)
    user = session.get(User, reading.assigned_to_id) if reading.assigned_to_id else None
    return ReadingState(
        study_id=study_id,
        assigned_to=Holder(id=user.id, name=user.username) if user and user.id else None,
        assigned_at=reading.assigned_at,
        claimed_at=reading.claimed_at,
        assigned_by=reading.assigned_by,
    )

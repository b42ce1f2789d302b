"""Claiming and releasing a study as one action, for the API (sidecar.reading.router) and the
worklist page (sidecar.web.worklist_page) alike: the study found within the caller's care scope
(404 otherwise), the holder changed (sidecar.reading.holder), committed, and a race with another
claim or assignment on the same study answered 409."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import User
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.reading import holder
from sidecar.reading.models import Holder, ReadingState, StudyReading
from sidecar.reading.policy import ReadingPolicy
from sidecar.studies.lookup import listed_studies
from sidecar.studies.models import Study


def study_in_scope(session: Session, study_id: int, scope: CareScope) -> Study:
    study = session.exec(
        select(Study).where(Study.id == study_id, listed_studies(), *scope.studies())
    ).first()
    if study is None:
        raise UnknownRecord(f"study {study_id} not found")
    return study


def claim(
    session: Session,
    study_id: int,
    user: User,
    scope: CareScope,
    *,
    take_over: bool,
    now: datetime,
    policy: ReadingPolicy,
) -> ReadingState:
    """The radiologist claims the study (committed); held by another: 409 naming them, unless
    `take_over` (the caller then wakes the notification workers)."""
    study = study_in_scope(session, study_id, scope)
    with race(session, study_id):
        reading = holder.claim(session, study, user, take_over=take_over, now=now, policy=policy)
    return commit(session, study_id, reading)


def release(session: Session, study_id: int, user: User, scope: CareScope) -> ReadingState:
    """The holder gives the study back to the queue (committed)."""
    study = study_in_scope(session, study_id, scope)
    reading = holder.release(session, study, user)
    return commit(session, study_id, reading)


@contextmanager
def race(session: Session, study_id: int) -> Iterator[None]:
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


def commit(session: Session, study_id: int, reading: StudyReading | None) -> ReadingState:
    with race(session, study_id):
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

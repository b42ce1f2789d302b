"""Who reads which study: assignment by an administrator or a rule, a radiologist's claim,
release and explicit take-over. One holder per study; the caller commits.

A study held by one radiologist cannot be reported by another (`check_may_report`, called by
sidecar.reports.service): the second reader gets 409 naming the holder, and may take the study
over explicitly, which is audited and tells the previous holder through the notification outbox.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.errors import ConflictingState, InvalidRequest
from sidecar.findings.models import NotificationKind
from sidecar.reading.models import StudyReading
from sidecar.reading.notify import queue_reading_notification
from sidecar.reading.policy import READY_TO_READ, ReadingPolicy
from sidecar.studies.models import Study, StudyStatus

_CLOSED = (StudyStatus.FINAL, StudyStatus.CANCELLED)


class HeldByAnother(ConflictingState):
    """Another radiologist holds the study (HTTP 409, naming them)."""


def reading_of(session: Session, study_id: int) -> StudyReading | None:
    return session.exec(select(StudyReading).where(StudyReading.study_id == study_id)).first()


def ensure_reading(
    session: Session, study: Study, *, ready_at: datetime | None = None
) -> StudyReading:
    """The study's reading row, added (not yet flushed) if it has none. A study ready to read
    gets `ready_at` as its ready time, else the time its images were registered (a study that
    became ready before it had a reading row)."""
    assert study.id is not None
    reading = reading_of(session, study.id)
    if reading is None:
        ready = study.status in READY_TO_READ
        reading = StudyReading(
            study_id=study.id,
            ready_at=(ready_at or study.images_received_at) if ready else None,
        )
        session.add(reading)
    return reading


def active_holder(session: Session, reading: StudyReading | None) -> User | None:
    """The radiologist holding the study; a disabled account holds nothing."""
    if reading is None or reading.assigned_to_id is None:
        return None
    user = session.get(User, reading.assigned_to_id)
    return user if user is not None and user.is_active else None


def check_may_report(session: Session, study_id: int, user: User) -> None:
    holder = active_holder(session, reading_of(session, study_id))
    if holder is not None and holder.id != user.id:
        raise HeldByAnother(held_message(study_id, holder))


def claim_for_report(session: Session, study: Study, author: User, *, now: datetime) -> None:
    """Writing a report on a study nobody holds claims it for its author (a second reader then
    gets 409); held by another, refused (409 naming them)."""
    assert study.id is not None
    reading = ensure_reading(session, study)
    holder = active_holder(session, reading)
    if holder is not None:
        if holder.id != author.id:
            raise HeldByAnother(held_message(study.id, holder))
        return
    reading.assigned_to_id, reading.assigned_at, reading.claimed_at = author.id, now, now
    reading.assigned_by = author.username
    session.add(reading)
    audit.record(
        session,
        actor=author.username,
        action="study.reading_claimed",
        entity_type="study",
        entity_id=study.id,
        by_report=True,
    )


def held_message(study_id: int, holder: User) -> str:
    return (
        f"study {study_id} is held by radiologist {holder.username} (user {holder.id}): "
        f"only they report it, unless you take it over (POST /api/studies/{study_id}/claim "
        'with {"takeOver": true})'
    )


def assign(
    session: Session, study: Study, radiologist: User, *, actor: str, now: datetime
) -> StudyReading:
    """An administrator (or a rule, `actor` its name) gives the study to a radiologist."""
    if study.status in _CLOSED:
        raise ConflictingState(f"study {study.id} is {study.status.value}: nothing to read")
    if radiologist.role != Role.RADIOLOGIST or not radiologist.is_active:
        raise InvalidRequest(f"user {radiologist.id} is not an active radiologist")
    reading = ensure_reading(session, study)
    previous = reading.assigned_to_id
    reading.assigned_to_id, reading.assigned_at = radiologist.id, now
    reading.claimed_at, reading.assigned_by = None, actor
    session.add(reading)
    audit.record(
        session,
        actor=actor,
        action="study.reading_assigned",
        entity_type="study",
        entity_id=study.id,
        radiologist_id=radiologist.id,
        previous_radiologist_id=previous,
    )
    return reading


def unassign(session: Session, study: Study, *, actor: str) -> StudyReading | None:
    assert study.id is not None
    reading = reading_of(session, study.id)
    if reading is None or reading.assigned_to_id is None:
        return reading
    previous = reading.assigned_to_id
    _clear(reading)
    session.add(reading)
    audit.record(
        session,
        actor=actor,
        action="study.reading_unassigned",
        entity_type="study",
        entity_id=study.id,
        previous_radiologist_id=previous,
    )
    return reading


def claim(
    session: Session,
    study: Study,
    user: User,
    *,
    take_over: bool,
    now: datetime,
    policy: ReadingPolicy,
) -> StudyReading:
    """The radiologist takes the study to read. Held by another: refused unless `take_over`,
    which is audited and tells the previous holder."""
    if study.status not in READY_TO_READ:
        raise ConflictingState(
            f"study {study.id} is {study.status.value}: only a study ready to read (COMPLETED, "
            "or PRELIMINARY) can be claimed"
        )
    reading = ensure_reading(session, study)
    holder = active_holder(session, reading)
    if holder is not None and holder.id == user.id:
        return reading  # already theirs: claiming again changes nothing
    if holder is not None and not take_over:
        raise HeldByAnother(held_message(_id(study), holder))
    reading.assigned_to_id, reading.assigned_at, reading.claimed_at = user.id, now, now
    reading.assigned_by = user.username
    session.add(reading)
    if holder is None:
        audit.record(
            session,
            actor=user.username,
            action="study.reading_claimed",
            entity_type="study",
            entity_id=study.id,
        )
        return reading
    audit.record(
        session,
        actor=user.username,
        action="study.reading_taken_over",
        entity_type="study",
        entity_id=study.id,
        previous_radiologist_id=holder.id,
    )
    queue_reading_notification(
        session,
        study,
        NotificationKind.READING_TAKEOVER,
        recipient=holder.username,
        role="previous_holder",
        policy=policy,
        now=now,
        actor=user.username,
        previousHolderId=holder.id,
        takenOverBy={"id": user.id, "name": user.username},
        takenOverAt=now.isoformat(),
    )
    return reading


def release(session: Session, study: Study, user: User) -> StudyReading | None:
    """The holder gives the study back to the queue; nobody else may release it."""
    assert study.id is not None
    reading = reading_of(session, study.id)
    holder = active_holder(session, reading)
    if reading is None or holder is None:
        raise ConflictingState(f"study {study.id} is not held by anyone: nothing to release")
    if holder.id != user.id:
        raise HeldByAnother(
            f"study {study.id} is held by radiologist {holder.username} (user {holder.id}), "
            "not you: only the holder releases it (an administrator unassigns it)"
        )
    _clear(reading)
    session.add(reading)
    audit.record(
        session,
        actor=user.username,
        action="study.reading_released",
        entity_type="study",
        entity_id=study.id,
    )
    return reading


def _clear(reading: StudyReading) -> None:
    reading.assigned_to_id = reading.assigned_at = reading.claimed_at = None
    reading.assigned_by = None


def _id(study: Study) -> int:
    assert study.id is not None
    return study.id

"""Assignment rules, applied when a study becomes ready to read.

Rules are tried in order (`position`, then id); a rule matches when every criterion it names
matches the study (modality among the study's or its order's, body part and procedure code
compared without case, priority). Of a matching rule's pool, only active, available radiologists
below their `maxOpen` may take it; of those, the one already holding another unread study of the
same patient (patient id and issuer) gets it, else the one with the least open work, STAT
studies counted first. A rule whose pool has nobody free passes the study to the next matching
rule; a study no rule places stays unassigned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core.models import split_multi
from sidecar.orders.models import ImagingOrder, Priority
from sidecar.reading import holder
from sidecar.reading.models import AssignmentRule, StudyReading
from sidecar.reading.policy import READY_TO_READ
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

RULES_ACTOR = "system:reading-rules"


def study_ready(session: Session, study: Study, *, now: datetime) -> StudyReading | None:
    """The study's images are complete: its ready time is recorded (once) and, unless someone
    already holds it, the rules choose its reader. The caller commits."""
    if study.status not in READY_TO_READ:
        return None
    reading = holder.ensure_reading(session, study, ready_at=now)
    if reading.ready_at is None:
        reading.ready_at = now
        session.add(reading)
    if holder.active_holder(session, reading) is not None:
        return reading
    session.flush()
    chosen = choose_reader(session, study)
    if chosen is not None:
        holder.assign(session, study, chosen, actor=RULES_ACTOR, now=now)
        log.info("study %s assigned by rule to user %s", study.id, chosen.id)
    return reading


def choose_reader(session: Session, study: Study) -> User | None:
    order = session.get(ImagingOrder, study.order_id) if study.order_id else None
    rules = session.exec(
        select(AssignmentRule)
        .where(col(AssignmentRule.enabled))
        .order_by(col(AssignmentRule.position), col(AssignmentRule.id))
    ).all()
    for rule in rules:
        if not matches(rule, study, order):
            continue
        chosen = _pick(session, study, rule.pool)
        if chosen is not None:
            return chosen
    return None


def matches(rule: AssignmentRule, study: Study, order: ImagingOrder | None) -> bool:
    if rule.modality:
        modalities = set(split_multi(study.modalities))
        if order is not None:
            modalities.add(order.modality.value)
        if rule.modality not in modalities:
            return False
    if rule.body_part:
        parts = {(p or "").upper() for p in (study.body_part, order.body_part if order else None)}
        if rule.body_part.upper() not in parts:
            return False
    if rule.priority and rule.priority != (study.priority or Priority.ROUTINE.value):
        return False
    return not (
        rule.procedure_code
        and (order is None or (order.procedure_code or "").upper() != rule.procedure_code.upper())
    )


def open_work(session: Session, user_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Per radiologist: (open STAT studies, open studies), open meaning held and not yet final."""
    stat = func.sum(case((col(Study.priority) == Priority.STAT.value, 1), else_=0))
    rows = session.exec(
        select(StudyReading.assigned_to_id, stat, func.count())
        .join(Study, col(Study.id) == col(StudyReading.study_id))
        .where(
            col(StudyReading.assigned_to_id).in_(list(user_ids)),
            col(Study.status).in_(READY_TO_READ),
        )
        .group_by(col(StudyReading.assigned_to_id))
    ).all()
    work = {user_id: (0, 0) for user_id in user_ids}
    for user_id, stat_count, total in rows:
        if user_id is not None:
            work[user_id] = (int(stat_count or 0), int(total))
    return work


def _pick(session: Session, study: Study, pool: Sequence[int]) -> User | None:
    members = session.exec(
        select(User).where(
            col(User.id).in_(list(pool)),
            col(User.role) == Role.RADIOLOGIST,
            col(User.is_active),
            col(User.available),
        )
    ).all()
    if not members:
        return None
    work = open_work(session, [_id(m) for m in members])
    free = [m for m in members if m.max_open is None or work[_id(m)][1] < m.max_open]
    if not free:
        return None
    same_patient = _same_patient_readers(session, study)
    for member in free:
        if _id(member) in same_patient:
            return member
    return min(free, key=lambda m: (*work[_id(m)], _id(m)))


def _same_patient_readers(session: Session, study: Study) -> set[int]:
    """Who holds another unread study of this study's patient."""
    if not study.patient_id:
        return set()
    issuer = study.issuer_of_patient_id
    rows = session.exec(
        select(StudyReading.assigned_to_id)
        .join(Study, col(Study.id) == col(StudyReading.study_id))
        .where(
            col(Study.patient_id) == study.patient_id,
            col(Study.issuer_of_patient_id).is_(None)
            if issuer is None
            else col(Study.issuer_of_patient_id) == issuer,
            col(Study.id) != study.id,
            col(Study.status).in_(READY_TO_READ),
            col(StudyReading.assigned_to_id).is_not(None),
        )
    ).all()
    return {user_id for user_id in rows if user_id is not None}


def _id(user: User) -> int:
    assert user.id is not None
    return user.id

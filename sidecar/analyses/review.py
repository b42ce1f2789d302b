"""The human in the loop. Every AI finding starts unconfirmed; a radiologist accepts or rejects it.

A finding of severity `critical` never raises a critical finding (sidecar.findings) by itself: it
asks for a radiologist's review. The study, if it is waiting to be read, is raised to STAT and
is due for reading by AI_REVIEW_MINUTES from then (StudyReading.review_due_at; its due time is
the earlier of that and its priority's target, sidecar.reading.policy), so it tops the reading
worklist and, unread by then, is overdue and escalates as any other overdue study does
(sidecar.reading.overdue). Once each of the study's critical AI findings has been reviewed,
accepted or rejected, the review deadline is lifted; the study stays STAT (a radiologist has
still to read it; the audit trail keeps the priority it had).

A finding is reviewed once: the same decision again answers the review already recorded; the
other decision is refused (409) naming who decided and when, so a second reader cannot silently
overturn the first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, func, select

from sidecar.accounts.models import User
from sidecar.analyses.findings import Severity
from sidecar.analyses.models import AnalysisFinding, ReviewDecision
from sidecar.core import audit
from sidecar.core.errors import ConflictingState
from sidecar.core.models import table_of
from sidecar.orders.models import Priority
from sidecar.reading import holder
from sidecar.reading.policy import READY_TO_READ
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

#: The actor of what the sidecar does by itself on an AI finding.
AI_REVIEW_ACTOR = "system:ai-analysis"


def ask_for_review(
    session: Session,
    study_id: int,
    analysis_id: int,
    rows: Sequence[AnalysisFinding],
    *,
    now: datetime,
    review_after: timedelta,
) -> datetime | None:
    """The study of `rows` (a task's findings, just recorded) is raised to STAT and due for
    review by `now + review_after` when one of them is critical and the study waits to be read;
    audited. Returns the review deadline set, None when none was. In the caller's transaction.
    A study already due for review sooner keeps its deadline."""
    critical = [row for row in rows if row.severity == Severity.CRITICAL.value]
    if not critical:
        return None
    study = session.get(Study, study_id)
    if study is None or study.status not in READY_TO_READ:
        # Read already (or not readable): the findings wait in the analysis for review.
        return None
    previous_priority = study.priority
    if study.priority != Priority.STAT.value:
        study.priority = Priority.STAT.value
        study.updated_at = now
        session.add(study)
    reading = holder.ensure_reading(session, study)
    due = now + review_after
    if reading.review_due_at is None or due < reading.review_due_at:
        reading.review_due_at = due
    session.add(reading)
    session.flush()
    audit.record(
        session,
        actor=AI_REVIEW_ACTOR,
        action="study.ai_review_requested",
        entity_type="study",
        entity_id=study.id,
        analysis_id=analysis_id,
        finding_ids=[row.id for row in critical],
        previous_priority=previous_priority,
        priority=study.priority,
        review_due_at=reading.review_due_at,
    )
    log.warning("study %s: critical AI finding, review due by %s", study.id, reading.review_due_at)
    return reading.review_due_at


def review_finding(
    session: Session,
    finding: AnalysisFinding,
    decision: ReviewDecision,
    note: str | None,
    *,
    reviewer: User,
    now: datetime,
) -> bool:
    """Records the radiologist's decision on the finding, audited; True when it was recorded
    now, False when the same decision was already recorded (nothing changes). The other
    decision than the one recorded: ConflictingState. In the caller's transaction."""
    # Recorded only if nobody has meanwhile: two reviewers at once cannot both decide.
    recorded = session.connection().execute(
        update(table_of(AnalysisFinding))
        .where(
            table_of(AnalysisFinding).c.id == finding.id,
            table_of(AnalysisFinding).c.decision.is_(None),
        )
        .values(
            decision=decision.value,
            reviewed_by_id=reviewer.id,
            reviewed_at=now,
            review_note=note,
        )
    )
    session.refresh(finding)
    if recorded.rowcount != 1:
        if finding.decision == decision:
            return False
        who = session.get(User, finding.reviewed_by_id) if finding.reviewed_by_id else None
        when = finding.reviewed_at.isoformat() if finding.reviewed_at else "earlier"
        decided = finding.decision.value.lower() if finding.decision else "reviewed"
        raise ConflictingState(
            f"finding {finding.id} was already {decided} by "
            f"{who.username if who else 'another reviewer'} at {when}: a finding is reviewed once"
        )
    audit.record(
        session,
        actor=reviewer.username,
        action="analysis.finding_reviewed",
        entity_type="analysis",
        entity_id=finding.analysis_id,
        finding_id=finding.id,
        study_id=finding.study_id,
        decision=decision,
        severity=finding.severity,
    )
    if finding.severity == Severity.CRITICAL.value:
        _lift_review_deadline(session, finding.study_id, reviewer)
    return True


def _lift_review_deadline(session: Session, study_id: int, reviewer: User) -> None:
    """Every critical AI finding of the study reviewed: its review deadline is lifted."""
    waiting = session.exec(
        select(func.count())
        .select_from(AnalysisFinding)
        .where(
            AnalysisFinding.study_id == study_id,
            AnalysisFinding.severity == Severity.CRITICAL.value,
            col(AnalysisFinding.decision).is_(None),
        )
    ).one()
    reading = holder.reading_of(session, study_id)
    if waiting or reading is None or reading.review_due_at is None:
        return
    lifted = reading.review_due_at
    reading.review_due_at = None
    session.add(reading)
    audit.record(
        session,
        actor=reviewer.username,
        action="study.ai_review_done",
        entity_type="study",
        entity_id=study_id,
        review_due_at=lifted,
    )

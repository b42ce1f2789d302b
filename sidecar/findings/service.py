"""Critical findings: raise, edit, acknowledge, escalate, resolve. The caller commits.

The loop this closes (Joint Commission NPSG.02.03.01): a radiologist raises a finding; its
ordering provider is notified at once (`sidecar.findings.notifications`, a durable outbox); the
severity sets how long they have to acknowledge it; past that deadline the finding escalates,
one contact at a time, and last of all to the fail-safe recipient
(`sidecar.findings.escalation`). An acknowledgement says who received it, when, how, and what was
read back. Every step is audited in the same transaction as the change, with ids only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from hl7.result_message import FlaggedFinding
from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.errors import ConflictingState, InvalidRequest, NotPermitted, UnknownRecord
from sidecar.core.workflow import move
from sidecar.findings.models import (
    FINDING_WORKFLOW,
    UNACKNOWLEDGED,
    AcknowledgementMethod,
    CriticalFinding,
    FindingAcknowledge,
    FindingNotification,
    FindingStatus,
    NotificationKind,
    Severity,
)
from sidecar.findings.notifications import queue_notification
from sidecar.findings.policy import FindingPolicy
from sidecar.operations import metrics
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport
from sidecar.studies.models import Study


class FindingConflict(ConflictingState):
    """The finding is not in a state that allows the change (HTTP 409)."""


class FindingRefused(InvalidRequest):
    """The request contradicts the record or the read-back rule (HTTP 400)."""


class MissingRecord(UnknownRecord):
    """A record the request names does not exist (HTTP 404)."""


class NotYours(NotPermitted):
    """The user's role allows the action, but not on this finding (HTTP 403)."""


#: Raised on the report, these reach the HIS flagged AA (critical); the others as A (abnormal).
CRITICAL_FLAG = frozenset({Severity.CRITICAL, Severity.HIGH})
# Verbal communication of a critical result must be read back (NPSG.02.03.01).
VERBAL = frozenset({AcknowledgementMethod.PHONE, AcknowledgementMethod.IN_PERSON})


def raise_finding(
    session: Session,
    study: Study,
    author: User,
    values: dict[str, Any],
    policy: FindingPolicy,
    *,
    now: datetime,
) -> CriticalFinding:
    """A new finding on a study (and its report, if given); its ordering provider is notified.
    Without a known ordering provider it is due for escalation at once: someone must hear."""
    report_id = values.get("report_id")
    if report_id is not None:
        report = session.get(RadiologyReport, report_id)
        if report is None or report.deleted_at is not None:
            raise MissingRecord(f"report {report_id} not found")
        if report.study_id != study.id:
            raise FindingRefused(f"report {report_id} is not a report of study {study.id}")
    severity = Severity(values["severity"])
    deadline = policy.deadline(severity)
    order = session.get(ImagingOrder, study.order_id) if study.order_id else None
    finding = CriticalFinding(
        study_id=_id(study),
        order_id=order.id if order else None,
        report_id=report_id,
        raised_by_id=_id(author),
        severity=severity,
        description=values["description"],
        recommendation=values.get("recommendation"),
        created_at=now,
        updated_at=now,
        acknowledge_by=now + deadline if deadline else None,
    )
    session.add(finding)
    session.flush()
    audit.record(
        session,
        actor=author.username,
        action="critical_finding.created",
        entity_type="critical_finding",
        entity_id=finding.id,
        study_id=study.id,
        report_id=report_id,
        order_id=finding.order_id,
        severity=severity,
    )
    provider = order.provider_id if order else None
    if provider:
        finding.next_escalation_at = finding.acknowledge_by  # before the payload quotes it
        queue_notification(
            session,
            finding,
            NotificationKind.RAISED,
            provider,
            policy,
            now=now,
            actor=author.username,
        )
    else:
        finding.next_escalation_at = now if policy.recipient_at(1) else None
        audit.record(
            session,
            actor=author.username,
            action="critical_finding.no_ordering_provider",
            entity_type="critical_finding",
            entity_id=finding.id,
            order_id=finding.order_id,
            escalates_at_once=finding.next_escalation_at is not None,
        )
    metrics.finding_raised(session, severity)
    return finding


def escalate(
    session: Session, finding: CriticalFinding, policy: FindingPolicy, *, now: datetime, actor: str
) -> FindingNotification | None:
    """One step up the chain: the next contact is notified and gets the severity's deadline.
    None when the chain is used up (the fail-safe recipient was the last step)."""
    level = finding.escalation_level + 1
    recipient = policy.recipient_at(level)
    finding.next_escalation_at = None
    finding.updated_at = now
    session.add(finding)
    if recipient is None:
        audit.record(
            session,
            actor=actor,
            action="critical_finding.escalation_exhausted",
            entity_type="critical_finding",
            entity_id=finding.id,
            escalation_level=finding.escalation_level,
        )
        return None
    # Audited below as critical_finding.escalated, with the level and the recipient.
    move(
        session,
        finding,
        FINDING_WORKFLOW,
        FindingStatus.ESCALATED,
        actor=actor,
        audited=False,
        at=now,
    )
    finding.escalation_level = level
    deadline = policy.deadline(Severity(finding.severity))
    if deadline and policy.recipient_at(level + 1):
        finding.next_escalation_at = now + deadline
    audit.record(
        session,
        actor=actor,
        action="critical_finding.escalated",
        entity_type="critical_finding",
        entity_id=finding.id,
        escalation_level=level,
        recipient=recipient,
        failsafe=recipient == policy.failsafe and policy.recipient_at(level + 1) is None,
    )
    return queue_notification(
        session, finding, NotificationKind.ESCALATED, recipient, policy, now=now, actor=actor
    )


def acknowledge(
    session: Session,
    finding: CriticalFinding,
    user: User,
    body: FindingAcknowledge,
    *,
    now: datetime,
) -> None:
    """Closes the loop. A physician acknowledges a finding they were notified of; a
    radiologist records a verbal hand-over (phone, in person) on the receiver's behalf."""
    if finding.status not in UNACKNOWLEDGED:
        raise FindingConflict(
            f"critical finding {finding.id} is {finding.status.value}: only a finding not yet "
            "acknowledged (PENDING, NOTIFIED, ESCALATED) can be acknowledged"
        )
    name = body.acknowledged_by_name
    if user.role == Role.PHYSICIAN:
        if not user.provider_id or user.provider_id not in recipients(session, _id(finding)):
            raise NotYours(
                f"critical finding {finding.id} was not sent to you: only a notified "
                "provider acknowledges it (or a radiologist records a verbal hand-over)"
            )
        name = name or user.provider_id
    elif body.method not in VERBAL or not name:
        raise FindingRefused(
            "a radiologist records an acknowledgement received by PHONE or IN_PERSON, with "
            "acknowledgedByName: the clinician who received the result"
        )
    if body.method in VERBAL and not body.read_back_confirmed:
        raise FindingRefused(
            f"a result communicated by {body.method.value} must be read back: send "
            "readBackConfirmed true once the receiver has repeated it"
        )
    # Audited below as critical_finding.acknowledged, with how and by whom.
    move(
        session,
        finding,
        FINDING_WORKFLOW,
        FindingStatus.ACKNOWLEDGED,
        actor=user.username,
        audited=False,
        at=now,
    )
    finding.acknowledged_at = now
    finding.acknowledged_by_id = user.id
    finding.acknowledged_by_name = name
    finding.acknowledgement_method = body.method
    finding.read_back_confirmed = body.read_back_confirmed
    finding.read_back_text = body.read_back_text
    finding.acknowledgement_notes = body.notes
    finding.next_escalation_at = None
    finding.updated_at = now
    session.add(finding)
    audit.record(
        session,
        actor=user.username,
        action="critical_finding.acknowledged",
        entity_type="critical_finding",
        entity_id=finding.id,
        method=body.method,
        read_back_confirmed=body.read_back_confirmed,
        on_behalf=user.role != Role.PHYSICIAN,
        escalation_level=finding.escalation_level,
        minutes=round((now - finding.created_at).total_seconds() / 60, 1),
    )
    metrics.finding_acknowledged(session, finding.severity, finding.created_at, now)


def update_finding(
    session: Session,
    finding: CriticalFinding,
    user: User,
    values: dict[str, Any],
    policy: FindingPolicy,
    *,
    now: datetime,
) -> None:
    """The raising radiologist corrects text or severity before acknowledgement; they (or an
    administrator) resolve an acknowledged finding. The rest of the status is the system's."""
    clinical = {k: values[k] for k in ("severity", "description", "recommendation") if k in values}
    raiser = user.role == Role.RADIOLOGIST and user.id == finding.raised_by_id
    if not raiser and (clinical or user.role != Role.ADMIN):
        raise NotYours(
            f"only the radiologist who raised critical finding {finding.id} changes it "
            "(an administrator may only resolve it)"
        )
    if clinical and finding.status not in UNACKNOWLEDGED:
        raise FindingConflict(
            f"critical finding {finding.id} is {finding.status.value}: what was acknowledged "
            "is not edited; raise a new finding"
        )
    if "description" in clinical and clinical["description"] is None:
        raise FindingRefused("description cannot be removed")
    target = values.get("status")
    if target is not None and target != FindingStatus.RESOLVED:
        raise FindingRefused(
            f"status {target} is set by notification, escalation or acknowledgement; "
            "PATCH sets only RESOLVED"
        )
    previous = Severity(finding.severity)
    for name, value in clinical.items():
        if value is not None:
            setattr(finding, name, value)
    if "recommendation" in clinical:
        finding.recommendation = clinical["recommendation"]
    if "follow_up_notes" in values:
        finding.follow_up_notes = values["follow_up_notes"]
    if target == FindingStatus.RESOLVED:
        # Audited below as critical_finding.updated, which names the status.
        move(
            session,
            finding,
            FINDING_WORKFLOW,
            FindingStatus.RESOLVED,
            actor=user.username,
            audited=False,
            at=now,
        )
        finding.resolved_at = now
    if Severity(finding.severity) != previous:
        _reschedule(finding, policy, now)
    finding.updated_at = now
    session.add(finding)
    audit.record(
        session,
        actor=user.username,
        action="critical_finding.updated",
        entity_type="critical_finding",
        entity_id=finding.id,
        fields=sorted(values),
        severity=finding.severity,
        previous_severity=previous,
        status=finding.status,
    )


def _reschedule(finding: CriticalFinding, policy: FindingPolicy, now: datetime) -> None:
    """A new severity brings its own deadline: counted from the finding's creation for the
    ordering provider (so an upgrade to CRITICAL may be overdue at once), from now for a
    contact already escalated to."""
    deadline = policy.deadline(Severity(finding.severity))
    finding.acknowledge_by = finding.created_at + deadline if deadline else None
    if finding.escalation_level == 0:
        # Without an ordering provider the finding was due at once, whatever its severity.
        if finding.next_escalation_at != finding.created_at:
            finding.next_escalation_at = finding.acknowledge_by
    elif deadline and policy.recipient_at(finding.escalation_level + 1):
        finding.next_escalation_at = now + deadline
    else:
        finding.next_escalation_at = None


def get_finding(session: Session, finding_id: int) -> CriticalFinding:
    finding = session.get(CriticalFinding, finding_id)
    if finding is None:
        raise UnknownRecord(f"critical finding {finding_id} not found")
    return finding


def readable_finding(session: Session, finding_id: int, scope: CareScope) -> CriticalFinding:
    """The finding, when the caller may read it; 404 otherwise (the API's and the results
    page's rule): whether a finding exists is itself not theirs to know."""
    finding = get_finding(session, finding_id)
    if (
        scope.limited
        and not session.exec(
            select(CriticalFinding.id).where(CriticalFinding.id == finding_id, *scope.findings())
        ).first()
    ):
        raise UnknownRecord(f"critical finding {finding_id} not found")
    return finding


def recipients(session: Session, finding_id: int) -> set[str]:
    """Everyone a notification was addressed to (sent or not): who may acknowledge."""
    rows = session.exec(
        select(FindingNotification.recipient).where(FindingNotification.finding_id == finding_id)
    ).all()
    return {r for r in rows if r}


def notifications(session: Session, finding_id: int) -> list[FindingNotification]:
    return list(
        session.exec(
            select(FindingNotification)
            .where(FindingNotification.finding_id == finding_id)
            .order_by(col(FindingNotification.id))
        ).all()
    )


def flagged_findings(session: Session, report_id: int) -> Sequence[FlaggedFinding]:
    """The ORU's finding source (sidecar.results.service): findings raised on the report, in
    order."""
    findings = session.exec(
        select(CriticalFinding)
        .where(CriticalFinding.report_id == report_id)
        .order_by(col(CriticalFinding.id))
    ).all()
    return [
        FlaggedFinding(f"{f.severity.value}: {f.description}", f.severity in CRITICAL_FLAG)
        for f in findings
    ]


def _id(row: Study | User | CriticalFinding) -> int:
    assert row.id is not None
    return row.id

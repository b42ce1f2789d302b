"""Critical finding notifications to the notification service: a webhook, delivered durably.

- `queue_notification` writes the message into `critical_finding_notification` inside the
  caller's transaction: a finding (or its escalation) never commits without its notification.
  With no NOTIFICATION_SERVICE_URL the row is written as NOT_CONFIGURED (and audited): the
  timeline still shows who should have been told.
- `FindingNotifier` POSTs pending rows oldest first, up to PARALLEL_DELIVERIES at a time (one
  per finding, so that each finding's notifications arrive in order), each with a timeout. 2xx:
  DELIVERED. No answer, 408, 429 or 5xx: tried again after a doubling delay (capped), and
  nothing else is sent until then (the service is down for all of them). One at a time, a burst
  of 200 findings from 8 clients waited up to 2.2 s for its webhooks (bench/critical_findings.py),
  over the 1 s target. Any other answer (4xx, 3xx): REFUSED,
  kept for an administrator to see; escalation goes on regardless, so a refused notification
  still ends at the fail-safe recipient. Every attempt is a `critical_finding_notification_
  attempt` row (time, HTTP status or error).
- Across restarts nothing is lost: the outbox is a table. A POST whose answer was lost in a
  crash is sent again with the same `notificationId`, on which the receiver deduplicates.

Payload: ids, severity, accession number, recipient and links; never the patient's name, birth
date or id, nor the finding's text: the receiver follows the link and authenticates to read it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, exists
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from sidecar.core import audit, correlation
from sidecar.core.background import BackgroundWorker, backoff_delay, seconds_until_next_attempt
from sidecar.core.http import tls_context
from sidecar.core.models import utcnow
from sidecar.core.workflow import move_if
from sidecar.findings.models import (
    FINDING_WORKFLOW,
    CriticalFinding,
    DeliveryStatus,
    FindingNotification,
    FindingStatus,
    NotificationAttempt,
    NotificationKind,
)
from sidecar.findings.policy import FindingPolicy
from sidecar.orders.models import ImagingOrder
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

NOTIFIER_ACTOR = "system:finding-notifier"
#: Notifications POSTed at once. Each is an HTTP request and a committed outcome; a handful in
#: flight keeps a burst of findings from queueing behind one another.
PARALLEL_DELIVERIES = 4
_RETRYABLE = frozenset({408, 429})

Clock = Callable[[], datetime]


def queue_notification(
    session: Session,
    finding: CriticalFinding,
    kind: NotificationKind,
    recipient: str,
    policy: FindingPolicy,
    *,
    now: datetime,
    actor: str,
) -> FindingNotification:
    level = finding.escalation_level
    if level == 0:
        role = "ordering_provider"
    elif recipient == policy.failsafe and policy.recipient_at(level + 1) is None:
        role = "failsafe"
    else:
        role = "escalation_contact"
    return enqueue(
        session,
        configured=policy.notify,
        now=now,
        actor=actor,
        audit_detail={"escalation_level": level},
        finding_id=_id(finding),
        kind=kind,
        escalation_level=level,
        recipient=recipient,
        payload=_payload(session, finding, kind, recipient, role, policy),
    )


def enqueue(
    session: Session,
    *,
    configured: bool,
    now: datetime,
    actor: str,
    audit_detail: Mapping[str, Any] | None = None,
    **notification: Any,
) -> FindingNotification:
    """Puts a notification (FindingNotification's fields) in the outbox, due now, in the
    caller's transaction (the caller commits). Without a notification service it is kept as
    NOT_CONFIGURED and audited, with `audit_detail`, so that nobody believes it was sent."""
    row = FindingNotification(
        **notification,
        status=DeliveryStatus.PENDING if configured else DeliveryStatus.NOT_CONFIGURED,
        next_attempt_at=now if configured else None,
        created_at=now,
    )
    session.add(row)
    session.flush()
    if not configured:
        entity_type, entity_id = subject_of(row)
        audit.record(
            session,
            actor=actor,
            action=f"{entity_type}.notification_not_configured",
            entity_type=entity_type,
            entity_id=entity_id,
            notification_id=row.id,
            **(audit_detail or {}),
        )
    return row


def _payload(
    session: Session,
    finding: CriticalFinding,
    kind: NotificationKind,
    recipient: str,
    role: str,
    policy: FindingPolicy,
) -> dict[str, Any]:
    study = session.get(Study, finding.study_id)
    order = session.get(ImagingOrder, finding.order_id) if finding.order_id else None
    assert study is not None
    link = f"{policy.public_url}/api/critical-findings/{finding.id}"
    return {
        "event": f"critical_finding.{kind.value.lower()}",
        "notificationId": str(uuid.uuid4()),
        "findingId": finding.id,
        "severity": finding.severity.value,
        "raisedAt": finding.created_at.isoformat(),
        "acknowledgeBy": (
            finding.next_escalation_at.isoformat()
            if finding.next_escalation_at and finding.next_escalation_at > finding.created_at
            else None
        ),
        "escalationLevel": finding.escalation_level,
        "recipient": {
            "id": recipient,
            "role": role,
            "name": order.ordering_provider if order and role == "ordering_provider" else None,
        },
        "studyId": finding.study_id,
        "studyInstanceUID": study.study_instance_uid,
        "accessionNumber": study.accession_number or (order.accession_number if order else None),
        "orderId": finding.order_id,
        "reportId": finding.report_id,
        "link": link,
        "acknowledgeUrl": f"{link}/acknowledge",
    }


class FindingNotifier(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        url: str,
        *,
        client: httpx.Client | None = None,
        token: str = "",
        timeout: float = 5.0,
        max_delay: float = 60.0,
        clock: Clock = utcnow,
    ) -> None:
        super().__init__("finding-notifier", clock=clock)
        self._deliveries = ThreadPoolExecutor(
            PARALLEL_DELIVERIES, thread_name_prefix="finding-notifier-post"
        )
        self._engine = engine
        self._url = url
        self._client = client or httpx.Client(timeout=timeout, verify=tls_context())
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._max_delay = max_delay
        self.last_error: str | None = None

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        self._deliveries.shutdown(wait=True)
        self._client.close()

    def run_once(self) -> float | None:
        """Sends every due notification, a batch at a time; returns seconds until the next is
        due (None: nothing waiting). Stops after a batch the service did not wholly take."""
        while not self.stopping:
            now = self.clock()
            with Session(self._engine) as session:
                batch = [
                    (_id_of(row), row.payload)
                    for row in due_batch(session, now, PARALLEL_DELIVERIES)
                ]
                if not batch:
                    return seconds_until_next(session, now)
            outcomes = list(self._deliveries.map(lambda due: self._deliver(*due), batch))
            failures = [(delay, error) for delay, error in outcomes if delay is not None]
            self.last_error = failures[0][1] if failures else None
            if failures:
                return min(delay for delay, _ in failures)
        return None

    def _deliver(self, notification_id: int, payload: dict[str, Any]) -> tuple[float | None, str]:
        """One POST and its recorded outcome: the delay before retrying (None when done) and
        what went wrong. Runs on a pool thread: its lines carry the payload's notificationId
        (sidecar.core.correlation), bound here, which the service is sent as X-Request-ID too."""
        with correlation.bound(payload.get("notificationId")) as request_id:
            started = time.perf_counter()
            status: int | None = None
            error: str | None = None
            headers = {**self._headers, "X-Request-ID": request_id}
            try:
                answer = self._client.post(self._url, json=payload, headers=headers)
                status = answer.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            elapsed_ms = (time.perf_counter() - started) * 1000
            delay = self._record(notification_id, status, error, elapsed_ms)
        return delay, error or f"HTTP {status}"

    def _record(
        self, notification_id: int, status: int | None, error: str | None, elapsed_ms: float
    ) -> float | None:
        """Writes the attempt and its outcome; the delay before retrying, or None when done."""
        now = self.clock()
        delay: float | None = None
        with Session(self._engine) as session:
            row = session.get(FindingNotification, notification_id)
            assert row is not None
            row.attempts += 1
            session.add(
                NotificationAttempt(
                    notification_id=notification_id,
                    attempted_at=now,
                    http_status=status,
                    error=error,
                    duration_ms=round(elapsed_ms, 1),
                )
            )
            if status is not None and 200 <= status < 300:
                row.status = DeliveryStatus.DELIVERED
                row.delivered_at, row.next_attempt_at, row.last_error = now, None, None
                outcome = "delivered"
            elif status is None or status >= 500 or status in _RETRYABLE:
                delay = backoff_delay(row.attempts, cap=self._max_delay)
                row.next_attempt_at = now + timedelta(seconds=delay)
                row.last_error = error or f"HTTP {status}"
                # The attempts table has every try; the audit trail marks the outage's start.
                outcome = "retrying" if row.attempts == 1 else ""
            else:
                row.status, row.next_attempt_at = DeliveryStatus.REFUSED, None
                row.last_error = f"HTTP {status}: refused by the notification service"
                outcome = "refused"
            session.add(row)
            if row.status == DeliveryStatus.DELIVERED and row.kind == NotificationKind.RAISED:
                assert row.finding_id is not None
                mark_notified(session, row.finding_id, now)
            if outcome:
                entity_type, entity_id = subject_of(row)
                audit.record(
                    session,
                    actor=NOTIFIER_ACTOR,
                    action=f"{entity_type}.notification_{outcome}",
                    entity_type=entity_type,
                    entity_id=entity_id,
                    notification_id=row.id,
                    http_status=status,
                    attempts=row.attempts,
                )
            session.commit()
        if delay is not None:
            log.warning(
                "notification %d not delivered (%s); next attempt in %.1f s",
                notification_id,
                error or f"HTTP {status}",
                delay,
            )
        return delay


def subject_of(row: FindingNotification) -> tuple[str, int | None]:
    """What a notification is about, as the audit trail names it."""
    if row.kind == NotificationKind.EMERGENCY_ACCESS:
        return "emergency_access", row.emergency_access_id
    if row.study_id is not None and row.finding_id is None:
        return "study", row.study_id
    return "critical_finding", row.finding_id


def mark_notified(session: Session, finding_id: int, now: datetime) -> None:
    """The ordering provider has it: PENDING -> NOTIFIED, in the delivery's own transaction.
    A conditional UPDATE that leaves the version alone: an acknowledgement or escalation racing
    with it wins either way (this changes only a finding still PENDING) and never gets a
    409 because a notification happened to be delivered meanwhile."""
    move_if(
        session,
        CriticalFinding,
        finding_id,
        FINDING_WORKFLOW,
        FindingStatus.PENDING,
        FindingStatus.NOTIFIED,
        at=now,
    )


def due_batch(session: Session, now: datetime, size: int) -> list[FindingNotification]:
    """The oldest due notifications, at most `size`, each the oldest pending one of its
    finding: a finding's next notification (its escalation, say) waits until the one before it
    is settled."""
    earlier = aliased(FindingNotification)
    return list(
        session.exec(
            select(FindingNotification)
            .where(
                FindingNotification.status == DeliveryStatus.PENDING,
                col(FindingNotification.next_attempt_at) <= now,
                ~exists().where(
                    col(earlier.finding_id) == col(FindingNotification.finding_id),
                    col(earlier.status) == DeliveryStatus.PENDING,
                    col(earlier.id) < col(FindingNotification.id),
                ),
            )
            .order_by(col(FindingNotification.id))
            .limit(size)
        )
    )


def seconds_until_next(session: Session, now: datetime) -> float | None:
    return seconds_until_next_attempt(
        session,
        FindingNotification.next_attempt_at,
        FindingNotification.status == DeliveryStatus.PENDING,
        now=now,
    )


def _id_of(row: FindingNotification) -> int:
    assert row.id is not None
    return row.id


def _id(finding: CriticalFinding) -> int:
    assert finding.id is not None
    return finding.id

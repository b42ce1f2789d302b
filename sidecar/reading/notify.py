"""Reading notifications (a study taken over, a study overdue) through the critical findings'
durable notification outbox (sidecar.findings.notifications.enqueue): ids and links only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlmodel import Session

from sidecar.findings.models import FindingNotification, NotificationKind
from sidecar.findings.notifications import enqueue
from sidecar.reading.policy import ReadingPolicy, as_priority
from sidecar.studies.models import Study


def queue_reading_notification(
    session: Session,
    study: Study,
    kind: NotificationKind,
    *,
    recipient: str | None,
    role: str,
    policy: ReadingPolicy,
    now: datetime,
    actor: str,
    level: int = 0,
    **detail: Any,
) -> FindingNotification:
    """Queues one message about `study` in the caller's transaction. No recipient (no
    escalation contact set) or no notification service: kept as NOT_CONFIGURED, audited."""
    link = f"{policy.public_url}/api/studies/{study.id}"
    event = "reading.overdue" if kind == NotificationKind.READING_OVERDUE else "reading.taken_over"
    return enqueue(
        session,
        configured=policy.notify and bool(recipient),
        now=now,
        actor=actor,
        audit_detail={"recipient_role": role},
        study_id=study.id,
        kind=kind,
        escalation_level=level,
        recipient=recipient,
        payload={
            "event": event,
            "notificationId": str(uuid.uuid4()),
            "studyId": study.id,
            "studyInstanceUID": study.study_instance_uid,
            "accessionNumber": study.accession_number,
            "priority": as_priority(study.priority).value,
            "recipient": {"id": recipient, "role": role},
            "link": link,
            **detail,
        },
    )

"""Critical finding test helpers: a clock the test moves, and raising a finding over the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from sidecar.findings import service as critical_findings
from sidecar.findings.models import FindingNotification, NotificationAttempt

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def raise_finding(
    client: TestClient,
    radiologist: dict[str, str],
    study_id: int,
    severity: str = "CRITICAL",
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "studyId": study_id,
        "severity": severity,
        "description": "Acute left subdural haematoma with 12 mm midline shift",
        **extra,
    }
    response = client.post("/api/critical-findings", json=body, headers=radiologist)
    assert response.status_code == 201, response.text
    finding: dict[str, Any] = response.json()
    return finding


def notification_rows(engine: Any, finding_id: int) -> list[FindingNotification]:
    with Session(engine) as session:
        return critical_findings.notifications(session, finding_id)


def attempt_rows(engine: Any, notification_id: int) -> list[NotificationAttempt]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(NotificationAttempt)
                .where(NotificationAttempt.notification_id == notification_id)
                .order_by(col(NotificationAttempt.id))
            ).all()
        )


def at(minutes: float) -> str:
    """T0 + minutes as the API writes it (UTC, 'Z')."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

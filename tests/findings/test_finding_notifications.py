"""Webhook delivery of critical finding notifications, against a real HTTP server on loopback:
delivered with the expected payload, retried through an outage and 5xx answers, refused on
4xx, and still delivered after the sidecar restarts. Waits poll with a deadline; no sleeps."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.findings.models import (
    CriticalFinding,
    DeliveryStatus,
    FindingNotification,
    NotificationKind,
)
from sidecar.findings.notifications import FindingNotifier, due_batch
from sidecar.main import create_app

from builders import audit_events
from finding_helpers import attempt_rows, notification_rows, raise_finding
from reporting import add_user, ordered_study
from stack import wait_for
from testapp import USER_PASSWORD, engine_of, login, service_of
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """Not started: each test decides whether the service is up."""
    service = WebhookReceiver()
    yield service
    service.stop()


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "notification_service_url": receiver.url,
            "notification_timeout": 2.0,
            # Retries come quickly enough for a test to see several.
            "notification_retry_max_delay": 0.2,
            "public_url": "https://radiology.example.org",
            "notification_service_token": "webhook-secret-for-tests",
        }
    )


@pytest.fixture
def study_id(app: FastAPI, client: TestClient, headers_for: Callable[[Role], Headers]) -> int:
    return ordered_study(app, client, headers_for(Role.TECHNOLOGIST))[0]


def delivered(app: FastAPI, finding_id: int) -> FindingNotification | None:
    rows = notification_rows(engine_of(app), finding_id)
    return rows[0] if rows and rows[0].status == DeliveryStatus.DELIVERED else None


def attempts_made(app: FastAPI, finding_id: int, count: int) -> FindingNotification | None:
    rows = notification_rows(engine_of(app), finding_id)
    return rows[0] if rows and rows[0].attempts >= count else None


def test_a_new_finding_reaches_the_notification_service(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: Headers,
    study_id: int,
) -> None:
    receiver.start()

    finding = raise_finding(client, radiologist, study_id, "HIGH")

    [payload] = receiver.wait_for_count(1)
    row = wait_for(lambda: delivered(app, finding["id"]), timeout=10, what="delivered")
    assert payload == {
        "event": "critical_finding.raised",
        "notificationId": row.payload["notificationId"],
        "findingId": finding["id"],
        "severity": "HIGH",
        "raisedAt": payload["raisedAt"],
        "acknowledgeBy": payload["acknowledgeBy"],
        "escalationLevel": 0,
        "recipient": {"id": "DR-0042", "role": "ordering_provider", "name": "HOUSE^GREGORY"},
        "studyId": study_id,
        "studyInstanceUID": payload["studyInstanceUID"],
        "accessionNumber": payload["accessionNumber"],
        "orderId": finding["orderId"],
        "reportId": None,
        "link": f"https://radiology.example.org/api/critical-findings/{finding['id']}",
        "acknowledgeUrl": (
            f"https://radiology.example.org/api/critical-findings/{finding['id']}/acknowledge"
        ),
    }
    assert payload["accessionNumber"] and payload["studyInstanceUID"]
    assert payload["acknowledgeBy"] is not None
    deadline = datetime.fromisoformat(payload["acknowledgeBy"])
    assert deadline - datetime.fromisoformat(payload["raisedAt"]) == timedelta(hours=2)  # HIGH
    # Nothing about the patient beyond ids: no name, birth date, patient id or finding text.
    # The generated ids are left out of the text checked: a random accession may hold "1970".
    ids = ("accessionNumber", "studyInstanceUID", "notificationId")
    text = json.dumps({key: value for key, value in payload.items() if key not in ids})
    for private in ("DOE", "JANE", "19700101", "1970-01-01", "PAT-0001", "subdural"):
        assert private not in text
    assert [a.http_status for a in attempt_rows(engine_of(app), row.id or 0)] == [200]
    assert receiver.authorizations == ["Bearer webhook-secret-for-tests"]
    wait_for(
        lambda: (
            client.get(f"/api/critical-findings/{finding['id']}", headers=radiologist).json()[
                "status"
            ]
            == "NOTIFIED"
        ),
        timeout=10,
        what="finding NOTIFIED",
    )
    assert audit_events(engine_of(app), "critical_finding.notification_delivered")


def test_a_service_that_is_down_gets_the_notification_once_it_is_back(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: Headers,
    study_id: int,
) -> None:
    finding = raise_finding(client, radiologist, study_id)  # nothing listens yet
    wait_for(lambda: attempts_made(app, finding["id"], 3), timeout=15, what="3 failed attempts")
    waiting = client.get("/health").json()["notifications"]
    assert (waiting["enabled"], waiting["pending"], waiting["refused"]) == (True, 1, 0)
    assert waiting["lastError"]

    receiver.start()

    row = wait_for(lambda: delivered(app, finding["id"]), timeout=15, what="delivered")
    assert len(receiver.received) == 1
    assert receiver.received[0]["notificationId"] == row.payload["notificationId"]
    attempts = attempt_rows(engine_of(app), row.id or 0)
    assert len(attempts) == row.attempts >= 4
    assert all(a.http_status is None and a.error for a in attempts[:-1])
    assert (attempts[-1].http_status, attempts[-1].error) == (200, None)
    # The audit trail marks the outage's start and the delivery, not every retry.
    assert len(audit_events(engine_of(app), "critical_finding.notification_retrying")) == 1
    assert len(audit_events(engine_of(app), "critical_finding.notification_delivered")) == 1
    assert client.get("/health").json()["notifications"]["pending"] == 0


def test_server_errors_are_retried_with_the_same_notification(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: Headers,
    study_id: int,
) -> None:
    receiver.answers = [500, 503, 429]
    receiver.start()

    finding = raise_finding(client, radiologist, study_id)

    row = wait_for(lambda: delivered(app, finding["id"]), timeout=15, what="delivered")
    assert len(receiver.received) == 4
    assert len({r["notificationId"] for r in receiver.received}) == 1
    attempts = attempt_rows(engine_of(app), row.id or 0)
    assert [a.http_status for a in attempts] == [500, 503, 429, 200]


def test_a_refusal_is_kept_and_not_retried(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: Headers,
    study_id: int,
) -> None:
    receiver.answers = [422]
    receiver.start()
    finding = raise_finding(client, radiologist, study_id)

    def refused() -> FindingNotification | None:
        rows = notification_rows(engine_of(app), finding["id"])
        return rows[0] if rows and rows[0].status == DeliveryStatus.REFUSED else None

    row = wait_for(refused, timeout=10, what="refused")
    assert row.attempts == 1 and row.last_error and "422" in row.last_error
    # A later notification still goes (the refusal held nothing up).
    second = raise_finding(client, radiologist, study_id)
    wait_for(lambda: delivered(app, second["id"]), timeout=10, what="second delivered")
    assert len(receiver.received) == 2
    assert audit_events(engine_of(app), "critical_finding.notification_refused")
    detail = client.get(f"/api/critical-findings/{finding['id']}", headers=radiologist).json()
    assert detail["notifications"][0]["status"] == "REFUSED"
    assert detail["status"] == "PENDING"  # escalation will go on: nobody was told


def test_a_notification_pending_at_shutdown_is_delivered_after_the_restart(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    first = create_app(settings)
    with TestClient(first) as client:
        add_user(first, "rad.one", Role.RADIOLOGIST)
        add_user(first, "tech.one", Role.TECHNOLOGIST)
        radiologist = login(client, "rad.one", USER_PASSWORD)
        study_id = ordered_study(first, client, login(client, "tech.one", USER_PASSWORD))[0]
        finding = raise_finding(client, radiologist, study_id)
        wait_for(lambda: attempts_made(first, finding["id"], 1), timeout=10, what="an attempt")
    assert receiver.received == []

    receiver.start()
    restarted = create_app(settings)
    with TestClient(restarted):
        row = wait_for(lambda: delivered(restarted, finding["id"]), timeout=15, what="delivered")

    assert len(receiver.received) == 1
    assert receiver.received[0]["findingId"] == finding["id"]
    assert row.attempts >= 2
    with Session(engine_of(restarted)) as session:
        stored = session.get(CriticalFinding, finding["id"])
        assert stored is not None and stored.status == "NOTIFIED"


def test_a_burst_of_findings_is_notified_in_parallel_one_per_finding(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: Headers,
    study_id: int,
) -> None:
    # The service's own notifier is stopped; one of the test's sends what piled up, in one round.
    service_of(app, FindingNotifier).stop()
    findings = [raise_finding(client, radiologist, study_id, "CRITICAL") for _ in range(3)]
    receiver.gather = 3
    receiver.start()
    notifier = FindingNotifier(engine_of(app), receiver.url, timeout=10)
    try:
        assert notifier.run_once() is None
    finally:
        notifier.stop()

    assert receiver.most_in_flight == 3  # all three POSTs were in flight at once
    assert sorted(p["findingId"] for p in receiver.received) == sorted(f["id"] for f in findings)
    for finding in findings:
        assert delivered(app, finding["id"]) is not None


def test_a_findings_next_notification_waits_for_the_one_before_it(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    study_id: int,
) -> None:
    service_of(app, FindingNotifier).stop()
    first, second = (raise_finding(client, radiologist, study_id, "HIGH") for _ in range(2))
    engine = engine_of(app)
    [raised] = notification_rows(engine, first["id"])
    now = raised.created_at + timedelta(minutes=1)
    with Session(engine) as session:
        # The first finding's notification is waiting out a back-off; its escalation is due.
        row = session.get(FindingNotification, raised.id)
        assert row is not None
        row.next_attempt_at = now + timedelta(seconds=30)
        session.add(row)
        escalated = FindingNotification(
            finding_id=first["id"],
            kind=NotificationKind.ESCALATED,
            escalation_level=1,
            recipient="DR-ONCALL",
            status=DeliveryStatus.PENDING,
            payload={},
            next_attempt_at=now,
            created_at=now,
        )
        session.add(escalated)
        session.commit()

        batch = due_batch(session, now, 4)

    assert [(r.finding_id, r.kind) for r in batch] == [(second["id"], NotificationKind.RAISED)]

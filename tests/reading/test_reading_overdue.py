"""The overdue worker with an injected clock (issue 14, item 4): a study not read by its target
is marked overdue and its assignee told, then the escalation contact; a study nobody holds goes
to the contact at once; every message through the notification outbox to a loopback receiver,
ids only; nothing twice across a restart.

The worker's own thread is stopped at the start of each test: the test moves the clock and
calls `run_once()` itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from sidecar.core.settings import Settings
from sidecar.findings.models import DeliveryStatus, FindingNotification
from sidecar.main import create_app
from sidecar.reading.overdue import ReadingOverdue

from builders import audit_events
from finding_helpers import T0, FakeClock
from reading_helpers import radiologist, ready_study
from reporting import SECTIONS
from testapp import ADMIN_PASSWORD, engine_of, login, service_of
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "notification_service_url": receiver.url,
            "reading_escalation_contact": "RAD-LEAD",
            "reading_escalation_minutes": 15,
        }
    )


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


@pytest.fixture
def overdue(app: FastAPI, client: TestClient) -> ReadingOverdue:
    worker = service_of(app, ReadingOverdue)
    worker.stop()  # the test drives it
    return worker


def rows(app: FastAPI) -> list[FindingNotification]:
    with Session(engine_of(app)) as session:
        return list(
            session.exec(
                select(FindingNotification)
                .where(col(FindingNotification.study_id).is_not(None))
                .order_by(col(FindingNotification.id))
            ).all()
        )


def test_the_assignee_is_told_then_the_escalation_contact(
    app: FastAPI,
    client: TestClient,
    overdue: ReadingOverdue,
    clock: FakeClock,
    receiver: WebhookReceiver,
    technologist: Headers,
    settings: Settings,
) -> None:
    stat = ready_study(app, client, technologist, now=T0, priority="STAT")
    routine = ready_study(app, client, technologist, now=T0, patient_id="PAT-0002")
    reader_id, reader = radiologist(app, client, "dr.reader")
    assert client.post(f"/api/studies/{stat}/claim", headers=reader).status_code == 200

    clock.advance(minutes=59)
    assert overdue.run_once() == 60.0  # the STAT study is due in a minute
    assert rows(app) == []

    clock.advance(minutes=1)
    assert overdue.run_once() == 15 * 60.0  # the escalation, 15 minutes on
    payload = receiver.wait_for_count(1)[0]
    assert payload["event"] == "reading.overdue"
    assert payload["recipient"] == {"id": "dr.reader", "role": "assigned_radiologist"}
    assert (payload["studyId"], payload["priority"]) == (stat, "STAT")
    assert payload["dueAt"] == "2026-11-23T09:00:00+00:00"
    assert payload["assignedTo"] == {"id": reader_id, "name": "dr.reader"}
    assert payload["escalationLevel"] == 1
    assert "DOE" not in str(payload) and "PAT-000" not in str(payload)
    item = client.get("/api/reading-worklist", headers=reader).json()["items"][0]
    assert (item["studyId"], item["overdue"]) == (stat, True)

    clock.advance(minutes=14)
    overdue.run_once()
    assert len(rows(app)) == 1
    clock.advance(minutes=1)
    overdue.run_once()
    payload = receiver.wait_for_count(2)[1]
    assert payload["recipient"] == {"id": "RAD-LEAD", "role": "escalation_contact"}
    assert payload["escalationLevel"] == 2
    # Nothing more for that study; the routine one is due 24 h after its images.
    assert overdue.run_once() == pytest.approx(
        (timedelta(hours=24) - timedelta(minutes=75)).total_seconds()
    )

    # Restarted (the first run stopped, a new app over the same database): nothing is sent
    # again.
    client.__exit__(None, None, None)
    again = create_app(settings, clock=clock)
    with TestClient(again):
        worker = service_of(again, ReadingOverdue)
        worker.stop()
        worker.run_once()
    assert [(n.recipient, n.escalation_level, n.status) for n in rows(app)] == [
        ("dr.reader", 1, DeliveryStatus.DELIVERED),
        ("RAD-LEAD", 2, DeliveryStatus.DELIVERED),
    ]
    assert len(receiver.received) == 2
    events = audit_events(engine_of(app), "study.reading_overdue")
    assert [(e.actor, e.entity_id, e.detail["priority"]) for e in events] == [
        ("system:reading-overdue", str(stat), "STAT")
    ]
    assert routine


def test_an_unheld_study_goes_to_the_contact_and_a_read_one_to_nobody(
    app: FastAPI,
    client: TestClient,
    overdue: ReadingOverdue,
    clock: FakeClock,
    receiver: WebhookReceiver,
    technologist: Headers,
) -> None:
    unheld = ready_study(app, client, technologist, now=T0, priority="URGENT")
    read = ready_study(app, client, technologist, now=T0, priority="URGENT", patient_id="P-2")
    _, reader = radiologist(app, client, "dr.reader")
    report = client.post("/api/reports", json={"studyId": read, **SECTIONS}, headers=reader).json()
    clock.advance(hours=3)
    assert client.post(f"/api/reports/{report['id']}/sign", headers=reader).status_code == 200

    clock.advance(hours=1)  # both due at 12:00
    overdue.run_once()
    payload = receiver.wait_for_count(1)[0]
    assert (payload["studyId"], payload["recipient"]["id"]) == (unheld, "RAD-LEAD")
    assert payload["assignedTo"] is None
    clock.advance(hours=5)
    assert overdue.run_once() is None
    assert [n.study_id for n in rows(app)] == [unheld]


def test_without_a_notification_service_the_step_is_recorded_as_not_sent(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(
        settings.model_copy(
            update={"notification_service_url": "", "reading_escalation_contact": ""}
        ),
        clock=clock,
    )
    with TestClient(app) as client:
        worker = service_of(app, ReadingOverdue)
        worker.stop()
        admin = login(client, "admin", ADMIN_PASSWORD)
        study = ready_study(app, client, admin, now=T0, priority="STAT")
        clock.advance(minutes=61)
        worker.run_once()
        assert [(n.status, n.recipient) for n in rows(app)] == [
            (DeliveryStatus.NOT_CONFIGURED, None)
        ]
        events = audit_events(engine_of(app), "study.notification_not_configured")
        assert [e.entity_id for e in events] == [str(study)]

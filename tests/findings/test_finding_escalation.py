"""Escalation with an injected clock: an unacknowledged finding goes to each contact in turn
and last to the fail-safe recipient, each step recorded and sent through the webhook outbox;
an acknowledged finding never escalates. And the ORU flag of a finding raised on a report.

The escalation worker's own thread is stopped at the start of each test: the test advances the
fake clock and calls `run_once()` itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.findings.escalation import FindingEscalation, FindingWorkers
from sidecar.findings.models import Severity
from sidecar.findings.policy import FindingPolicy
from sidecar.main import create_app
from sidecar.results.message_log import Hl7Direction, Hl7Message

from builders import audit_events
from finding_helpers import T0, FakeClock, at, notification_rows, raise_finding
from reporting import add_user, ordered_study, sign, write_report
from testapp import USER_PASSWORD, engine_of, login, service_of
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]
URL = "/api/critical-findings"


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "notification_service_url": receiver.url,
            "critical_finding_escalation_contacts": "DR-ONCALL,DR-CHIEF",
            "critical_finding_failsafe": "RAD-DESK",
        }
    )


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


@pytest.fixture
def escalation(app: FastAPI, client: TestClient) -> FindingEscalation:
    worker: FindingEscalation = service_of(app, FindingWorkers).escalation
    worker.stop()  # the test drives it
    return worker


def test_the_chain_runs_to_the_failsafe_recipient_each_step_recorded_and_sent(
    app: FastAPI,
    client: TestClient,
    escalation: FindingEscalation,
    clock: FakeClock,
    receiver: WebhookReceiver,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id = ordered_study(app, client, technologist)[0]
    finding = raise_finding(client, radiologist, study_id, "CRITICAL")
    path = f"{URL}/{finding['id']}"
    receiver.wait_for_count(1)

    clock.advance(minutes=29)
    assert escalation.run_once() == 60.0  # a minute before the deadline
    assert client.get(path, headers=radiologist).json()["escalationLevel"] == 0

    steps = []
    for minutes, recipient, role in [
        (30, "DR-ONCALL", "escalation_contact"),
        (60, "DR-CHIEF", "escalation_contact"),
        (90, "RAD-DESK", "failsafe"),
    ]:
        clock.now = T0 + timedelta(minutes=minutes)
        escalation.run_once()
        body = client.get(path, headers=radiologist).json()
        steps.append((body["status"], body["escalationLevel"], body["nextEscalationAt"]))
        payload = receiver.wait_for_count(len(steps) + 1)[-1]
        assert (payload["event"], payload["recipient"]["id"], payload["recipient"]["role"]) == (
            "critical_finding.escalated",
            recipient,
            role,
        )
        assert payload["escalationLevel"] == len(steps)

    assert steps == [
        ("ESCALATED", 1, at(60)),
        ("ESCALATED", 2, at(90)),
        ("ESCALATED", 3, None),  # the fail-safe recipient is the last step
    ]
    clock.advance(hours=5)
    assert escalation.run_once() is None
    rows = notification_rows(engine_of(app), finding["id"])
    assert [(n.kind, n.recipient) for n in rows] == [
        ("RAISED", "DR-0042"),
        ("ESCALATED", "DR-ONCALL"),
        ("ESCALATED", "DR-CHIEF"),
        ("ESCALATED", "RAD-DESK"),
    ]
    events = audit_events(engine_of(app), "critical_finding.escalated")
    assert [(e.detail["escalation_level"], e.detail["recipient"]) for e in events] == [
        (1, "DR-ONCALL"),
        (2, "DR-CHIEF"),
        (3, "RAD-DESK"),
    ]
    assert events[-1].detail["failsafe"] is True
    assert all(e.actor == "system:finding-escalation" for e in events)
    # The contact escalated to may now acknowledge it; the physician scope follows.
    add_user(app, "dr.oncall", Role.PHYSICIAN, provider_id="DR-ONCALL")
    oncall = login(client, "dr.oncall", USER_PASSWORD)
    acknowledged = client.post(f"{path}/acknowledge", json={"method": "ELECTRONIC"}, headers=oncall)
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["escalationLevel"] == 3


def test_an_acknowledged_finding_never_escalates(
    app: FastAPI,
    client: TestClient,
    escalation: FindingEscalation,
    clock: FakeClock,
    receiver: WebhookReceiver,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id = ordered_study(app, client, technologist)[0]
    finding = raise_finding(client, radiologist, study_id, "CRITICAL")
    clock.advance(minutes=5)
    add_user(app, "dr.house", Role.PHYSICIAN, provider_id="DR-0042")
    physician = login(client, "dr.house", USER_PASSWORD)
    response = client.post(
        f"{URL}/{finding['id']}/acknowledge", json={"method": "ELECTRONIC"}, headers=physician
    )
    assert response.status_code == 200

    clock.advance(hours=10)
    assert escalation.run_once() is None

    body = client.get(f"{URL}/{finding['id']}", headers=radiologist).json()
    assert (body["status"], body["escalationLevel"]) == ("ACKNOWLEDGED", 0)
    assert len(notification_rows(engine_of(app), finding["id"])) == 1
    assert audit_events(engine_of(app), "critical_finding.escalated") == []
    # A physician never notified of it cannot acknowledge it (nor see it).
    add_user(app, "dr.chief", Role.PHYSICIAN, provider_id="DR-CHIEF")
    chief = login(client, "dr.chief", USER_PASSWORD)
    assert client.get(f"{URL}/{finding['id']}", headers=chief).status_code == 404


def test_without_an_ordering_provider_the_first_contact_is_notified_at_once(
    app: FastAPI,
    client: TestClient,
    escalation: FindingEscalation,
    receiver: WebhookReceiver,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id = ordered_study(app, client, technologist, provider_id=None)[0]
    finding = raise_finding(client, radiologist, study_id, "MODERATE")
    assert finding["notifications"] == []
    assert finding["nextEscalationAt"] == at(0)

    escalation.run_once()

    [payload] = receiver.wait_for_count(1)
    assert (payload["recipient"]["id"], payload["escalationLevel"]) == ("DR-ONCALL", 1)
    body = client.get(f"{URL}/{finding['id']}", headers=radiologist).json()
    assert body["status"] == "ESCALATED"
    assert body["nextEscalationAt"] == at(24 * 60)  # MODERATE: 24 hours each step
    assert audit_events(engine_of(app), "critical_finding.no_ordering_provider")


def test_a_low_finding_has_no_deadline_and_never_escalates(
    app: FastAPI,
    client: TestClient,
    escalation: FindingEscalation,
    clock: FakeClock,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id = ordered_study(app, client, technologist)[0]
    finding = raise_finding(client, radiologist, study_id, "LOW")
    assert (finding["acknowledgeBy"], finding["nextEscalationAt"]) == (None, None)
    clock.advance(days=30)
    assert escalation.run_once() is None
    assert client.get(f"{URL}/{finding['id']}", headers=radiologist).json()["status"] in (
        "PENDING",
        "NOTIFIED",
    )


def test_the_chain_and_deadlines_come_from_the_settings() -> None:
    policy = FindingPolicy.from_settings(
        Settings(
            critical_finding_escalation_contacts=" A , B,,",
            critical_finding_failsafe="SAFE",
            critical_finding_ack_minutes_high=45,
            critical_finding_ack_minutes_low=0,
        )
    )
    assert [policy.recipient_at(n) for n in range(5)] == [None, "A", "B", "SAFE", None]
    assert policy.deadline(Severity.CRITICAL) == timedelta(minutes=30)
    assert policy.deadline(Severity.HIGH) == timedelta(minutes=45)
    assert policy.deadline(Severity.MODERATE) == timedelta(hours=24)
    assert policy.deadline(Severity.LOW) is None
    assert policy.notify is False


def test_findings_raised_on_a_report_are_flagged_in_its_oru(
    settings: Settings, clock: FakeClock
) -> None:
    # A HIS is configured (nothing listens): results are queued in hl7_message, not delivered.
    app = create_app(
        settings.model_copy(update={"his_mllp_host": "127.0.0.1", "his_mllp_port": 9}),
        clock=clock,
    )
    with TestClient(app) as client:
        add_user(app, "rad.one", Role.RADIOLOGIST)
        add_user(app, "tech.one", Role.TECHNOLOGIST)
        radiologist = login(client, "rad.one", USER_PASSWORD)
        study_id = ordered_study(app, client, login(client, "tech.one", USER_PASSWORD))[0]
        report = write_report(client, radiologist, study_id)
        raise_finding(client, radiologist, study_id, "CRITICAL", reportId=report["id"])
        raise_finding(
            client,
            radiologist,
            study_id,
            "MODERATE",
            reportId=report["id"],
            description="Incidental 8 mm lung nodule",
        )
        raise_finding(client, radiologist, study_id, "HIGH", description="Not on the report")
        sign(client, radiologist, report["id"])

        with Session(engine_of(app)) as session:
            raw = session.exec(
                select(Hl7Message.raw)
                .where(
                    Hl7Message.direction == Hl7Direction.OUTBOUND,
                    Hl7Message.message_type == "ORU^R01",  # after the order's IP status update
                )
                .order_by(col(Hl7Message.id))
            ).first()
    assert raw is not None
    flagged = [
        fields
        for segment in raw.split("\r")
        if (fields := segment.split("|"))[0] == "OBX" and fields[3].startswith("CRITRES")
    ]
    assert [(f[5], f[8]) for f in flagged] == [
        ("CRITICAL: Acute left subdural haematoma with 12 mm midline shift", "AA"),
        ("MODERATE: Incidental 8 mm lung nodule", "A"),
    ]

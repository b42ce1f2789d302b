"""Critical findings over the API: raise, read, lists, acknowledge, PATCH rules, roles, metrics.

No notification service is configured here: every notification is recorded NOT_CONFIGURED
(delivery is in test_finding_notifications.py, escalation in test_finding_escalation.py). The
app reads a fake clock, so deadlines and minutes-to-acknowledge are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app

from builders import audit_events
from finding_helpers import FakeClock, at, raise_finding
from reporting import add_user, ordered_study, write_report
from testapp import engine_of, login

Headers = dict[str, str]
URL = "/api/critical-findings"


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


@pytest.fixture
def ordering_physician(app: FastAPI, client: TestClient) -> Headers:
    """The physician whose provider id the ordered study's order carries (DR-0042)."""
    add_user(app, "dr.house", Role.PHYSICIAN, provider_id="DR-0042")
    return login(client, "dr.house", "user-password-for-tests")


@pytest.fixture
def study_id(app: FastAPI, client: TestClient, technologist: Headers) -> int:
    return ordered_study(app, client, technologist)[0]


def test_a_radiologist_raises_a_finding_and_its_ordering_provider_is_to_be_notified(
    app: FastAPI, client: TestClient, radiologist: Headers, study_id: int
) -> None:
    finding = raise_finding(client, radiologist, study_id, recommendation="Call neurosurgery")

    assert finding["status"] == "PENDING"
    assert finding["severity"] == "CRITICAL"
    assert finding["studyId"] == study_id and finding["orderId"] is not None
    assert finding["recommendation"] == "Call neurosurgery"
    assert finding["acknowledgeBy"] == at(30)
    assert finding["nextEscalationAt"] == finding["acknowledgeBy"]
    [notification] = finding["notifications"]
    assert notification["kind"] == "RAISED"
    assert notification["recipient"] == "DR-0042"
    assert notification["status"] == "NOT_CONFIGURED"  # no NOTIFICATION_SERVICE_URL here
    assert [e.entity_id for e in audit_events(engine_of(app), "critical_finding.created")] == [
        str(finding["id"])
    ]
    assert audit_events(engine_of(app), "critical_finding.notification_not_configured")
    details = str([e.detail for e in audit_events(engine_of(app))])
    assert "DOE" not in details and "subdural" not in details


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"severity": "CRITICAL", "description": "x"}, "body.studyId"),
        ({"studyId": 1, "description": "x"}, "body.severity"),
        ({"studyId": 1, "severity": "URGENT", "description": "x"}, "body.severity"),
        ({"studyId": 1, "severity": "HIGH", "description": ""}, "body.description"),
        ({"studyId": 1, "severity": "HIGH", "description": "x", "extra": 1}, "body.extra"),
        ({"studyId": 0, "severity": "HIGH", "description": "x"}, "body.studyId"),
    ],
)
def test_a_finding_is_validated(
    client: TestClient, radiologist: Headers, body: dict[str, Any], location: str
) -> None:
    response = client.post(URL, json=body, headers=radiologist)
    assert response.status_code == 422, response.text
    assert location in [d["location"] for d in response.json()["error"]["details"]]


def test_a_finding_names_a_study_and_a_report_that_exist_and_belong_together(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    body = {"severity": "HIGH", "description": "Pneumothorax"}
    missing = client.post(URL, json={"studyId": 99999, **body}, headers=radiologist)
    assert missing.status_code == 404
    no_report = client.post(
        URL, json={"studyId": study_id, "reportId": 99999, **body}, headers=radiologist
    )
    assert no_report.status_code == 404
    other_study = ordered_study(app, client, technologist, patient_id="PAT-0002")[0]
    report = write_report(client, radiologist, other_study)
    mismatch = client.post(
        URL, json={"studyId": study_id, "reportId": report["id"], **body}, headers=radiologist
    )
    assert mismatch.status_code == 400
    assert "not a report of study" in mismatch.json()["error"]["message"]


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.PHYSICIAN, Role.ADMIN, Role.INTEGRATION])
def test_only_radiologists_raise_findings(
    client: TestClient, headers_for: Callable[[Role], Headers], study_id: int, role: Role
) -> None:
    body = {"studyId": study_id, "severity": "HIGH", "description": "x"}
    assert client.post(URL, json=body, headers=headers_for(role)).status_code == 403


def test_reading_findings_by_id_and_the_physicians_scope(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    technologist: Headers,
    ordering_physician: Headers,
    headers_for: Callable[[Role], Headers],
    study_id: int,
) -> None:
    finding = raise_finding(client, radiologist, study_id)
    path = f"{URL}/{finding['id']}"

    for reader in (radiologist, technologist, ordering_physician, headers_for(Role.ADMIN)):
        response = client.get(path, headers=reader)
        assert response.status_code == 200, response.text
        assert response.json()["notifications"][0]["recipient"] == "DR-0042"
    # A physician it was not sent to does not learn it exists; integration accounts read none.
    add_user(app, "dr.other", Role.PHYSICIAN, provider_id="DR-0099")
    other = login(client, "dr.other", "user-password-for-tests")
    assert client.get(path, headers=other).status_code == 404
    assert client.get(f"{URL}/pending", headers=other).json()["total"] == 0
    assert client.get(path, headers=headers_for(Role.INTEGRATION)).status_code == 403
    assert client.get(f"{URL}/99999", headers=radiologist).status_code == 404
    assert client.get(f"{URL}/not-a-number", headers=radiologist).status_code == 422


def test_lists_by_study_pending_and_severity(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    technologist: Headers,
    ordering_physician: Headers,
    clock: FakeClock,
    study_id: int,
) -> None:
    other_study = ordered_study(app, client, technologist, patient_id="PAT-0002")[0]
    first = raise_finding(client, radiologist, study_id, "CRITICAL")
    clock.advance(minutes=1)
    second = raise_finding(client, radiologist, study_id, "LOW")
    clock.advance(minutes=1)
    third = raise_finding(client, radiologist, other_study, "CRITICAL")
    acknowledged = client.post(
        f"{URL}/{first['id']}/acknowledge",
        json={"method": "ELECTRONIC"},
        headers=ordering_physician,
    )
    assert acknowledged.status_code == 200, acknowledged.text

    def ids(path: str, **params: Any) -> list[int]:
        response = client.get(f"{URL}{path}", headers=technologist, params=params)
        assert response.status_code == 200, response.text
        return [f["id"] for f in response.json()["items"]]

    assert ids(f"/study/{study_id}") == [second["id"], first["id"]]  # newest first
    assert ids(f"/study/{other_study}") == [third["id"]]
    assert ids("/pending") == [second["id"], third["id"]]  # longest waiting first
    assert ids("/pending", severity="CRITICAL") == [third["id"]]
    assert ids("/severity/CRITICAL") == [third["id"], first["id"]]
    assert ids("/severity/LOW") == [second["id"]]
    assert ids("", status="ACKNOWLEDGED") == [first["id"]]
    assert client.get(f"{URL}/severity/URGENT", headers=technologist).status_code == 422
    assert client.get(f"{URL}/pending?limit=0", headers=technologist).status_code == 422
    page = client.get(f"{URL}/pending", headers=technologist, params={"limit": 1}).json()
    assert (page["total"], len(page["items"])) == (2, 1)


def test_the_notified_physician_acknowledges_once(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    ordering_physician: Headers,
    clock: FakeClock,
    study_id: int,
) -> None:
    finding = raise_finding(client, radiologist, study_id)
    clock.advance(minutes=12)
    path = f"{URL}/{finding['id']}/acknowledge"

    response = client.post(
        path,
        json={"method": "ELECTRONIC", "notes": "Patient sent to neurosurgery"},
        headers=ordering_physician,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ACKNOWLEDGED"
    assert body["acknowledgedAt"] == at(12)
    assert body["acknowledgedByName"] == "DR-0042"
    assert body["acknowledgementMethod"] == "ELECTRONIC"
    assert body["nextEscalationAt"] is None
    again = client.post(path, json={"method": "ELECTRONIC"}, headers=ordering_physician)
    assert again.status_code == 409
    assert "only a finding not yet acknowledged" in again.json()["error"]["message"]
    [event] = audit_events(engine_of(app), "critical_finding.acknowledged")
    assert event.detail["minutes"] == 12.0 and event.detail["on_behalf"] is False


def test_a_radiologist_records_a_read_back_phone_call_on_the_receivers_behalf(
    client: TestClient, radiologist: Headers, headers_for: Callable[[Role], Headers], study_id: int
) -> None:
    path = f"{URL}/{raise_finding(client, radiologist, study_id)['id']}/acknowledge"
    call = {"method": "PHONE", "acknowledgedByName": "Dr G. House"}

    no_read_back = client.post(path, json=call, headers=radiologist)
    assert no_read_back.status_code == 400
    assert "read back" in no_read_back.json()["error"]["message"]
    nameless = client.post(
        path, json={"method": "PHONE", "readBackConfirmed": True}, headers=radiologist
    )
    assert nameless.status_code == 400
    electronic = client.post(
        path, json={**call, "method": "ELECTRONIC", "readBackConfirmed": True}, headers=radiologist
    )
    assert electronic.status_code == 400
    assert client.post(path, json={"method": "FAX"}, headers=radiologist).status_code == 422
    assert (
        client.post(path, json={**call}, headers=headers_for(Role.TECHNOLOGIST)).status_code == 403
    )
    assert client.post(path, json={**call}, headers=headers_for(Role.ADMIN)).status_code == 403

    read_back = "Left subdural haematoma, 12 mm shift"
    response = client.post(
        path,
        json={**call, "readBackConfirmed": True, "readBackText": read_back},
        headers=radiologist,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["acknowledgementMethod"]) == ("ACKNOWLEDGED", "PHONE")
    assert (body["readBackConfirmed"], body["readBackText"]) == (True, read_back)
    assert body["acknowledgedByName"] == "Dr G. House"
    assert (
        client.post(path, json={**call, "readBackConfirmed": True}, headers=radiologist).status_code
        == 409
    )


def test_patch_rules(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    ordering_physician: Headers,
    headers_for: Callable[[Role], Headers],
    clock: FakeClock,
    study_id: int,
) -> None:
    finding = raise_finding(client, radiologist, study_id, "MODERATE")
    path = f"{URL}/{finding['id']}"
    add_user(app, "rad.colleague", Role.RADIOLOGIST)
    colleague = login(client, "rad.colleague", "user-password-for-tests")
    admin = headers_for(Role.ADMIN)

    assert client.patch(path, json={}, headers=radiologist).status_code == 422
    assert client.patch(path, json={"severity": "SEVERE"}, headers=radiologist).status_code == 422
    assert client.patch(path, json={"severity": "HIGH"}, headers=colleague).status_code == 403
    assert client.patch(path, json={"description": "x"}, headers=admin).status_code == 403
    assert (
        client.patch(path, json={"severity": "HIGH"}, headers=ordering_physician).status_code == 403
    )
    assert (
        client.patch(f"{URL}/99999", json={"severity": "HIGH"}, headers=radiologist).status_code
        == 404
    )
    system_status = client.patch(path, json={"status": "NOTIFIED"}, headers=radiologist)
    assert system_status.status_code == 400
    early = client.patch(path, json={"status": "RESOLVED"}, headers=admin)
    assert early.status_code == 409  # not acknowledged yet

    clock.advance(minutes=10)
    upgraded = client.patch(
        path, json={"severity": "CRITICAL", "recommendation": None}, headers=radiologist
    )
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["severity"] == "CRITICAL"
    # The new severity's deadline counts from when the finding was raised.
    assert upgraded.json()["acknowledgeBy"] == at(30)
    assert upgraded.json()["nextEscalationAt"] == upgraded.json()["acknowledgeBy"]

    acknowledged = client.post(
        f"{path}/acknowledge", json={"method": "ELECTRONIC"}, headers=ordering_physician
    )
    assert acknowledged.status_code == 200
    after = client.patch(path, json={"description": "changed"}, headers=radiologist)
    assert after.status_code == 409
    resolved = client.patch(
        path, json={"status": "RESOLVED", "followUpNotes": "Evacuated"}, headers=admin
    )
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["followUpNotes"]) == (
        "RESOLVED",
        "Evacuated",
    )
    assert resolved.json()["resolvedAt"] is not None
    assert client.patch(path, json={"status": "RESOLVED"}, headers=radiologist).status_code == 409
    actions = [
        e.action for e in audit_events(engine_of(app)) if e.entity_type == "critical_finding"
    ]
    assert actions.count("critical_finding.updated") == 2


def test_metrics_per_severity(
    client: TestClient,
    radiologist: Headers,
    ordering_physician: Headers,
    headers_for: Callable[[Role], Headers],
    clock: FakeClock,
    study_id: int,
) -> None:
    fast = raise_finding(client, radiologist, study_id, "CRITICAL")
    slow = raise_finding(client, radiologist, study_id, "CRITICAL")
    waiting = raise_finding(client, radiologist, study_id, "CRITICAL")
    raise_finding(client, radiologist, study_id, "HIGH")

    def ack(finding: dict[str, Any]) -> None:
        response = client.post(
            f"{URL}/{finding['id']}/acknowledge",
            json={"method": "ELECTRONIC"},
            headers=ordering_physician,
        )
        assert response.status_code == 200, response.text

    clock.advance(minutes=10)
    ack(fast)
    clock.advance(minutes=30)
    ack(slow)  # 40 minutes: past CRITICAL's 30
    clock.advance(minutes=5)

    response = client.get(f"{URL}/metrics", headers=radiologist)

    assert response.status_code == 200, response.text
    by_severity = {m["severity"]: m for m in response.json()["severities"]}
    assert by_severity["CRITICAL"] == {
        "severity": "CRITICAL",
        "deadlineMinutes": 30,
        "count": 3,
        "acknowledged": 2,
        "pending": 1,
        "overdue": 1,
        "acknowledgedLate": 1,
        "medianMinutesToAcknowledge": 10.0,
        "p90MinutesToAcknowledge": 40.0,
    }
    high = by_severity["HIGH"]
    assert (high["count"], high["pending"], high["overdue"], high["deadlineMinutes"]) == (
        1,
        1,
        0,
        120,
    )
    assert high["medianMinutesToAcknowledge"] is None
    assert by_severity["MODERATE"]["count"] == 0
    assert by_severity["LOW"]["deadlineMinutes"] is None
    assert waiting["id"] > 0
    later = client.get(
        f"{URL}/metrics", headers=radiologist, params={"since": "2026-11-23T09:00:00+00:00"}
    )
    assert all(m["count"] == 0 for m in later.json()["severities"])
    assert (
        client.get(f"{URL}/metrics", headers=radiologist, params={"since": "yesterday"}).status_code
        == 422
    )
    assert client.get(f"{URL}/metrics", headers=ordering_physician).status_code == 403
    assert client.get(f"{URL}/metrics", headers=headers_for(Role.TECHNOLOGIST)).status_code == 403

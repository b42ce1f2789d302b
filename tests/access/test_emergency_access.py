"""Break the glass: a physician opens a patient outside their care for EMERGENCY_ACCESS_MINUTES
(an injected clock moves past the window), saying why; the grant is audited, listed for
administrators, and announced to the privacy contact through the notification outbox, whose
receiver here is a real HTTP server on loopback."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.studies.models import Study

from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from finding_helpers import T0, FakeClock
from reporting import add_user
from stack import wait_for
from testapp import USER_PASSWORD, engine_of, login
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]
REASON = "covering the emergency department: patient unresponsive on arrival"
_numbers = itertools.count(1)


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "notification_service_url": receiver.url,
            "privacy_contact": "PRIVACY-OFFICE",
            "emergency_access_minutes": 30,
        }
    )


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def _study(app: FastAPI, patient_id: str | None, issuer: str | None) -> int:
    uid = f"{UID_ROOT}.990.{next(_numbers)}"
    study_id = seed_study(
        engine_of(app), orthanc_study(uid, accession_number=None, patient_id=patient_id)
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.issuer_of_patient_id = issuer
        session.add(study)
        session.commit()
    return study_id


@pytest.fixture
def physician(app: FastAPI, client: TestClient) -> Headers:
    add_user(app, "dr.cover", Role.PHYSICIAN, provider_id="DR-COVER")
    return login(client, "dr.cover", USER_PASSWORD)


def test_access_to_the_patient_for_the_window_then_none(
    app: FastAPI,
    client: TestClient,
    clock: FakeClock,
    physician: Headers,
    admin_headers: Headers,
    receiver: WebhookReceiver,
) -> None:
    opened = _study(app, "MRN-9", "NORTH")
    same_patient = _study(app, "MRN-9", "NORTH")
    same_id_other_hospital = _study(app, "MRN-9", "SOUTH")
    for study_id in (opened, same_patient, same_id_other_hospital):
        assert client.get(f"/api/studies/{study_id}", headers=physician).status_code == 404

    granted = client.post(
        f"/api/studies/{opened}/emergency-access", json={"reason": REASON}, headers=physician
    )
    assert granted.status_code == 201, granted.text
    grant = granted.json()
    assert (grant["studyId"], grant["patientId"], grant["issuerOfPatientId"]) == (
        opened,
        "MRN-9",
        "NORTH",
    )
    assert grant["reason"] == REASON
    assert grant["expiresAt"].startswith((T0 + timedelta(minutes=30)).isoformat()[:19])

    # The patient's studies, not the other hospital's patient with the same id string.
    listed = client.get("/api/studies", headers=physician).json()
    assert ({item["id"] for item in listed["items"]}, listed["total"]) == (
        {opened, same_patient},
        2,
    )
    assert client.get(f"/api/studies/{same_patient}", headers=physician).status_code == 200
    assert client.get(f"/api/studies/{same_id_other_hospital}", headers=physician).status_code == (
        404
    )

    # Still open at the last minute of the window, closed after.
    clock.advance(minutes=29, seconds=59)
    assert client.get(f"/api/studies/{opened}", headers=physician).status_code == 200
    clock.advance(seconds=1)
    assert client.get(f"/api/studies/{opened}", headers=physician).status_code == 404
    assert client.get("/api/studies", headers=physician).json()["total"] == 0

    # Audited, and listed for administrators with the reason, active or not.
    [event] = audit_events(engine_of(app), "access.emergency_granted")
    assert (event.actor, event.entity_type, event.entity_id) == ("dr.cover", "study", str(opened))
    assert event.detail["emergency_access_id"] == grant["id"]
    review = client.get("/api/audit/emergency-access", headers=admin_headers).json()
    assert [(g["id"], g["username"], g["reason"]) for g in review["items"]] == [
        (grant["id"], "dr.cover", REASON)
    ]
    active = client.get(
        "/api/audit/emergency-access", params={"active": "true"}, headers=admin_headers
    )
    assert active.json()["total"] == 0
    expired = client.get(
        "/api/audit/emergency-access",
        params={"active": "false", "userId": grant["userId"]},
        headers=admin_headers,
    )
    assert expired.json()["total"] == 1

    # Announced to the privacy contact: ids and a link, no patient data, no free text.
    wait_for(lambda: receiver.received, timeout=15, what="the privacy notification")
    [notice] = receiver.received
    assert notice["event"] == "emergency_access.granted"
    assert notice["recipient"] == {"id": "PRIVACY-OFFICE", "role": "privacy_contact"}
    assert (notice["emergencyAccessId"], notice["studyId"]) == (grant["id"], opened)
    text = str(notice)
    assert "MRN-9" not in text and "DOE" not in text and "unresponsive" not in text


def test_refusals(
    app: FastAPI,
    client: TestClient,
    physician: Headers,
    radiologist: Headers,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    study_id = _study(app, "MRN-10", None)
    for reason in ("", "   ", "x" * 2001, None, 12):
        refused = client.post(
            f"/api/studies/{study_id}/emergency-access", json={"reason": reason}, headers=physician
        )
        assert refused.status_code == 422, (reason, refused.text)
    missing = client.post(f"/api/studies/{study_id}/emergency-access", json={}, headers=physician)
    assert missing.status_code == 422
    assert "reason" in missing.text
    unknown = client.post(
        "/api/studies/999999/emergency-access", json={"reason": REASON}, headers=physician
    )
    assert unknown.status_code == 404
    no_patient = _study(app, None, None)
    refused = client.post(
        f"/api/studies/{no_patient}/emergency-access", json={"reason": REASON}, headers=physician
    )
    assert refused.status_code == 409
    assert "no patient id" in refused.json()["error"]["message"]
    # Department roles need none: refused, as for the integration account.
    for headers in (radiologist, technologist, admin_headers):
        refused = client.post(
            f"/api/studies/{study_id}/emergency-access", json={"reason": REASON}, headers=headers
        )
        assert refused.status_code == 403
    assert (
        client.post(
            f"/api/studies/{study_id}/emergency-access", json={"reason": REASON}
        ).status_code
        == 401
    )
    # A physician who already cares for the patient is told so: no alarm for ordinary work.
    order = {
        "patientId": "MRN-10",
        "patientName": "DOE^JOHN",
        "modality": "CT",
        "procedureDescription": "CT head",
        "providerId": "DR-COVER",
    }
    assert client.post("/api/imaging-orders", json=order, headers=technologist).status_code == 201
    already = client.post(
        f"/api/studies/{study_id}/emergency-access", json={"reason": REASON}, headers=physician
    )
    assert already.status_code == 409
    # Only administrators review grants.
    for headers in (physician, radiologist):
        listed = client.get("/api/audit/emergency-access", headers=headers)
        assert listed.status_code == 403
    assert audit_events(engine_of(app), "access.emergency_granted") == []


def test_without_a_privacy_contact_the_grant_says_the_notice_was_not_sent(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings.model_copy(update={"privacy_contact": ""}), clock=clock)
    with TestClient(app) as client:
        add_user(app, "dr.cover", Role.PHYSICIAN, provider_id="DR-COVER")
        physician = login(client, "dr.cover", USER_PASSWORD)
        study_id = _study(app, "MRN-11", None)
        granted = client.post(
            f"/api/studies/{study_id}/emergency-access", json={"reason": REASON}, headers=physician
        )
        assert granted.status_code == 201, granted.text
        assert client.get(f"/api/studies/{study_id}", headers=physician).status_code == 200
        [event] = audit_events(engine_of(app), "emergency_access.notification_not_configured")
        assert event.entity_id == str(granted.json()["id"])

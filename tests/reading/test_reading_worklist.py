"""The reading worklist, assignment, claims and the 409 for a second reader (issue 14, items 1
and 2), through the API with an injected clock; the real-stack run is test_reading_stack.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.findings.models import FindingNotification, NotificationKind
from sidecar.main import create_app

from builders import audit_events
from finding_helpers import T0, FakeClock
from reading_helpers import radiologist, ready_study, worklist_ids
from reporting import SECTIONS
from testapp import engine_of
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]
WORKLIST = "/api/reading-worklist"


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(update={"notification_service_url": receiver.url})


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def test_worklist_is_stat_first_then_by_due_time_with_what_a_reader_needs(
    app: FastAPI,
    client: TestClient,
    clock: FakeClock,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    routine_old = ready_study(app, client, technologist, now=T0, priority="ROUTINE")
    urgent = ready_study(
        app, client, technologist, now=T0 + timedelta(minutes=5), priority="URGENT"
    )
    stat_late = ready_study(
        app, client, technologist, now=T0 + timedelta(minutes=20), priority="STAT"
    )
    stat_early = ready_study(
        app,
        client,
        technologist,
        now=T0 + timedelta(minutes=10),
        priority="STAT",
        patient_id="PAT-0002",
    )
    clock.now = T0 + timedelta(minutes=75)
    _, reader = radiologist(app, client, "dr.reader")

    response = client.get(WORKLIST, headers=reader)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["studyId"] for i in items] == [stat_early, stat_late, urgent, routine_old]
    first = items[0]
    assert first["priority"] == "STAT"
    assert first["dueAt"] == "2026-11-23T09:10:00Z"  # ready at 08:10, STAT target 60 minutes
    assert first["overdue"] is True
    assert items[1]["overdue"] is False  # due 09:20, now 09:15
    assert first["procedure"] == {"code": "CTHEAD", "description": "CT HEAD"}
    assert first["indication"] == "Fall, headache"
    assert first["assignedTo"] is None and first["claimedAt"] is None
    assert first["preliminary"] is False
    # PAT-0001 has three studies: the later ones count the earlier ones as priors.
    priors = {i["studyId"]: i["priorStudies"] for i in items}
    assert priors == {stat_early: 0, routine_old: 0, urgent: 1, stat_late: 2}

    # A preliminary report keeps the study in the queue, marked; a signed one takes it out.
    report = client.post(
        "/api/reports", json={"studyId": urgent, **SECTIONS}, headers=reader
    ).json()
    marked = {i["studyId"]: i for i in client.get(WORKLIST, headers=reader).json()["items"]}
    assert marked[urgent]["preliminary"] is True
    assert marked[urgent]["reportId"] == report["id"]
    signed = client.post(f"/api/reports/{report['id']}/sign", headers=reader)
    assert signed.status_code == 200, signed.text
    assert urgent not in worklist_ids(client, reader)
    # Administrators see the same queue.
    assert worklist_ids(client, admin_headers) == [stat_early, stat_late, routine_old]


def test_worklist_filters(
    app: FastAPI, client: TestClient, clock: FakeClock, technologist: Headers
) -> None:
    ct_head = ready_study(app, client, technologist, now=T0, priority="STAT")
    mr_knee = ready_study(
        app, client, technologist, now=T0, modality="MR", body_part="KNEE", procedure_code="MRKNEE"
    )
    ct_chest = ready_study(app, client, technologist, now=T0, body_part="CHEST")
    me, reader = radiologist(app, client, "dr.one")
    other, other_headers = radiologist(app, client, "dr.two")
    assert client.post(f"/api/studies/{ct_head}/claim", headers=reader).status_code == 200
    assert client.post(f"/api/studies/{mr_knee}/claim", headers=other_headers).status_code == 200
    clock.now = T0 + timedelta(hours=2)

    assert worklist_ids(client, reader, assignedTo="me") == [ct_head]
    assert worklist_ids(client, reader, assignedTo=str(other)) == [mr_knee]
    assert worklist_ids(client, reader, assignedTo="unassigned") == [ct_chest]
    assert worklist_ids(client, reader, modality="MR") == [mr_knee]
    assert worklist_ids(client, reader, bodyPart="chest") == [ct_chest]
    assert worklist_ids(client, reader, priority="STAT") == [ct_head]
    assert worklist_ids(client, reader, priority="ROUTINE") == [mr_knee, ct_chest]
    assert worklist_ids(client, reader, overdue="true") == [ct_head]
    assert worklist_ids(client, reader, overdue="false") == [mr_knee, ct_chest]
    item = client.get(WORKLIST, params={"assignedTo": "me"}, headers=reader).json()["items"][0]
    assert item["assignedTo"] == {"id": me, "name": "dr.one"}
    assert item["claimedAt"] == "2026-11-23T08:00:00Z"
    for bad in (
        {"assignedTo": "someone"},
        {"assignedTo": "0"},
        {"modality": "ct"},
        {"priority": "LOW"},
        {"overdue": "maybe"},
        {"limit": "0"},
    ):
        assert client.get(WORKLIST, params=bad, headers=reader).status_code == 422, bad


def test_only_radiologists_and_administrators_reach_the_queue(
    app: FastAPI,
    client: TestClient,
    headers_for: Callable[[Role], Headers],
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    reader_id, reader = radiologist(app, client, "dr.reader")
    for role in (Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION):
        headers = headers_for(role)
        assert client.get(WORKLIST, headers=headers).status_code == 403, role
        assert client.post(f"/api/studies/{study}/claim", headers=headers).status_code == 403
        assert client.post(f"/api/studies/{study}/release", headers=headers).status_code == 403
        assigned = client.put(
            f"/api/studies/{study}/assign", json={"radiologistId": reader_id}, headers=headers
        )
        assert assigned.status_code == 403, role
        assert client.delete(f"/api/studies/{study}/assign", headers=headers).status_code == 403
    assert client.get(WORKLIST).status_code == 401
    # A radiologist does not assign; an administrator does not claim.
    put = client.put(
        f"/api/studies/{study}/assign", json={"radiologistId": reader_id}, headers=reader
    )
    assert put.status_code == 403
    assert client.post(f"/api/studies/{study}/claim", headers=admin_headers).status_code == 403
    # Bad ids and bodies.
    for path in (
        "/api/studies/0/claim",
        "/api/studies/x/claim",
        "/api/studies/99999999999999999999/claim",
    ):
        assert client.post(path, headers=reader).status_code == 422, path
    assert client.post("/api/studies/424242/claim", headers=reader).status_code == 404
    for body in ({}, {"radiologistId": 0}, {"radiologistId": "x"}, {"radiologistId": 1, "x": 1}):
        response = client.put(f"/api/studies/{study}/assign", json=body, headers=admin_headers)
        assert response.status_code == 422, body
    unknown = client.put(
        f"/api/studies/{study}/assign", json={"radiologistId": 424242}, headers=admin_headers
    )
    assert unknown.status_code == 400
    not_a_reader = client.put(
        f"/api/studies/{study}/assign", json={"radiologistId": 1}, headers=admin_headers
    )
    assert not_a_reader.status_code == 400
    assert "not an active radiologist" in not_a_reader.json()["error"]["message"]
    claim = client.post(f"/api/studies/{study}/claim", json={"takeOver": "perhaps"}, headers=reader)
    assert claim.status_code == 422


def test_a_held_study_is_reported_by_its_holder_only_until_taken_over(
    app: FastAPI,
    client: TestClient,
    clock: FakeClock,
    receiver: WebhookReceiver,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    study = ready_study(app, client, technologist, now=T0, priority="STAT")
    first_id, first = radiologist(app, client, "dr.first")
    second_id, second = radiologist(app, client, "dr.second")

    assigned = client.put(
        f"/api/studies/{study}/assign", json={"radiologistId": first_id}, headers=admin_headers
    )
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignedTo"] == {"id": first_id, "name": "dr.first"}
    assert assigned.json()["assignedBy"] == "admin"

    # The second reader can neither claim it, nor write its report.
    refused = client.post(f"/api/studies/{study}/claim", headers=second)
    assert refused.status_code == 409
    assert "dr.first" in refused.json()["error"]["message"]
    created = client.post("/api/reports", json={"studyId": study, **SECTIONS}, headers=second)
    assert created.status_code == 409
    assert f"user {first_id}" in created.json()["error"]["message"]
    # The holder writes it; the second reader may not edit or sign it.
    report = client.post("/api/reports", json={"studyId": study, **SECTIONS}, headers=first)
    assert report.status_code == 201, report.text
    report_id = report.json()["id"]
    edit = client.patch(f"/api/reports/{report_id}", json={"impression": "x"}, headers=second)
    assert edit.status_code == 409 and "dr.first" in edit.json()["error"]["message"]
    assert client.post(f"/api/reports/{report_id}/sign", headers=second).status_code == 409
    # Nor release it.
    assert client.post(f"/api/studies/{study}/release", headers=second).status_code == 409

    # Taking over: audited, the previous holder told through the outbox.
    clock.advance(minutes=3)
    taken = client.post(f"/api/studies/{study}/claim", json={"takeOver": True}, headers=second)
    assert taken.status_code == 200, taken.text
    assert taken.json()["assignedTo"] == {"id": second_id, "name": "dr.second"}
    assert taken.json()["claimedAt"] == "2026-11-23T08:03:00Z"
    events = audit_events(engine_of(app), "study.reading_taken_over")
    assert [(e.actor, e.entity_id, e.detail["previous_radiologist_id"]) for e in events] == [
        ("dr.second", str(study), first_id)
    ]
    payload = receiver.wait_for_count(1)[0]
    assert payload["event"] == "reading.taken_over"
    assert payload["recipient"] == {"id": "dr.first", "role": "previous_holder"}
    assert payload["studyId"] == study
    assert payload["takenOverBy"] == {"id": second_id, "name": "dr.second"}
    assert "DOE" not in str(payload) and "PAT-0001" not in str(payload)
    # Now the first is the one refused, and the second edits.
    assert (
        client.patch(
            f"/api/reports/{report_id}", json={"impression": "y"}, headers=first
        ).status_code
        == 409
    )
    assert (
        client.patch(
            f"/api/reports/{report_id}", json={"impression": "y"}, headers=second
        ).status_code
        == 200
    )

    # Released: back in the queue unassigned, and anyone may claim it.
    released = client.post(f"/api/studies/{study}/release", headers=second)
    assert released.status_code == 200 and released.json()["assignedTo"] is None
    assert worklist_ids(client, first, assignedTo="unassigned") == [study]
    assert client.post(f"/api/studies/{study}/claim", headers=first).status_code == 200
    # Claiming what one holds changes nothing; an administrator unassigns.
    assert client.post(f"/api/studies/{study}/claim", headers=first).status_code == 200
    unassigned = client.delete(f"/api/studies/{study}/assign", headers=admin_headers)
    assert unassigned.status_code == 200 and unassigned.json()["assignedTo"] is None
    actions = [
        e.action for e in audit_events(engine_of(app)) if e.action.startswith("study.reading")
    ]
    assert actions == [
        "study.reading_assigned",
        "study.reading_taken_over",
        "study.reading_released",
        "study.reading_claimed",
        "study.reading_unassigned",
    ]
    with Session(engine_of(app)) as session:
        rows = session.exec(
            select(FindingNotification).where(col(FindingNotification.study_id) == study)
        ).all()
    assert [(n.kind, n.recipient) for n in rows] == [
        (NotificationKind.READING_TAKEOVER, "dr.first")
    ]


def test_writing_a_report_claims_an_unheld_study(
    app: FastAPI, client: TestClient, technologist: Headers
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    author_id, author = radiologist(app, client, "dr.author")
    _, other = radiologist(app, client, "dr.other")
    assert (
        client.post("/api/reports", json={"studyId": study, **SECTIONS}, headers=author).status_code
        == 201
    )
    item = client.get(WORKLIST, headers=other).json()["items"][0]
    assert item["assignedTo"] == {"id": author_id, "name": "dr.author"}
    assert client.post(f"/api/studies/{study}/claim", headers=other).status_code == 409


def test_a_study_not_ready_to_read_cannot_be_claimed(
    app: FastAPI, client: TestClient, technologist: Headers
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    _, reader = radiologist(app, client, "dr.reader")
    report = client.post("/api/reports", json={"studyId": study, **SECTIONS}, headers=reader).json()
    assert client.post(f"/api/reports/{report['id']}/sign", headers=reader).status_code == 200
    _, other = radiologist(app, client, "dr.other")
    refused = client.post(f"/api/studies/{study}/claim", headers=other)
    assert refused.status_code == 409 and "FINAL" in refused.json()["error"]["message"]

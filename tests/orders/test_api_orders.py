"""Imaging orders over REST (seed 001 paths), and linking studies to their orders."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.audit import ORTHANC_SYNC_ACTOR
from sidecar.orders import matching as order_matching
from sidecar.orders import service as orders
from sidecar.orders.events import OrderEvents
from sidecar.orders.models import ImagingOrder
from sidecar.studies.models import Study, StudyStatus

from testapp import PHYSICIAN_PROVIDER_ID, engine_of, service_of

ORDER = {
    "patientId": "MRN-1001",
    "issuerOfPatientId": "HOSP",
    "patientName": "DOE^JANE",
    "patientBirthDate": "1970-02-03",
    "patientSex": "F",
    "modality": "CT",
    "procedureCode": "CTCHEST",
    "procedureDescription": "CT chest with contrast",
    "clinicalIndication": "persistent cough",
    "priority": "URGENT",
    "referringPhysician": "SMITH^JOHN",
    "scheduledAt": "2026-11-24T09:30:00+01:00",
}


def create(client: TestClient, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = client.post("/api/imaging-orders", json={**ORDER, **changes}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_created_order_is_scheduled_with_generated_identifiers(client, admin_headers):
    order = create(client, admin_headers)
    assert order["status"] == "SCHEDULED"
    assert order["scheduledAt"] == "2026-11-24T08:30:00Z"
    assert 1 <= len(order["accessionNumber"]) <= 16
    assert order["studyInstanceUID"].replace(".", "").isdigit()
    assert order["requestedProcedureId"] == order["accessionNumber"]
    assert order["source"] == "api"
    again = client.get(f"/api/imaging-orders/{order['id']}", headers=admin_headers).json()
    assert again == {**order, "performedProcedureSteps": []}  # no modality reported one yet


def test_order_without_a_time_waits_as_pending_until_scheduled(client, admin_headers):
    order = create(client, admin_headers, scheduledAt=None)
    assert order["status"] == "PENDING"
    patched = client.patch(
        f"/api/imaging-orders/{order['id']}",
        json={"scheduledAt": "2026-11-25T08:00:00Z"},
        headers=admin_headers,
    ).json()
    assert patched["status"] == "SCHEDULED"


def test_naive_timestamps_are_refused(client, admin_headers):
    response = client.post(
        "/api/imaging-orders",
        json={**ORDER, "scheduledAt": "2026-11-24T09:30:00"},
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["location"].endswith("scheduledAt")


@pytest.mark.parametrize(
    ("field", "value"),
    [("modality", "XRAY"), ("priority", "SOON"), ("patientSex", "X"), ("patientId", "")],
)
def test_invalid_fields_are_refused(client, admin_headers, field, value):
    response = client.post(
        "/api/imaging-orders", json={**ORDER, field: value}, headers=admin_headers
    )
    assert response.status_code == 422


def test_duplicate_accession_number_is_a_conflict(client, admin_headers):
    create(client, admin_headers, accessionNumber="ACC-DUP")
    response = client.post(
        "/api/imaging-orders", json={**ORDER, "accessionNumber": "ACC-DUP"}, headers=admin_headers
    )
    assert response.status_code == 409
    assert "ACC-DUP" in response.json()["error"]["message"]


def test_status_follows_the_order_workflow(client, admin_headers):
    order = create(client, admin_headers)
    url = f"/api/imaging-orders/{order['id']}"
    skip = client.patch(url, json={"status": "COMPLETED"}, headers=admin_headers)
    assert skip.status_code == 409
    assert "SCHEDULED" in skip.json()["error"]["message"]
    for status in ("IN_PROGRESS", "ON_HOLD", "IN_PROGRESS", "COMPLETED"):
        response = client.patch(url, json={"status": status}, headers=admin_headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    edit = client.patch(url, json={"bodyPart": "CHEST"}, headers=admin_headers)
    assert edit.status_code == 409


def test_delete_cancels_and_keeps_the_order(client, admin_headers):
    order = create(client, admin_headers)
    cancelled = client.delete(f"/api/imaging-orders/{order['id']}", headers=admin_headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    kept = client.get(f"/api/imaging-orders/{order['id']}", headers=admin_headers)
    assert kept.json()["status"] == "CANCELLED"
    # DELETE is idempotent: cancelling again changes nothing and records nothing.
    again = client.delete(f"/api/imaging-orders/{order['id']}", headers=admin_headers)
    assert again.status_code == 200
    events = client.get(
        "/api/audit", params={"action": "order.status_changed"}, headers=admin_headers
    ).json()
    assert events["total"] == 1


def test_completed_order_cannot_be_cancelled(client, admin_headers):
    order = create(client, admin_headers)
    url = f"/api/imaging-orders/{order['id']}"
    for status in ("IN_PROGRESS", "COMPLETED"):
        client.patch(url, json={"status": status}, headers=admin_headers)
    refused = client.delete(url, headers=admin_headers)
    assert refused.status_code == 409
    assert "COMPLETED" in refused.json()["error"]["message"]


def test_lists_filter_and_page(client, admin_headers):
    create(client, admin_headers, patientId="P-A", modality="MR", priority="STAT")
    create(client, admin_headers, patientId="P-A", modality="CT")
    create(client, admin_headers, patientId="P-B", modality="CT", scheduledAt=None)
    by_patient = client.get("/api/imaging-orders/patient/P-A", headers=admin_headers).json()
    assert by_patient["total"] == 2
    assert {o["patientId"] for o in by_patient["items"]} == {"P-A"}
    stat = client.get("/api/imaging-orders", params={"priority": "STAT"}, headers=admin_headers)
    assert [o["modality"] for o in stat.json()["items"]] == ["MR"]
    pending = client.get("/api/imaging-orders", params={"status": "PENDING"}, headers=admin_headers)
    assert [o["patientId"] for o in pending.json()["items"]] == ["P-B"]
    first = client.get("/api/imaging-orders", params={"limit": 2}, headers=admin_headers).json()
    assert (first["total"], len(first["items"]), first["limit"]) == (3, 2, 2)


def test_roles(client, admin_headers, headers_for):
    order = create(client, headers_for(Role.TECHNOLOGIST), providerId=PHYSICIAN_PROVIDER_ID)
    physician = headers_for(Role.PHYSICIAN)
    assert client.get(f"/api/imaging-orders/{order['id']}", headers=physician).status_code == 200
    assert client.post("/api/imaging-orders", json=ORDER, headers=physician).status_code == 403
    assert client.delete(f"/api/imaging-orders/{order['id']}", headers=physician).status_code == 403
    assert client.get("/api/imaging-orders/99999", headers=admin_headers).status_code == 404


def test_order_changes_are_audited(client, admin_headers):
    order = create(client, admin_headers)
    client.delete(f"/api/imaging-orders/{order['id']}", headers=admin_headers)
    events = client.get(
        "/api/audit",
        params={"entityType": "order", "entityId": str(order["id"])},
        headers=admin_headers,
    ).json()["items"]
    assert [e["action"] for e in events] == ["order.status_changed", "order.created"]
    assert events[0]["detail"] == {"previous": "SCHEDULED", "status": "CANCELLED"}
    assert "DOE" not in str(events)


def _study(app: FastAPI, **values: Any) -> int:
    with Session(engine_of(app)) as session:
        study = Study(status=StudyStatus.COMPLETED, **values)
        session.add(study)
        session.commit()
        assert study.id is not None
        return study.id


def test_study_matches_its_order_by_accession_then_takes_its_context(app, client, admin_headers):
    order = create(client, admin_headers)
    study_id = _study(
        app,
        study_instance_uid="1.2.3.4",
        accession_number=order["accessionNumber"],
        patient_id=ORDER["patientId"],
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        moved = order_matching.match(session, study, actor=ORTHANC_SYNC_ACTOR)
        session.commit()
        assert moved is not None and moved.id == order["id"]
    linked = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
    assert linked["orderId"] == order["id"]
    assert linked["priority"] == "URGENT"
    assert linked["clinicalIndication"] == "persistent cough"
    assert linked["referringPhysician"] == "SMITH^JOHN"
    got = client.get(f"/api/imaging-orders/{order['id']}", headers=admin_headers).json()
    assert got["status"] == "IN_PROGRESS"


def test_study_matches_by_study_instance_uid_when_accession_differs(app, client, admin_headers):
    order = create(client, admin_headers)
    study_id = _study(
        app,
        study_instance_uid=order["studyInstanceUID"],
        accession_number="OTHER",
        patient_id=ORDER["patientId"],
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        order_matching.match(session, study, actor=ORTHANC_SYNC_ACTOR)
        session.commit()
        assert study.order_id == order["id"]


def test_patient_mismatch_is_flagged_not_linked(app, client, admin_headers):
    order = create(client, admin_headers)
    study_id = _study(
        app,
        study_instance_uid="1.2.3.5",
        accession_number=order["accessionNumber"],
        patient_id="SOMEONE-ELSE",
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        assert order_matching.match(session, study, actor=ORTHANC_SYNC_ACTOR) is None
        session.commit()
    flagged = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
    assert flagged["orderId"] is None
    assert flagged["orderMatchIssue"] == order_matching.PATIENT_MISMATCH
    unmatched = client.get("/api/studies", params={"matched": "false"}, headers=admin_headers)
    assert [s["id"] for s in unmatched.json()["items"]] == [study_id]
    link = client.post(
        f"/api/studies/{study_id}/link-order", json={"orderId": order["id"]}, headers=admin_headers
    )
    assert link.status_code == 409
    with Session(engine_of(app)) as session:
        kept = session.get(ImagingOrder, order["id"])
        assert kept is not None and kept.status == "SCHEDULED"


def test_manual_link_is_audited_and_moves_the_order(app, client, admin_headers, headers_for):
    order = create(client, admin_headers, accessionNumber="ACC-MANUAL")
    study_id = _study(
        app, study_instance_uid="1.2.3.6", accession_number="TYPO", patient_id=ORDER["patientId"]
    )
    url = f"/api/studies/{study_id}/link-order"
    physician = headers_for(Role.PHYSICIAN)
    assert client.post(url, json={"orderId": order["id"]}, headers=physician).status_code == 403
    assert client.post(url, json={"orderId": 99999}, headers=admin_headers).status_code == 404
    linked = client.post(url, json={"orderId": order["id"]}, headers=admin_headers)
    assert linked.status_code == 200
    assert linked.json()["orderId"] == order["id"]
    assert client.post(url, json={"orderId": order["id"]}, headers=admin_headers).status_code == 409
    matched = client.get("/api/studies", params={"matched": "true"}, headers=admin_headers).json()
    assert [s["id"] for s in matched["items"]] == [study_id]
    events = client.get(
        "/api/audit", params={"action": "study.linked_to_order"}, headers=admin_headers
    ).json()["items"]
    assert events[0]["actor"] == "admin" and events[0]["detail"] == {"order_id": order["id"]}
    got = client.get(f"/api/imaging-orders/{order['id']}", headers=admin_headers).json()
    assert got["status"] == "IN_PROGRESS"


def test_order_listeners_hear_committed_changes(app, client, admin_headers):
    heard: list[int] = []
    service_of(app, OrderEvents).listeners.append(heard.extend)
    order = create(client, admin_headers)
    assert service_of(app, OrderEvents).wait_idle()
    assert heard == [order["id"]]
    client.delete(f"/api/imaging-orders/{order['id']}", headers=admin_headers)
    assert service_of(app, OrderEvents).wait_idle()
    assert heard == [order["id"], order["id"]]


@pytest.mark.parametrize("scheduled", [True, False])
def test_the_intake_s_plain_insert_makes_the_same_order_as_the_orm(
    app: FastAPI, client: TestClient, admin_headers: dict[str, str], scheduled: bool
) -> None:
    """orders.insert_order (HL7, no ORM) and orders.create_order (REST) fill the same defaults."""
    values: dict[str, Any] = {
        "patient_id": "MRN-2002",
        "patient_name": "ROE^RICHARD",
        "modality": "MR",
        "scheduled_at": datetime(2026, 11, 24, 8, 0, tzinfo=UTC) if scheduled else None,
    }
    with Session(engine_of(app)) as session:
        made = orders.create_order(session, dict(values), actor="tester", source="hl7")
        assert made.id is not None
        ids = [made.id, orders.insert_order(session, dict(values), actor="tester", source="hl7")]
        session.commit()

    got = [
        client.get(f"/api/imaging-orders/{order_id}", headers=admin_headers).json()
        for order_id in ids
    ]
    for order in got:
        assert order["requestedProcedureId"] == order["accessionNumber"]
        assert order["status"] == ("SCHEDULED" if scheduled else "PENDING")
        assert order["priority"] == "ROUTINE"
        assert order["createdAt"] == order["updatedAt"]
    assert got[0]["accessionNumber"] != got[1]["accessionNumber"]
    assert got[0]["studyInstanceUID"] != got[1]["studyInstanceUID"]
    own = {"id", "accessionNumber", "requestedProcedureId", "studyInstanceUID"}
    own |= {"createdAt", "updatedAt", "viewerUrl"}
    assert {k: v for k, v in got[0].items() if k not in own} == {
        k: v for k, v in got[1].items() if k not in own
    }
    audited = client.get(
        "/api/audit", params={"action": "order.created", "actor": "tester"}, headers=admin_headers
    ).json()["items"]
    assert sorted(int(event["entityId"]) for event in audited) == sorted(ids)

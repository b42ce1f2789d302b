"""The API's answers to what hostile testing sent it: NUL characters, ids and offsets beyond the
database's integer range, null for fields that cannot be null, order values the worklist cannot
hold. Each is a clear 4xx, never a 500 (which logged the failing row's patient data)."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.studies.registry import register_study

from builders import UID_ROOT, orthanc_study, seed_study
from testapp import engine_of

Headers = dict[str, str]

ORDER = {"patientId": "PAT-0001", "issuerOfPatientId": "HOSP", "modality": "CT"}


@pytest.fixture
def order_id(client: TestClient, technologist: Headers) -> int:
    created = client.post("/api/imaging-orders", json=ORDER, headers=technologist)
    assert created.status_code == 201, created.text
    value: int = created.json()["id"]
    return value


@pytest.mark.parametrize(
    "path",
    [
        "/api/studies/{id}",
        "/api/studies/{id}/images",
        "/api/imaging-orders/{id}",
        "/api/reports/{id}",
        "/api/reports/study/{id}",
        "/api/critical-findings/{id}",
        "/api/images/{id}",
        "/api/hl7/messages/{id}",
        "/api/analyses/{id}",
        "/api/studies/{id}/analyses",
    ],
)
@pytest.mark.parametrize("record_id", [2**31, 2**63, 2**64])
def test_ids_beyond_the_integer_range_are_refused_not_failed(
    client: TestClient, admin_headers: Headers, path: str, record_id: int
) -> None:
    answer = client.get(path.format(id=record_id), headers=admin_headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "validation_error"


def test_offsets_and_query_ids_beyond_the_range_are_refused(
    client: TestClient, admin_headers: Headers
) -> None:
    for path, params in (
        ("/api/studies", {"offset": 2**63}),
        ("/api/imaging-orders", {"offset": 2**31}),
        ("/api/reports", {"studyId": 2**31}),
        ("/api/hl7/messages", {"orderId": 2**40}),
    ):
        answer = client.get(path, params=params, headers=admin_headers)
        assert answer.status_code == 422, (path, answer.text)
    assert (
        client.get("/api/studies", params={"offset": 2**31 - 1}, headers=admin_headers).json()[
            "items"
        ]
        == []
    )


def test_nul_characters_are_refused_in_bodies_paths_and_queries(
    client: TestClient, admin_headers: Headers, technologist: Headers, order_id: int
) -> None:
    body = client.patch(
        f"/api/imaging-orders/{order_id}", json={"providerId": "DR\u00001"}, headers=technologist
    )
    assert body.status_code == 422, body.text
    assert body.json()["error"]["details"][0]["location"] == "body.providerId"
    for path in (
        "/api/studies?patientId=PAT%00",
        "/api/studies/accession/ACC%00",
        "/api/imaging-orders/patient/P%001",
    ):
        answer = client.get(path, headers=admin_headers)
        assert answer.status_code == 400, (path, answer.text)
    login = client.post("/api/auth/login", json={"username": "admin\u0000", "password": "x"})
    assert login.status_code == 422


@pytest.mark.parametrize("field", ["modality", "priority", "patientId"])
def test_null_for_a_field_that_cannot_be_null_is_refused(
    client: TestClient, technologist: Headers, order_id: int, field: str
) -> None:
    answer = client.patch(
        f"/api/imaging-orders/{order_id}", json={field: None}, headers=technologist
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["location"] == f"body.{field}"
    # Leaving a field out keeps it; null for a nullable one clears it.
    cleared = client.patch(
        f"/api/imaging-orders/{order_id}", json={"providerId": None}, headers=technologist
    )
    assert cleared.status_code == 200


@pytest.mark.parametrize("field", ["password", "role", "isActive"])
def test_a_user_update_cannot_null_what_an_account_needs(
    client: TestClient, admin_headers: Headers, headers_for: object, field: str
) -> None:
    created = client.post(
        "/api/users",
        json={"username": "dr.null", "password": "long-enough-password", "role": "radiologist"},
        headers=admin_headers,
    )
    assert created.status_code == 201
    answer = client.patch(
        f"/api/users/{created.json()['id']}", json={field: None}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patientName", "L" * 65 + "^JO"),  # a PN component group holds 64 characters
        ("patientName", "DOE\\ROE^JO"),  # a backslash separates DICOM values
        ("referringPhysician", "A^B^C^D^E^F"),  # a PN has five components
        ("patientId", "P\tID"),
        ("accessionNumber", "ACC\\1"),
        ("studyInstanceUID", "1.2.03.4"),  # no leading zeros in a UID component
        ("procedureDescription", "D" * 65),
        ("patientId", "   "),  # DICOM drops padding spaces: an empty, type 1 identifier
        ("accessionNumber", " "),
        ("requestedProcedureId", "  "),
        ("patientName", "DOE\u0085^JO"),  # C1 control (NEL): a raw byte once in Latin-1
        ("patientName", "DOE\u2028^JO"),  # a line separator
    ],
)
def test_order_values_the_worklist_cannot_hold_are_refused(
    client: TestClient, technologist: Headers, field: str, value: str
) -> None:
    answer = client.post("/api/imaging-orders", json={**ORDER, field: value}, headers=technologist)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["location"] == f"body.{field}"


OUT_OF_RANGE_TIMES = [
    "9999-12-31T23:30:00Z",  # past year 9999 in the department's time zone
    "9999-12-31T23:59:59-14:00",  # past year 9999 in UTC
    "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
    "1899-12-31T23:59:59Z",
]


@pytest.mark.parametrize("when", OUT_OF_RANGE_TIMES)
def test_times_no_zone_can_show_are_refused_not_failed(
    client: TestClient, technologist: Headers, admin_headers: Headers, order_id: int, when: str
) -> None:
    """An order scheduled beyond year 9998 was accepted and then failed every worklist update
    (and the next start); a time beyond UTC's range failed its insert with a 500."""
    created = client.post(
        "/api/imaging-orders", json={**ORDER, "scheduledAt": when}, headers=technologist
    )
    assert created.status_code == 422, created.text
    assert created.json()["error"]["details"][0]["location"] == "body.scheduledAt"
    changed = client.patch(
        f"/api/imaging-orders/{order_id}", json={"scheduledAt": when}, headers=technologist
    )
    assert changed.status_code == 422, changed.text
    for path, name in (
        ("/api/imaging-orders", "scheduledFrom"),
        ("/api/imaging-orders", "scheduledTo"),
        ("/api/critical-findings/metrics", "since"),
        ("/api/hl7/messages", "receivedFrom"),
    ):
        answer = client.get(path, params={name: when}, headers=admin_headers)
        assert answer.status_code == 422, (path, name, answer.text)
        assert answer.json()["error"]["details"][0]["location"] == f"query.{name}"
    kept = client.get(f"/api/imaging-orders/{order_id}", headers=technologist).json()
    assert kept["scheduledAt"] is None


def test_times_at_the_edges_of_the_range_are_accepted(
    client: TestClient, technologist: Headers
) -> None:
    for when in ("1900-01-01T00:00:00Z", "9998-12-31T23:59:59Z"):
        created = client.post(
            "/api/imaging-orders", json={**ORDER, "scheduledAt": when}, headers=technologist
        )
        assert created.status_code == 201, (when, created.text)


def test_study_time_is_written_as_the_document_says(
    app: FastAPI, client: TestClient, admin_headers: Headers
) -> None:
    study_id = seed_study(engine_of(app), orthanc_study(study_time="101500.250000"))
    shown = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()["studyTime"]
    document = app.openapi()["components"]["schemas"]["StudyPublic"]["properties"]["studyTime"]
    pattern = next(s["pattern"] for s in document["anyOf"] if s.get("type") == "string")
    assert shown == "10:15:00.250000"
    assert re.match(pattern, shown)


def test_a_uid_held_under_two_patients_shows_in_the_study_and_in_health(
    app: FastAPI, client: TestClient, headers_for: object
) -> None:
    study = orthanc_study(f"{UID_ROOT}.5150", patient_id="PAT-0001")
    other = orthanc_study(f"{UID_ROOT}.5150", patient_id="PAT-0002")
    with Session(engine_of(app)) as session:
        row = register_study(
            session, study.record(), {study.orthanc_id: "PAT-0001", other.orthanc_id: "PAT-0002"}
        )
        session.commit()
        study_id = row.id
    headers = headers_for(Role.RADIOLOGIST)  # type: ignore[operator]
    shown = client.get(f"/api/studies/{study_id}", headers=headers).json()
    assert shown["patientConflict"]["otherPatientIds"] == ["PAT-0002"]
    listed = client.get("/api/studies", headers=headers).json()["items"]
    assert listed[0]["patientConflict"]["otherPatientIds"] == ["PAT-0002"]
    assert client.get("/health").json()["studies"] == {
        "patientConflicts": 1,
        "imagesDeleted": 0,
    }
    audit = client.get(
        "/api/audit",
        params={"action": "study.patient_conflict"},
        headers=headers_for(Role.ADMIN),  # type: ignore[operator]
    ).json()
    assert audit["total"] == 1
    assert "PAT-0002" not in str(audit)  # Orthanc ids only in the trail

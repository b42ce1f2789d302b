"""The studies and images API (seed 001): listing, reading, announcing, correcting, status flow.

The tests share one app (starting one was most of each test's time); each begins with the
database as the module found it (row_marks), no study in it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.studies.models import STUDY_WORKFLOW, Study, StudyStatus

from builders import UID_ROOT, OrthancStudy, SeriesSpec, audit_events, orthanc_study, seed_study
from row_marks import RowMark
from testapp import ADMIN_PASSWORD, app_settings, engine_of, login

HeadersFor = Callable[[Role], dict[str, str]]

ALLOWED = sorted(
    (current, target) for current in StudyStatus for target in STUDY_WORKFLOW.allowed_from(current)
)
DISALLOWED = sorted(
    (current, target)
    for current in StudyStatus
    for target in StudyStatus
    if not STUDY_WORKFLOW.can(current, target)
)


@pytest.fixture(scope="module")
def settings(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return app_settings(module_database_url, tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="module")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin_headers(client: TestClient) -> dict[str, str]:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def as_started(app: FastAPI, client: TestClient, admin_headers: dict[str, str]) -> RowMark:
    """The database once the app has started and the admin logged in."""
    return RowMark(engine_of(app))


@pytest.fixture(autouse=True)
def database_as_started(as_started: RowMark) -> None:
    """Each test begins with no row another test added (its studies, users, audit events)."""
    as_started.delete_added()


@pytest.fixture
def engine(app: FastAPI) -> Engine:
    engine: Engine = engine_of(app)
    return engine


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def locations(error: dict[str, Any]) -> list[str]:
    return [detail["location"] for detail in error["details"]]


def uid(n: int) -> str:
    return f"{UID_ROOT}.{n}"


def study_n(n: int, **overrides: Any) -> OrthancStudy:
    """A distinct study per `n`: its own UIDs, patient and accession number."""
    values: dict[str, Any] = {
        "accession_number": f"ACC{n:04d}",
        "patient_id": f"PAT-{n}",
        "study_date": f"202401{n:02d}",
        "series": [SeriesSpec(uid=f"{uid(n)}.1", number=1, modality="CT", instances=2)],
    }
    values.update(overrides)
    return orthanc_study(uid(n), **values)


def set_status(engine: Engine, study_id: int, status: StudyStatus) -> None:
    with Session(engine) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.status = status
        session.add(study)
        session.commit()


def study_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Study)).one()


def listed(client: TestClient, headers: dict[str, str], **params: Any) -> list[str]:
    """Accession numbers of the studies GET /api/studies answers, in order."""
    response = client.get("/api/studies", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [item["accessionNumber"] for item in response.json()["items"]]


# -- list -------------------------------------------------------------------------------------


def test_list_answers_a_page_of_studies_in_camel_case(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1))

    response = client.get("/api/studies", headers=admin_headers)

    assert response.status_code == 200
    body = response.json()
    assert (body["total"], body["offset"], body["limit"]) == (1, 0, 50)
    item = body["items"][0]
    assert item["studyInstanceUID"] == uid(1)
    assert item["accessionNumber"] == "ACC0001"
    assert item["patientId"] == "PAT-1"
    assert item["patientName"] == "DOE^JANE"
    assert item["patientBirthDate"] == "1970-01-01"
    assert item["patientSex"] == "F"
    assert item["studyDate"] == "2024-01-01"
    assert item["studyTime"] == "10:15:00"
    assert item["studyDescription"] == "CT CHEST W/O CONTRAST"
    assert item["referringPhysician"] == "HOUSE^GREGORY"
    assert item["bodyPart"] == "CHEST"
    assert item["modalities"] == ["CT"]
    assert (item["seriesCount"], item["instanceCount"]) == (1, 2)
    assert item["status"] == "COMPLETED"
    assert item["orthancId"]
    assert "series" not in item


def test_list_filters_on_patient_and_accession_exactly(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1))
    seed_study(engine, study_n(10))
    seed_study(engine, study_n(11, patient_id="PAT-1"))

    assert listed(client, admin_headers, patientId="PAT-1") == ["ACC0011", "ACC0001"]
    assert listed(client, admin_headers, patientId="PAT-10") == ["ACC0010"]
    assert listed(client, admin_headers, patientId="PAT") == []
    assert listed(client, admin_headers, accessionNumber="ACC0010") == ["ACC0010"]
    assert listed(client, admin_headers, accessionNumber="ACC001") == []
    assert listed(client, admin_headers, patientId="PAT-1", accessionNumber="ACC0001") == [
        "ACC0001"
    ]


def modality_studies(engine: Engine) -> None:
    def series(n: int, *modalities: str) -> list[SeriesSpec]:
        return [
            SeriesSpec(uid=f"{uid(n)}.{i}", number=i, modality=m)
            for i, m in enumerate(modalities, start=1)
        ]

    seed_study(engine, study_n(1, series=series(1, "CT")))
    seed_study(engine, study_n(2, series=series(2, "PT", "CT")))
    seed_study(engine, study_n(3, series=series(3, "CTA")))
    seed_study(engine, study_n(4, series=series(4, "MR", "SR")))
    seed_study(engine, study_n(5, series=series(5, "PET_CT")))


def test_list_filters_on_an_exact_modality_code(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    modality_studies(engine)

    assert listed(client, admin_headers, modality="CT") == ["ACC0002", "ACC0001"]
    assert listed(client, admin_headers, modality="CTA") == ["ACC0003"]
    assert listed(client, admin_headers, modality="SR") == ["ACC0004"]
    assert listed(client, admin_headers, modality="PET_CT") == ["ACC0005"]
    assert listed(client, admin_headers, modality="T") == []
    assert listed(client, admin_headers, modality="XA") == []
    error = assert_error(
        client.get("/api/studies", headers=admin_headers, params={"modality": "ct"}),
        422,
        "validation_error",
    )
    assert locations(error) == ["query.modality"]


def test_modality_filter_treats_underscore_literally(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    modality_studies(engine)

    assert listed(client, admin_headers, modality="C_") == []
    assert listed(client, admin_headers, modality="M_") == []


def test_list_filters_on_status(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1))
    set_status(engine, seed_study(engine, study_n(2)), StudyStatus.FINAL)

    assert listed(client, admin_headers, status="FINAL") == ["ACC0002"]
    assert listed(client, admin_headers, status="COMPLETED") == ["ACC0001"]
    assert listed(client, admin_headers, status="CANCELLED") == []
    error = assert_error(
        client.get("/api/studies", headers=admin_headers, params={"status": "DONE"}),
        422,
        "validation_error",
    )
    assert locations(error) == ["query.status"]


def test_list_filters_on_an_inclusive_study_date_range(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    for n in (5, 10, 15, 20):
        seed_study(engine, study_n(n))
    seed_study(engine, study_n(30, study_date=""))  # no date: outside every range

    def dates(**params: str) -> list[str]:
        return listed(client, admin_headers, **params)

    assert dates(studyDateFrom="2024-01-10", studyDateTo="2024-01-15") == ["ACC0015", "ACC0010"]
    assert dates(studyDateFrom="2024-01-15") == ["ACC0020", "ACC0015"]
    assert dates(studyDateTo="2024-01-05") == ["ACC0005"]
    assert dates(studyDateFrom="2024-01-10", studyDateTo="2024-01-10") == ["ACC0010"]
    assert dates(studyDateFrom="2024-01-16", studyDateTo="2024-01-19") == []
    error = assert_error(
        client.get("/api/studies", headers=admin_headers, params={"studyDateFrom": "20240110"}),
        422,
        "validation_error",
    )
    assert locations(error) == ["query.studyDateFrom"]


def test_list_is_ordered_newest_study_date_first_then_newest_row(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1, study_date="20240301"))
    seed_study(engine, study_n(2, study_date=""))
    seed_study(engine, study_n(3, study_date="20240110"))
    seed_study(engine, study_n(4, study_date="20240301"))

    assert listed(client, admin_headers) == ["ACC0004", "ACC0001", "ACC0003", "ACC0002"]


def test_list_paginates_with_offset_and_limit(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    for n in range(1, 6):
        seed_study(engine, study_n(n))

    first = client.get("/api/studies", headers=admin_headers, params={"limit": 2}).json()
    last = client.get(
        "/api/studies", headers=admin_headers, params={"limit": 2, "offset": 4}
    ).json()
    beyond = client.get(
        "/api/studies", headers=admin_headers, params={"limit": 2, "offset": 10}
    ).json()
    filtered = client.get(
        "/api/studies", headers=admin_headers, params={"limit": 1, "patientId": "PAT-3"}
    ).json()

    assert (first["total"], first["offset"], first["limit"]) == (5, 0, 2)
    assert [s["accessionNumber"] for s in first["items"]] == ["ACC0005", "ACC0004"]
    assert (last["total"], last["offset"], last["limit"]) == (5, 4, 2)
    assert [s["accessionNumber"] for s in last["items"]] == ["ACC0001"]
    assert (beyond["total"], beyond["items"]) == (5, [])
    assert (filtered["total"], len(filtered["items"])) == (1, 1)


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"limit": "ten"}, "query.limit"),
    ],
    ids=["limit-0", "limit-1001", "negative-offset", "limit-not-a-number"],
)
def test_list_rejects_out_of_bounds_pagination(
    client: TestClient, admin_headers: dict[str, str], params: dict[str, Any], location: str
) -> None:
    error = assert_error(
        client.get("/api/studies", headers=admin_headers, params=params), 422, "validation_error"
    )
    assert locations(error) == [location]
    assert all(detail["message"] for detail in error["details"])


def test_list_accepts_the_largest_limit(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.get("/api/studies", headers=admin_headers, params={"limit": 1000})
    assert response.status_code == 200
    assert response.json()["limit"] == 1000


# -- one study --------------------------------------------------------------------------------


def test_study_detail_lists_its_series_by_series_number(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    late = SeriesSpec(uid=f"{uid(1)}.3", number=3, modality="CT", description="CORONAL")
    # Series 3 arrives first, so row ids do not follow series numbers.
    seed_study(engine, study_n(1, series=[late]))
    study_id = seed_study(
        engine,
        study_n(
            1,
            series=[
                SeriesSpec(
                    uid=f"{uid(1)}.9",
                    number=None,
                    modality="SR",
                    instances=1,
                    description=None,
                    body_part=None,
                ),
                late,
                SeriesSpec(uid=f"{uid(1)}.1", number=1, modality="CT", instances=3),
                SeriesSpec(uid=f"{uid(1)}.2", number=2, modality="CT", description="SAGITTAL"),
            ],
        ),
    )

    response = client.get(f"/api/studies/{study_id}", headers=admin_headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["seriesNumber"] for s in body["series"]] == [1, 2, 3, None]
    first = body["series"][0]
    assert set(first) == {
        "id",
        "seriesInstanceUID",
        "seriesNumber",
        "seriesDescription",
        "modality",
        "bodyPart",
        "instanceCount",
    }
    assert (first["seriesInstanceUID"], first["instanceCount"]) == (f"{uid(1)}.1", 3)
    assert body["seriesCount"] == 4
    assert body["instanceCount"] == 3 + 2 + 2 + 1
    assert body["modalities"] == ["CT", "SR"]


def test_unknown_study_is_not_found(client: TestClient, admin_headers: dict[str, str]) -> None:
    for path in (
        "/api/studies/9999",
        "/api/studies/9999/images",
        f"/api/studies/9999/series/{uid(1)}.1/images",
    ):
        error = assert_error(client.get(path, headers=admin_headers), 404, "not_found")
        assert "9999" in error["message"]
    assert_error(
        client.patch("/api/studies/9999", headers=admin_headers, json={"bodyPart": "HEAD"}),
        404,
        "not_found",
    )
    assert_error(
        client.patch("/api/studies/9999/status", headers=admin_headers, json={"status": "ARRIVED"}),
        404,
        "not_found",
    )


def test_study_id_must_be_an_integer(client: TestClient, admin_headers: dict[str, str]) -> None:
    error = assert_error(
        client.get("/api/studies/abc", headers=admin_headers), 422, "validation_error"
    )
    assert locations(error) == ["path.study_id"]


def test_study_by_accession_number(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    study_id = seed_study(engine, study_n(1))
    seed_study(engine, study_n(2))

    response = client.get("/api/studies/accession/ACC0001", headers=admin_headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == study_id
    assert [s["seriesInstanceUID"] for s in response.json()["series"]] == [f"{uid(1)}.1"]
    error = assert_error(
        client.get("/api/studies/accession/ACC9999", headers=admin_headers), 404, "not_found"
    )
    assert "ACC9999" in error["message"]


def test_accession_number_shared_by_two_studies_is_a_conflict(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1, accession_number="SHARED1"))
    seed_study(engine, study_n(2, accession_number="SHARED1"))

    error = assert_error(
        client.get("/api/studies/accession/SHARED1", headers=admin_headers), 409, "conflict"
    )
    assert "SHARED1" in error["message"]
    assert listed(client, admin_headers, accessionNumber="SHARED1") == ["SHARED1", "SHARED1"]


# -- announcing a study -----------------------------------------------------------------------


def test_create_study_generates_uid_and_accession_number(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/studies",
        headers=admin_headers,
        json={
            "patientId": "PAT-9",
            "patientName": "ROE^RICHARD",
            "patientSex": "M",
            "patientBirthDate": "1980-02-29",
            "studyDate": "2024-05-01",
            "modalities": ["CT"],
            "studyDescription": "CT HEAD",
            "bodyPart": "HEAD",
        },
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", body["studyInstanceUID"])
    assert len(body["studyInstanceUID"]) <= 64
    assert re.fullmatch(r"A[0-9]{12}", body["accessionNumber"])
    assert body["status"] == "SCHEDULED"
    assert (body["seriesCount"], body["instanceCount"]) == (0, 0)
    assert body["modalities"] == ["CT"]
    assert (body["patientId"], body["patientBirthDate"]) == ("PAT-9", "1980-02-29")
    fetched = client.get(f"/api/studies/{body['id']}", headers=admin_headers).json()
    assert fetched["series"] == []
    assert fetched["studyInstanceUID"] == body["studyInstanceUID"]
    [event] = audit_events(engine, "study.created")
    assert (event.actor, event.entity_id) == ("admin", str(body["id"]))
    assert event.detail == {"status": "SCHEDULED"}


def test_create_study_keeps_given_uid_and_accession_number(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/studies",
        headers=admin_headers,
        json={"patientId": "PAT-9", "studyInstanceUID": uid(77), "accessionNumber": "ORD-77"},
    )
    assert response.status_code == 201, response.text
    assert (response.json()["studyInstanceUID"], response.json()["accessionNumber"]) == (
        uid(77),
        "ORD-77",
    )


def test_generated_identifiers_differ_between_studies(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    bodies = [
        client.post("/api/studies", headers=admin_headers, json={"patientId": "PAT-9"}).json()
        for _ in range(3)
    ]
    assert len({b["studyInstanceUID"] for b in bodies}) == 3
    assert len({b["accessionNumber"] for b in bodies}) == 3


def test_create_study_with_an_existing_uid_is_a_conflict(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    seed_study(engine, study_n(1))

    response = client.post(
        "/api/studies",
        headers=admin_headers,
        json={"patientId": "PAT-9", "studyInstanceUID": uid(1)},
    )

    error = assert_error(response, 409, "conflict")
    assert uid(1) in error["message"]
    assert study_count(engine) == 1


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"patientId": "P", "studyInstanceUID": "1.2.abc"}, "body.studyInstanceUID"),
        ({"patientId": "P", "studyInstanceUID": "1..2"}, "body.studyInstanceUID"),
        ({"patientId": "P", "studyInstanceUID": "1." + "2" * 63}, "body.studyInstanceUID"),
        ({}, "body.patientId"),
        ({"patientId": ""}, "body.patientId"),
        ({"patientId": "P", "accessionNumber": "A" * 17}, "body.accessionNumber"),
        ({"patientId": "P", "patientSex": "X"}, "body.patientSex"),
        ({"patientId": "P", "studyDate": "2024-13-01"}, "body.studyDate"),
        ({"patientId": "P", "status": "FINAL"}, "body.status"),
        ({"patientId": "P", "modalities": ["CT"] * 17}, "body.modalities"),
        ({"patientId": "P", "modalities": ["ct"]}, "body.modalities.0"),
        ({"patientId": "P", "modalities": ["CT,MR"]}, "body.modalities.0"),
        ({"patientId": "P", "modalities": ["M" * 17]}, "body.modalities.0"),
    ],
    ids=[
        "uid-letters",
        "uid-empty-component",
        "uid-too-long",
        "no-patient",
        "empty-patient",
        "accession-too-long",
        "bad-sex",
        "bad-date",
        "status-not-settable",
        "too-many-modalities",
        "lowercase-modality",
        "comma-in-modality",
        "modality-too-long",
    ],
)
def test_create_study_rejects_invalid_input_without_a_partial_record(
    client: TestClient,
    engine: Engine,
    admin_headers: dict[str, str],
    body: dict[str, Any],
    location: str,
) -> None:
    error = assert_error(
        client.post("/api/studies", headers=admin_headers, json=body), 422, "validation_error"
    )
    assert location in locations(error)
    assert study_count(engine) == 0


def test_create_study_rejects_overlong_modality_codes(
    app: FastAPI, engine: Engine, admin_headers: dict[str, str]
) -> None:
    # Not raising server errors: a database error must show as a 500, not escape the test.
    lenient = TestClient(app, raise_server_exceptions=False)
    response = lenient.post(
        "/api/studies", headers=admin_headers, json={"patientId": "P", "modalities": ["X" * 40] * 8}
    )
    assert_error(response, 422, "validation_error")
    assert study_count(engine) == 0


def test_create_study_stores_the_longest_allowed_modality_list(
    app: FastAPI, admin_headers: dict[str, str]
) -> None:
    codes = [f"{chr(ord('A') + i)}{'X' * 15}" for i in range(16)]  # 16 codes of 16 characters
    lenient = TestClient(app, raise_server_exceptions=False)

    response = lenient.post(
        "/api/studies", headers=admin_headers, json={"patientId": "P", "modalities": codes}
    )

    assert response.status_code == 201, response.text
    fetched = lenient.get(f"/api/studies/{response.json()['id']}", headers=admin_headers)
    assert fetched.json()["modalities"] == codes


def test_technologist_announces_a_study_but_physician_and_radiologist_cannot(
    client: TestClient, engine: Engine, headers_for: HeadersFor
) -> None:
    response = client.post(
        "/api/studies", headers=headers_for(Role.TECHNOLOGIST), json={"patientId": "PAT-9"}
    )
    assert response.status_code == 201, response.text
    [event] = audit_events(engine, "study.created")
    assert event.actor == "technologist-user"

    for role in (Role.PHYSICIAN, Role.RADIOLOGIST, Role.INTEGRATION):
        response = client.post(
            "/api/studies", headers=headers_for(role), json={"patientId": "PAT-9"}
        )
        assert_error(response, 403, "forbidden")
    assert study_count(engine) == 1


# -- correcting a study -----------------------------------------------------------------------


def test_patch_changes_only_the_given_fields_and_audits_their_names(
    client: TestClient, engine: Engine, headers_for: HeadersFor
) -> None:
    study_id = seed_study(engine, study_n(1))
    headers = headers_for(Role.RADIOLOGIST)
    before = client.get(f"/api/studies/{study_id}", headers=headers).json()

    response = client.patch(
        f"/api/studies/{study_id}",
        headers=headers,
        json={"studyDescription": "CT CHEST WITH CONTRAST", "referringPhysician": "WILSON^JAMES"},
    )

    assert response.status_code == 200, response.text
    after = response.json()
    assert after["studyDescription"] == "CT CHEST WITH CONTRAST"
    assert after["referringPhysician"] == "WILSON^JAMES"
    unchanged = {
        k: v
        for k, v in before.items()
        # The detail's own parts (series, performed steps) are not in the PATCH answer.
        if k
        not in (
            "studyDescription",
            "referringPhysician",
            "updatedAt",
            "series",
            "performedProcedureSteps",
        )
    }
    assert {k: after[k] for k in unchanged} == unchanged
    assert after["updatedAt"] > before["updatedAt"]
    [event] = audit_events(engine, "study.updated")
    assert (event.actor, event.entity_type, event.entity_id) == (
        "radiologist-user",
        "study",
        str(study_id),
    )
    assert event.detail == {"fields": ["referring_physician", "study_description"]}
    assert "WILSON" not in json.dumps(event.detail)
    assert "CONTRAST" not in json.dumps(event.detail)


@pytest.mark.parametrize(
    "body",
    [
        {"studyInstanceUID": uid(99)},
        {"patientId": "OTHER"},
        {"seriesCount": 0},
        {"status": "FINAL"},
        {"orthancId": "x"},
        {"studyDescription": "OK", "unknown": 1},
    ],
    ids=["uid", "patient", "counts", "status", "orthanc-id", "unknown-field"],
)
def test_patch_refuses_fields_that_are_not_editable(
    client: TestClient, engine: Engine, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    study_id = seed_study(engine, study_n(1))
    before = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()

    error = assert_error(
        client.patch(f"/api/studies/{study_id}", headers=admin_headers, json=body),
        422,
        "validation_error",
    )

    assert any(loc.startswith("body.") for loc in locations(error))
    assert client.get(f"/api/studies/{study_id}", headers=admin_headers).json() == before
    assert audit_events(engine, "study.updated") == []


def test_patch_validates_field_lengths(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    study_id = seed_study(engine, study_n(1))
    for body, location in (
        ({"accessionNumber": "A" * 17}, "body.accessionNumber"),
        ({"accessionNumber": ""}, "body.accessionNumber"),
        ({"studyDescription": "D" * 65}, "body.studyDescription"),
    ):
        error = assert_error(
            client.patch(f"/api/studies/{study_id}", headers=admin_headers, json=body),
            422,
            "validation_error",
        )
        assert locations(error) == [location]


# -- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"), ALLOWED, ids=[f"{c.value}->{t.value}" for c, t in ALLOWED]
)
def test_every_allowed_status_transition_is_accepted_and_audited(
    client: TestClient,
    engine: Engine,
    admin_headers: dict[str, str],
    current: StudyStatus,
    target: StudyStatus,
) -> None:
    study_id = seed_study(engine, study_n(1))
    set_status(engine, study_id, current)

    response = client.patch(
        f"/api/studies/{study_id}/status", headers=admin_headers, json={"status": target.value}
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == target.value
    assert client.get(f"/api/studies/{study_id}", headers=admin_headers).json()["status"] == (
        target.value
    )
    [event] = audit_events(engine, "study.status_changed")
    assert (event.actor, event.entity_id) == ("admin", str(study_id))
    assert event.detail == {"previous": current.value, "status": target.value}


def test_every_disallowed_status_transition_is_a_conflict_naming_both_statuses(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    study_id = seed_study(engine, study_n(1))
    assert len(DISALLOWED) == len(StudyStatus) ** 2 - len(ALLOWED)

    for current, target in DISALLOWED:
        set_status(engine, study_id, current)
        response = client.patch(
            f"/api/studies/{study_id}/status", headers=admin_headers, json={"status": target.value}
        )
        error = assert_error(response, 409, "conflict")
        assert f"from {current.value} to {target.value}" in error["message"]
        detail = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
        assert detail["status"] == current.value
    assert audit_events(engine, "study.status_changed") == []


def test_reading_steps_cannot_be_skipped_back(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    study_id = seed_study(engine, study_n(1))
    url = f"/api/studies/{study_id}/status"
    for status in ("PRELIMINARY", "FINAL"):
        assert client.patch(url, headers=admin_headers, json={"status": status}).status_code == 200

    error = assert_error(
        client.patch(url, headers=admin_headers, json={"status": "COMPLETED"}), 409, "conflict"
    )
    assert "FINAL" in error["message"] and "COMPLETED" in error["message"]


def test_status_body_is_validated(
    client: TestClient, engine: Engine, admin_headers: dict[str, str]
) -> None:
    study_id = seed_study(engine, study_n(1))
    for body in ({"status": "DONE"}, {}, {"status": "FINAL", "note": "x"}):
        assert_error(
            client.patch(f"/api/studies/{study_id}/status", headers=admin_headers, json=body),
            422,
            "validation_error",
        )


# -- images -----------------------------------------------------------------------------------


@pytest.fixture
def two_series_study(engine: Engine) -> int:
    """Series 2 (instances listed 3, 1, 2) registered before series 1 (instances 2, 1), so row
    ids follow neither series numbers nor instance numbers."""
    second = SeriesSpec(
        uid=f"{uid(1)}.2", number=2, modality="CT", instances=3, instance_numbers=[3, 1, 2]
    )
    first = SeriesSpec(
        uid=f"{uid(1)}.1",
        number=1,
        modality="CT",
        instances=2,
        instance_numbers=[2, 1],
        pixel_spacing=None,
    )
    seed_study(engine, study_n(1, series=[second]))
    study_id = seed_study(engine, study_n(1, series=[first, second]))
    seed_study(engine, study_n(2))  # another study's images must never show up
    return study_id


def image_keys(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(i["seriesInstanceUID"].rsplit(".", 1)[1], i["instanceNumber"]) for i in body["items"]]


def test_study_images_are_ordered_by_series_then_instance_number(
    client: TestClient, admin_headers: dict[str, str], two_series_study: int
) -> None:
    response = client.get(f"/api/studies/{two_series_study}/images", headers=admin_headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["offset"], body["limit"]) == (5, 0, 50)
    assert image_keys(body) == [("1", 1), ("1", 2), ("2", 1), ("2", 2), ("2", 3)]
    assert {i["studyId"] for i in body["items"]} == {two_series_study}


def test_study_images_paginate(
    client: TestClient, admin_headers: dict[str, str], two_series_study: int
) -> None:
    url = f"/api/studies/{two_series_study}/images"
    page = client.get(url, headers=admin_headers, params={"offset": 1, "limit": 2}).json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 2)
    assert image_keys(page) == [("1", 2), ("2", 1)]
    assert_error(
        client.get(url, headers=admin_headers, params={"limit": 1001}), 422, "validation_error"
    )


def test_image_attributes_are_served_with_pixel_spacing_as_a_list(
    client: TestClient, admin_headers: dict[str, str], two_series_study: int
) -> None:
    items = client.get(f"/api/studies/{two_series_study}/images", headers=admin_headers).json()[
        "items"
    ]
    with_spacing = items[-1]

    response = client.get(f"/api/images/{with_spacing['id']}", headers=admin_headers)

    assert response.status_code == 200, response.text
    image = response.json()
    assert image == with_spacing
    assert image["pixelSpacing"] == [0.703125, 0.703125]
    assert image["instanceNumber"] == 3
    assert image["sopInstanceUID"] == f"{uid(1)}.2.1"  # Orthanc listed it first, numbered 3
    assert image["sopClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert (image["rows"], image["columns"], image["sliceThickness"]) == (512, 512, 5.0)
    assert (image["windowCenter"], image["windowWidth"]) == (40.0, 400.0)
    assert image["orthancId"]
    assert items[0]["pixelSpacing"] is None  # series 1 has no PixelSpacing


def test_series_images_lists_one_series_only(
    client: TestClient, admin_headers: dict[str, str], two_series_study: int
) -> None:
    url = f"/api/studies/{two_series_study}/series/{uid(1)}.2/images"

    body = client.get(url, headers=admin_headers).json()
    paged = client.get(url, headers=admin_headers, params={"limit": 1, "offset": 2}).json()

    assert body["total"] == 3
    assert image_keys(body) == [("2", 1), ("2", 2), ("2", 3)]
    assert (paged["total"], image_keys(paged)) == (3, [("2", 3)])


def test_series_images_with_an_unknown_or_foreign_series_is_not_found(
    client: TestClient, admin_headers: dict[str, str], two_series_study: int
) -> None:
    for series_uid in (f"{uid(1)}.7", f"{uid(2)}.1"):  # unknown; another study's series
        error = assert_error(
            client.get(
                f"/api/studies/{two_series_study}/series/{series_uid}/images", headers=admin_headers
            ),
            404,
            "not_found",
        )
        assert series_uid in error["message"]


def test_unknown_image_is_not_found(client: TestClient, admin_headers: dict[str, str]) -> None:
    error = assert_error(client.get("/api/images/424242", headers=admin_headers), 404, "not_found")
    assert "424242" in error["message"]
    error = assert_error(
        client.get("/api/images/first", headers=admin_headers), 422, "validation_error"
    )
    assert locations(error) == ["path.image_id"]


def test_images_are_readable_department_wide_and_by_the_patients_physicians(
    client: TestClient, headers_for: HeadersFor, two_series_study: int
) -> None:
    for role in (Role.RADIOLOGIST, Role.TECHNOLOGIST):
        response = client.get(f"/api/studies/{two_series_study}/images", headers=headers_for(role))
        assert response.status_code == 200, (role, response.text)
    # A physician with no order for this patient: as if the study did not exist (the care
    # relationship itself is tested in tests/access).
    response = client.get(
        f"/api/studies/{two_series_study}/images", headers=headers_for(Role.PHYSICIAN)
    )
    assert response.status_code == 404, response.text


# -- error format -----------------------------------------------------------------------------


def test_unknown_route_and_wrong_method_use_the_error_format(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    assert_error(client.get("/api/nothing-here", headers=admin_headers), 404, "not_found")
    assert_error(client.delete("/api/studies", headers=admin_headers), 405, "method_not_allowed")


def test_malformed_json_body_is_a_validation_error(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/studies",
        headers={**admin_headers, "Content-Type": "application/json"},
        content=b"{not json",
    )
    error = assert_error(response, 422, "validation_error")
    assert error["details"] and all("location" in d and "message" in d for d in error["details"])

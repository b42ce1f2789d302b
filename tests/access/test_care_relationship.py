"""The care relationship, route by route: two physicians, two hospitals whose patient ids share
a string, three patients. Each physician reads exactly the records of the patients they order
for or refer, list totals included; everything else answers 404 as if it did not exist. Every
GET route of the API is either checked here or listed with why it holds no patient's records."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core.models import utcnow
from sidecar.events.models import LiveEvent
from sidecar.events.scope import ScopeFilter
from sidecar.patients import service as patients
from sidecar.studies.models import Study

from builders import UID_ROOT, orthanc_study, seed_study
from finding_helpers import raise_finding
from reporting import add_user, sign, write_report
from testapp import USER_PASSWORD, engine_of, flat_routes, login

Headers = dict[str, str]
_numbers = itertools.count(1)


@dataclass
class Record:
    """One study of the world, with what hangs from it."""

    study_id: int
    accession_number: str
    series_uid: str
    image_id: int
    order_id: int | None = None
    report_id: int | None = None
    finding_id: int | None = None
    patient_record_id: int | None = None


@dataclass
class World:
    records: dict[str, Record] = field(default_factory=dict)
    radiologist_id: int = 0

    def ids(self, names: set[str], attribute: str) -> set[int]:
        return {
            value for name in names if (value := getattr(self.records[name], attribute)) is not None
        }


# Who cares for what. DR-A orders for MRN-1 of the northern hospital; DR-B refers MRN-1 of the
# southern hospital (another patient with the same id string) and orders for MRN-2 (north).
# Of the two studies without an order: one is MRN-1 north by its images (DR-A's patient), the
# other carries MRN-1 with no issuer (nobody's: an absent issuer matches only an absent one).
REACH = {
    "dr.a": {"north-1", "north-1-unordered"},
    "dr.b": {"south-1", "north-2"},
}
ALL = {"north-1", "south-1", "north-2", "north-1-unordered", "no-issuer-1"}


def _order(client: TestClient, scheduler: Headers, **values: Any) -> dict[str, Any]:
    n = next(_numbers)
    body = {
        "modality": "CT",
        "patientName": "DOE^JANE",
        "procedureDescription": "CT head",
        "placerOrderNumber": f"CARE-{n}",
        "scheduledAt": "2026-11-23T09:00:00+01:00",
        **values,
    }
    created = client.post("/api/imaging-orders", json=body, headers=scheduler)
    assert created.status_code == 201, created.text
    order: dict[str, Any] = created.json()
    return order


def _study(
    app: FastAPI,
    client: TestClient,
    admin: Headers,
    patient_id: str,
    issuer: str | None,
    accession: str,
) -> tuple[int, str, int]:
    """A study as the images bring it: (study id, a series UID, an image id)."""
    uid = f"{UID_ROOT}.880.{next(_numbers)}"
    study_id = seed_study(
        engine_of(app), orthanc_study(uid, accession_number=accession, patient_id=patient_id)
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.issuer_of_patient_id = issuer  # as the sync reads IssuerOfPatientID from images
        # Filed under its patient, as the sync does once it knows the issuer.
        patients.attach_study(session, study, default_issuer=None, actor="test")
        session.add(study)
        session.commit()
    images = client.get(f"/api/studies/{study_id}/images", headers=admin).json()["items"]
    return study_id, f"{uid}.1", images[0]["id"]


def _set_facility(app: FastAPI, study_id: int, facility: str) -> None:
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.facility_id = facility
        session.add(study)
        session.commit()


@pytest.fixture
def world(
    app: FastAPI,
    client: TestClient,
    admin_headers: Headers,
    technologist: Headers,
    radiologist: Headers,
) -> World:
    built = World()
    plan: list[tuple[str, str, str | None, dict[str, Any] | None]] = [
        ("north-1", "MRN-1", "NORTH", {"providerId": "DR-A", "facilityId": "NORTH-HOSP"}),
        (
            "south-1",
            "MRN-1",
            "SOUTH",
            {"providerId": "DR-X", "referringProviderId": "DR-B", "facilityId": "SOUTH-HOSP"},
        ),
        ("north-2", "MRN-2", "NORTH", {"providerId": "DR-B", "facilityId": "NORTH-HOSP"}),
        ("north-1-unordered", "MRN-1", "NORTH", None),
        ("no-issuer-1", "MRN-1", None, None),
    ]
    for name, patient_id, issuer, order_values in plan:
        order = None
        if order_values is not None:
            order = _order(
                client,
                technologist,
                patientId=patient_id,
                issuerOfPatientId=issuer,
                **order_values,
            )
        accession = order["accessionNumber"] if order else f"U{next(_numbers):05d}"
        study_id, series_uid, image_id = _study(
            app, client, admin_headers, patient_id, issuer, accession
        )
        if name == "north-1-unordered":
            _set_facility(app, study_id, "NORTH-HOSP")  # as its modality's (MODALITY_FACILITIES)
        if order is not None:
            linked = client.post(
                f"/api/studies/{study_id}/link-order",
                json={"orderId": order["id"]},
                headers=technologist,
            )
            assert linked.status_code == 200, linked.text
        record = Record(study_id, accession, series_uid, image_id)
        record.order_id = order["id"] if order else None
        study = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
        record.patient_record_id = study["patientRecordId"]
        report = write_report(client, radiologist, study_id)
        record.report_id = sign(client, radiologist, report["id"])["id"]
        record.finding_id = raise_finding(client, radiologist, study_id)["id"]
        built.records[name] = record
    built.radiologist_id = client.get("/api/auth/me", headers=radiologist).json()["id"]
    return built


@pytest.fixture
def physicians(app: FastAPI, client: TestClient) -> dict[str, Headers]:
    for username, provider_id in (("dr.a", "DR-A"), ("dr.b", "DR-B")):
        add_user(app, username, Role.PHYSICIAN, provider_id=provider_id)
    return {name: login(client, name, USER_PASSWORD) for name in ("dr.a", "dr.b")}


def _listed(client: TestClient, headers: Headers, path: str, **params: Any) -> tuple[set[int], int]:
    answer = client.get(path, params={"limit": 100, **params}, headers=headers)
    assert answer.status_code == 200, (path, answer.text)
    body = answer.json()
    return {item["id"] for item in body["items"]}, body["total"]


#: Lists: (path, query, attribute of Record whose ids it lists).
LISTS: list[tuple[str, dict[str, Any], str]] = [
    ("/api/studies", {}, "study_id"),
    ("/api/studies", {"patientId": "MRN-1"}, "study_id"),
    ("/api/imaging-orders", {}, "order_id"),
    ("/api/imaging-orders", {"patientId": "MRN-1"}, "order_id"),
    ("/api/imaging-orders/patient/MRN-1", {}, "order_id"),
    ("/api/reports", {}, "report_id"),
    ("/api/reports", {"patientId": "MRN-1"}, "report_id"),
    ("/api/reports/radiologist/{radiologist}", {}, "report_id"),
    ("/api/critical-findings", {}, "finding_id"),
    ("/api/critical-findings/pending", {}, "finding_id"),
    ("/api/critical-findings/severity/CRITICAL", {}, "finding_id"),
    ("/api/patients", {}, "patient_record_id"),
    ("/api/patients", {"patientId": "MRN-1"}, "patient_record_id"),
]

#: Reads of one record: path template over a Record's values.
READS = [
    "/api/studies/{study_id}",
    "/api/studies/accession/{accession_number}",
    "/api/studies/{study_id}/images",
    "/api/studies/{study_id}/series/{series_uid}/images",
    "/api/images/{image_id}",
    "/api/imaging-orders/{order_id}",
    "/api/reports/{report_id}",
    "/api/reports/{report_id}/versions",
    "/api/reports/{report_id}/rendering",
    "/api/critical-findings/{finding_id}",
    "/api/patients/{patient_record_id}",
]
#: Reads of one record's images, which Orthanc (down here) serves: out of reach, 404 before
#: Orthanc is asked; in reach, anything but 403 and 404 (a signed link, or 502 from Orthanc).
IMAGE_READS = [
    "/api/images/{image_id}/url",
    "/api/images/{image_id}/preview",
    "/api/studies/{study_id}/thumbnail",
]
#: Lists of one study's records: in reach, they list its one record; else nothing.
STUDY_LISTS = {
    "/api/reports/study/{study_id}": "report_id",
    "/api/critical-findings/study/{study_id}": "finding_id",
}

#: GET routes that hold no one patient's records, and why they need no care check.
NOT_PATIENT_RECORDS = {
    "/api/auth/me": "the caller's own account",
    "/api/users": "administrators only",
    "/api/audit": "administrators only",
    "/api/audit/emergency-access": "administrators only",
    "/api/hl7/messages": "administrators and integrations only",
    "/api/hl7/messages/{message_id}": "administrators and integrations only",
    "/api/critical-findings/metrics": "aggregate counts, administrators and radiologists",
    "/health": "counts only, no patient",
    "/api/procedures": "the procedure catalog: codes and rooms, no patient",
    "/api/procedures/{procedure_id}": "a procedure catalog entry, no patient",
    "/api/events": "a stream, checked by _events_outside_reach below",
    "/api/analyses/{analysis_id}": "radiologists and administrators only (tests/analyses)",
    "/api/studies/{study_id}/analyses": "radiologists and administrators only (tests/analyses)",
    "/api/analytics/turnaround": "aggregate figures, administrators and radiologists",
    "/api/analytics/workload": "aggregate figures, administrators and radiologists",
    "/api/assignment-rules": "reading rules: criteria and radiologists, no patient",
    "/api/report-templates": "report templates, no patient",
    "/health/db": "a service check, no patient",
    "/health/orthanc": "a service check, no patient",
    "/api/deidentified/{copy_id}/url": "a de-identified copy; administrators and radiologists",
    "/api/deidentified/{copy_id}/archive": "a de-identified copy; administrators and radiologists",
    "/api/viewer/authorize": "the viewer's session check (tests/viewer/test_viewer_care.py)",
    "/api/viewer/metadata/dicom-web/studies/{study}/series/{series}/metadata": (
        "the viewer's series metadata (tests/viewer/test_viewer_series_metadata.py)"
    ),
    "/api/reading-worklist": "radiologists and administrators, in their care scope",
    "/api/performed-procedure-steps": "department roles, in their care scope",
    "/api/performed-procedure-steps/{step_id}": "department roles, in their care scope",
    "/api/studies/{study_id}/removals": "administrators only, in their care scope",
    "/api/images/{image_id}/file": (
        "a signed link's image, no token: the link comes from /api/images/{image_id}/url"
    ),
}


def _expected(
    world: World, reach: set[str], path: str, params: dict[str, Any], attr: str
) -> set[int]:
    names = reach
    if params.get("patientId") == "MRN-1" or path.endswith("/patient/MRN-1"):
        names = {n for n in names if n != "north-2"}
    return world.ids(names, attr)


@pytest.mark.parametrize("physician", sorted(REACH))
def test_a_physician_reads_exactly_the_patients_they_care_for(
    app: FastAPI, client: TestClient, world: World, physicians: dict[str, Headers], physician: str
) -> None:
    wrong = _outside_reach(client, world, physicians[physician], REACH[physician])
    wrong += _events_outside_reach(app, world, physician, REACH[physician])
    assert not wrong, "\n".join(wrong)


def _events_outside_reach(app: FastAPI, world: World, username: str, reach: set[str]) -> list[str]:
    """GET /api/events: the events of the records the user reads, and of no other."""
    kinds = {
        "study": "study_id",
        "order": "order_id",
        "report": "report_id",
        "finding": "finding_id",
    }
    expected = {(kind, i) for kind, attr in kinds.items() for i in world.ids(reach, attr)}
    with Session(engine_of(app)) as session:
        user = session.exec(select(User).where(User.username == username)).one()
        events = session.exec(select(LiveEvent)).all()
        seen = ScopeFilter(CareScope(user, utcnow())).visible(session, events)
    got = {(event.kind, event.entity_id) for event in seen}
    return [f"/api/events: {sorted(got)}, not {sorted(expected)}"] if got != expected else []


#: Users limited to facilities: (role, provider id, facilities, the records they read).
FACILITY_REACH: list[tuple[Role, str | None, list[str], set[str]]] = [
    (Role.RADIOLOGIST, None, ["NORTH-HOSP"], {"north-1", "north-2", "north-1-unordered"}),
    (Role.ADMIN, None, ["SOUTH-HOSP"], {"south-1"}),
    (Role.TECHNOLOGIST, None, ["NORTH-HOSP", "SOUTH-HOSP"], ALL - {"no-issuer-1"}),
    (Role.RADIOLOGIST, None, ["EAST-HOSP"], set()),
    # Both limits: DR-B's patients (south-1, north-2) of the southern hospital.
    (Role.PHYSICIAN, "DR-B", ["SOUTH-HOSP"], {"south-1"}),
]


@pytest.mark.parametrize(
    ("role", "provider_id", "facilities", "reach"),
    FACILITY_REACH,
    ids=[f"{role.value}-{'+'.join(f)}" for role, _, f, _ in FACILITY_REACH],
)
def test_a_user_limited_to_facilities_reads_exactly_their_records(
    app: FastAPI,
    client: TestClient,
    world: World,
    admin_headers: Headers,
    role: Role,
    provider_id: str | None,
    facilities: list[str],
    reach: set[str],
) -> None:
    user = {
        "username": "limited.user",
        "password": USER_PASSWORD,
        "role": role.value,
        "providerId": provider_id,
        "facilities": facilities,
    }
    created = client.post("/api/users", json=user, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert created.json()["facilities"] == sorted(facilities)
    headers = login(client, "limited.user", USER_PASSWORD)
    wrong = _outside_reach(client, world, headers, reach)
    wrong += _events_outside_reach(app, world, "limited.user", reach)
    assert not wrong, "\n".join(wrong)


def _outside_reach(
    client: TestClient, world: World, headers: Headers, reach: set[str]
) -> list[str]:
    """What a user answers differently from `reach`, the records they should read."""
    wrong: list[str] = []
    for template, params, attr in LISTS:
        path = template.format(radiologist=world.radiologist_id)
        got, total = _listed(client, headers, path, **params)
        expected = _expected(world, reach, path, params, attr)
        if got != expected or total != len(expected):
            wrong.append(f"{path} {params}: {sorted(got)} (total {total}), not {sorted(expected)}")
    for name in sorted(ALL):
        record = world.records[name]
        in_reach = name in reach
        for template in READS:
            if "{order_id}" in template and record.order_id is None:
                continue
            path = template.format(**vars(record))
            status = client.get(path, headers=headers).status_code
            if status != (200 if in_reach else 404):
                wrong.append(f"{path} ({name}): {status}")
        for template in IMAGE_READS:
            path = template.format(**vars(record))
            status = client.get(path, headers=headers).status_code
            if (status in (403, 404)) if in_reach else (status != 404):
                wrong.append(f"{path} ({name}): {status}")
        for template, attr in STUDY_LISTS.items():
            got, total = _listed(client, headers, template.format(study_id=record.study_id))
            expected = {getattr(record, attr)} if in_reach else set()
            if got != expected or total != len(expected):
                wrong.append(f"{template} ({name}): {sorted(got)}")
    return wrong


def test_department_roles_read_every_patient(
    client: TestClient, world: World, headers_for: Callable[[Role], Headers]
) -> None:
    for role in (Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.ADMIN):
        _, total = _listed(client, headers_for(role), "/api/studies")
        assert total == len(ALL), role
        for record in world.records.values():
            answer = client.get(f"/api/studies/{record.study_id}", headers=headers_for(role))
            assert answer.status_code == 200, (role, answer.text)


def test_a_physician_without_a_provider_id_reads_no_patient(
    app: FastAPI, client: TestClient, world: World
) -> None:
    add_user(app, "dr.none", Role.PHYSICIAN)
    headers = login(client, "dr.none", USER_PASSWORD)
    for path in ("/api/studies", "/api/imaging-orders", "/api/reports", "/api/critical-findings"):
        assert _listed(client, headers, path) == (set(), 0), path


def test_every_get_route_is_checked_for_the_care_relationship(app: FastAPI) -> None:
    """A new route that reads patients' records must be added to the tables above."""
    checked = {t.split("?")[0] for t, _, _ in LISTS} | set(READS) | set(IMAGE_READS)
    checked |= set(STUDY_LISTS)
    checked = {p.replace("{radiologist}", "{radiologist_id}") for p in checked}
    routes = {
        path
        for route in flat_routes(app)
        if "GET" in (getattr(route, "methods", None) or ())
        and (path := getattr(route, "path", "")).startswith(("/api/", "/health"))
    }
    normalised = {_shape(path) for path in checked} | {_shape(p) for p in NOT_PATIENT_RECORDS}
    unchecked = sorted(path for path in routes if _shape(path) not in normalised)
    assert len(routes) > 40, "the app's GET routes were not all found"
    assert not unchecked, f"GET routes with no care-relationship check: {unchecked}"


def _shape(path: str) -> str:
    """A path with its parameters' names dropped, and the fixed values of these tests."""
    parts = []
    for part in path.split("/"):
        if part.startswith("{") or part in ("MRN-1", "CRITICAL"):
            parts.append("{}")
        else:
            parts.append(part)
    return "/".join(parts)

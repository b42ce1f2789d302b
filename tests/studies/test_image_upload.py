"""POST /api/studies/{id}/images: DICOM files uploaded through the API into a real Orthanc (with
its ingress filter, without the plugin), each only if it belongs to the study; read back from
Orthanc, registered by the sync worker, refused file by file with nothing of a refused file
stored, roles and audit. One Orthanc serves the module; every test has its own UIDs and
database (both databases)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.ingest.models import PendingStudy
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.sync import OrthancSync, RoundReport
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app

from builders import audit_events
from dicom_factory import GeneratedStudy, make_invalid_files, make_study
from testapp import ADMIN_PASSWORD, CLOSED_ORTHANC_URL, app_settings, engine_of, login, service_of

pytestmark = pytest.mark.orthanc

HeadersFor = Callable[[Role], dict[str, str]]
LIMIT_MB = 1


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


@pytest.fixture
def settings(database_url: str, tmp_path: Path, orthanc: OrthancProcess) -> Settings:
    """The app under test talks to the module's Orthanc; uploads are limited to 1 MB."""
    return app_settings(
        database_url, tmp_path, orthanc_url=orthanc.url, upload_max_mb=LIMIT_MB, orthanc_timeout=30
    )


@pytest.fixture
def engine(app: FastAPI) -> Engine:
    engine: Engine = engine_of(app)
    return engine


def announce(client: TestClient, headers: dict[str, str], images: GeneratedStudy) -> int:
    """The study as the sidecar knows it before its images: its UID, accession and patient."""
    response = client.post(
        "/api/studies",
        headers=headers,
        json={
            "studyInstanceUID": images.study_instance_uid,
            "accessionNumber": images.accession_number,
            "patientId": images.patient_id,
        },
    )
    assert response.status_code == 201, response.text
    study_id: int = response.json()["id"]
    return study_id


def generated(folder: Path, instances: int = 3, **values: Any) -> GeneratedStudy:
    return make_study(folder, series_count=1, instances_per_series=instances, **values)


def stored_files(orthanc: OrthancProcess, uid: str) -> dict[str, pydicom.Dataset]:
    """Every file Orthanc holds under the Study Instance UID, read back, by SOP Instance UID."""
    found: dict[str, pydicom.Dataset] = {}
    for orthanc_id in OrthancClient(orthanc.url).studies_with_uid(uid):
        for instance in httpx.get(f"{orthanc.url}/studies/{orthanc_id}/instances").json():
            content = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/file").content
            dataset = pydicom.dcmread(io.BytesIO(content))
            found[str(dataset.SOPInstanceUID)] = dataset
    return found


def sop_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def multipart(*entries: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, content, "application/dicom")) for name, content in entries]


def upload(
    client: TestClient,
    headers: dict[str, str],
    study_id: int,
    *entries: tuple[str, bytes],
    **q: Any,
) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/api/studies/{study_id}/images", headers=headers, files=multipart(*entries), params=q
    )
    return response


def named(images: GeneratedStudy) -> list[tuple[str, bytes]]:
    return [(f"slice-{n}.dcm", path.read_bytes()) for n, path in enumerate(images.files, 1)]


def register(app: FastAPI, orthanc_ids: set[str], timeout: float = 30.0) -> None:
    """Runs the sync worker's registration until the queued studies are registered (Orthanc
    calls them stable one second after their last instance)."""
    sync = service_of(app, OrthancSync)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sync.process_pending(sync_report())
        with Session(engine_of(app)) as session:
            queued = set(session.exec(select(PendingStudy.orthanc_id)).all())
        if not queued & orthanc_ids:
            return
        time.sleep(0.5)
    raise AssertionError("the uploaded study was not registered")


def sync_report() -> RoundReport:
    return RoundReport()


def assert_no_patient_data(text: str, images: GeneratedStudy) -> None:
    for value in (images.patient_name, images.patient_id, images.patient_birth_date):
        assert value not in text


# -- storing ------------------------------------------------------------------------------------


def test_a_multipart_upload_stores_every_file_and_the_sidecar_lists_them(
    app: FastAPI,
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "s", instances=3)
    study_id = announce(client, admin_headers, images)

    response = upload(client, technologist, study_id, *named(images))

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["studyId"], body["stored"], body["alreadyStored"], body["refused"]) == (
        study_id,
        3,
        0,
        0,
    )
    assert [f["index"] for f in body["files"]] == [0, 1, 2]
    assert [f["filename"] for f in body["files"]] == ["slice-1.dcm", "slice-2.dcm", "slice-3.dcm"]
    assert {f["status"] for f in body["files"]} == {"stored"}
    assert [f["sopInstanceUID"] for f in body["files"]] == list(images.sop_instance_uids)
    # Read back from Orthanc: the very files, under the study's UID.
    in_orthanc = stored_files(orthanc, images.study_instance_uid)
    assert set(in_orthanc) == set(images.sop_instance_uids)
    for outcome in body["files"]:
        content = httpx.get(f"{orthanc.url}/instances/{outcome['orthancId']}/file").content
        assert pydicom.dcmread(io.BytesIO(content)).SOPInstanceUID == outcome["sopInstanceUID"]
    for path in images.files:
        original = pydicom.dcmread(path)
        assert in_orthanc[str(original.SOPInstanceUID)].PixelData == original.PixelData

    [event] = audit_events(engine, "study.images_uploaded")
    assert (event.actor, event.entity_type, event.entity_id) == (
        "technologist-user",
        "study",
        str(study_id),
    )
    assert event.detail["stored"] == 3 and event.detail["refused"] == 0
    assert sorted(event.detail["sop_instance_uids"]) == sorted(images.sop_instance_uids)
    assert_no_patient_data(str(event.detail), images)

    # Queued for registration: the sync worker lists the new instances.
    [orthanc_study] = event.detail["orthanc_ids"]
    register(app, {orthanc_study})
    listed = client.get(f"/api/studies/{study_id}/images", headers=technologist).json()
    assert {i["sopInstanceUID"] for i in listed["items"]} == set(images.sop_instance_uids)
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert (study["instanceCount"], study["orthancId"], study["status"]) == (
        3,
        orthanc_study,
        "COMPLETED",
    )

    # The same files again: already stored, still 200, nothing new.
    again = upload(client, technologist, study_id, *named(images)[:2])
    assert again.status_code == 200, again.text
    assert {f["status"] for f in again.json()["files"]} == {"already_stored"}
    assert len(stored_files(orthanc, images.study_instance_uid)) == 3


def test_a_single_application_dicom_body_is_stored(
    client: TestClient,
    admin_headers: dict[str, str],
    radiologist: dict[str, str],
    orthanc: OrthancProcess,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "s", instances=1)
    study_id = announce(client, admin_headers, images)

    response = client.post(
        f"/api/studies/{study_id}/images",
        headers={**radiologist, "Content-Type": "application/dicom"},
        content=images.files[0].read_bytes(),
    )

    assert response.status_code == 200, response.text
    [outcome] = response.json()["files"]
    assert (outcome["index"], outcome["filename"], outcome["status"]) == (0, None, "stored")
    assert set(stored_files(orthanc, images.study_instance_uid)) == set(images.sop_instance_uids)


# -- refusals -----------------------------------------------------------------------------------


def test_a_file_of_another_study_is_refused_naming_it_and_nothing_of_it_is_stored(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "own", instances=2)
    other = generated(tmp_path / "other", instances=1)
    study_id = announce(client, admin_headers, images)
    entries = named(images)
    entries.insert(1, ("stray.dcm", other.files[0].read_bytes()))

    response = upload(client, technologist, study_id, *entries)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["stored"], body["refused"]) == (2, 1)
    refused = body["files"][1]
    assert (refused["index"], refused["filename"], refused["status"]) == (1, "stray.dcm", "refused")
    assert refused["httpStatus"] == 422
    assert "another study" in refused["reason"]
    assert_no_patient_data(response.text, other)
    assert stored_files(orthanc, other.study_instance_uid) == {}
    assert set(stored_files(orthanc, images.study_instance_uid)) == set(images.sop_instance_uids)

    # Alone, it is refused outright: 422 naming it by index and name, in the error format.
    alone = upload(client, technologist, study_id, ("stray.dcm", other.files[0].read_bytes()))
    assert alone.status_code == 422, alone.text
    error = alone.json()["error"]
    assert error["code"] == "validation_error"
    [detail] = error["details"]
    assert detail["location"] == "files[0]"
    assert detail["message"].startswith("stray.dcm: ") and "another study" in detail["message"]
    assert_no_patient_data(alone.text, other)
    assert stored_files(orthanc, other.study_instance_uid) == {}
    # Both attempts audited, the refusals counted.
    events = audit_events(engine, "study.images_uploaded")
    assert [(e.detail["stored"], e.detail["refused"]) for e in events] == [(2, 1), (0, 1)]


def test_a_file_under_the_study_uid_naming_another_patient_is_refused(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "own", instances=1)
    intruder = generated(
        tmp_path / "intruder", instances=1, study_instance_uid=images.study_instance_uid
    )
    study_id = announce(client, admin_headers, images)

    response = upload(client, technologist, study_id, ("x.dcm", intruder.files[0].read_bytes()))

    assert response.status_code == 422, response.text
    assert "another patient id" in response.json()["error"]["details"][0]["message"]
    assert_no_patient_data(response.text, intruder)
    assert stored_files(orthanc, images.study_instance_uid) == {}


def test_the_ingress_filter_refusing_another_patient_is_a_409_for_that_file(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    tmp_path: Path,
) -> None:
    """Orthanc already holds the UID under another patient id than the study's record: its
    ingress filter refuses the file (HTTP 500 from Orthanc), which the uploader sees as 409."""
    images = generated(tmp_path / "own", instances=1)
    elsewhere = generated(
        tmp_path / "first", instances=1, study_instance_uid=images.study_instance_uid
    )
    httpx.post(
        f"{orthanc.url}/instances", content=elsewhere.files[0].read_bytes()
    ).raise_for_status()
    study_id = announce(client, admin_headers, images)

    response = upload(client, technologist, study_id, ("mine.dcm", images.files[0].read_bytes()))

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "conflict"
    assert "another patient id" in error["details"][0]["message"]
    assert_no_patient_data(response.text, images)
    assert_no_patient_data(response.text, elsewhere)
    assert set(stored_files(orthanc, images.study_instance_uid)) == set(elsewhere.sop_instance_uids)


def test_assign_rewrites_a_matching_files_study_uid_and_nothing_else(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "own", instances=1)
    study_id = announce(client, admin_headers, images)
    # Same accession number and patient, another Study Instance UID (a modality that made its
    # own); and one of another patient under the same accession number.
    matching = generated(
        tmp_path / "match",
        instances=2,
        accession_number=images.accession_number,
        patient_id=images.patient_id,
    )
    accession = images.accession_number
    stranger = generated(tmp_path / "stranger", instances=1, accession_number=accession)
    entries = [*named(matching), ("stranger.dcm", stranger.files[0].read_bytes())]

    without = upload(client, technologist, study_id, *entries[:2])
    assert without.status_code == 422, without.text
    assert stored_files(orthanc, matching.study_instance_uid) == {}

    response = upload(client, technologist, study_id, *entries, assign="true")

    assert response.status_code == 200, response.text
    files = response.json()["files"]
    assert [(f["status"], f["assigned"]) for f in files] == [
        ("stored", True),
        ("stored", True),
        ("refused", False),
    ]
    assert files[2]["httpStatus"] == 422 and files[2]["filename"] == "stranger.dcm"
    in_orthanc = stored_files(orthanc, images.study_instance_uid)
    assert set(in_orthanc) == set(matching.sop_instance_uids)
    for path in matching.files:
        original = pydicom.dcmread(path)
        copy = in_orthanc[str(original.SOPInstanceUID)]
        assert copy.StudyInstanceUID == images.study_instance_uid
        assert copy.SeriesInstanceUID == original.SeriesInstanceUID
        assert copy.PatientID == original.PatientID and copy.PixelData == original.PixelData
    assert stored_files(orthanc, matching.study_instance_uid) == {}
    assert stored_files(orthanc, stranger.study_instance_uid) == {}
    event = audit_events(engine, "study.images_uploaded")[-1]
    assert (event.detail["stored"], event.detail["assigned"], event.detail["refused"]) == (2, 2, 1)


def test_not_dicom_broken_and_oversized_files_are_refused_and_nothing_of_them_is_stored(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "own", instances=2)
    study_id = announce(client, admin_headers, images)
    big = generated(
        tmp_path / "big",
        instances=1,
        rows=1024,
        columns=1024,
        study_instance_uid=images.study_instance_uid,
        patient_id=images.patient_id,
        accession_number=images.accession_number,
    )
    big_bytes = big.files[0].read_bytes()
    assert len(big_bytes) > LIMIT_MB * 1024 * 1024
    invalid = make_invalid_files(tmp_path / "invalid")
    truncated = images.files[1].read_bytes()[:-200]
    entries = [
        ("notes.txt", invalid["not_dicom"].read_bytes()),
        ("cut.dcm", truncated),
        ("huge.dcm", big_bytes),
        ("empty.dcm", b""),
        ("no-sop.dcm", invalid["missing_sop_instance_uid"].read_bytes()),
        ("preamble-only.dcm", b"\0" * 128 + b"DICM"),
    ]

    response = upload(client, technologist, study_id, *entries)

    assert response.status_code == 422, response.text  # several reasons: 422
    details = response.json()["error"]["details"]
    assert [d["location"] for d in details] == [f"files[{i}]" for i in range(len(entries))]
    assert [d["message"].split(":")[0] for d in details] == [name for name, _ in entries]
    assert stored_files(orthanc, images.study_instance_uid) == {}

    # With a good file beside them: each refusal's own status.
    mixed = upload(client, technologist, study_id, (named(images)[0]), *entries)
    assert mixed.status_code == 200, mixed.text
    statuses = [(f["status"], f["httpStatus"]) for f in mixed.json()["files"]]
    assert statuses == [
        ("stored", None),
        ("refused", 415),
        ("refused", 422),
        ("refused", 413),
        ("refused", 415),
        ("refused", 422),
        ("refused", 422),
    ]
    assert set(stored_files(orthanc, images.study_instance_uid)) == {sop_uid_of(images.files[0])}

    # One body: its own status.
    for content, status in ((big_bytes, 413), (b"%PDF-1.4 not an image", 415), (truncated, 422)):
        single = client.post(
            f"/api/studies/{study_id}/images",
            headers={**technologist, "Content-Type": "application/dicom"},
            content=content,
        )
        assert single.status_code == status, single.text
    assert set(stored_files(orthanc, images.study_instance_uid)) == {sop_uid_of(images.files[0])}


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"json": {"files": []}}, 415, id="json-body"),
        pytest.param({"content": b"x", "headers": {"Content-Type": "image/png"}}, 415, id="png"),
        pytest.param({"data": {"note": "hello"}, "files": {}}, 415, id="urlencoded-form"),
        pytest.param(
            {"files": [("file", ("a.dcm", b"x", "application/dicom"))]}, 400, id="wrong-field"
        ),
        pytest.param(
            {
                "content": b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            400,
            id="part-without-name",
        ),
        pytest.param(
            {"content": b"", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            id="no-boundary",
        ),
    ],
)
def test_bodies_that_are_not_uploads_are_refused(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    tmp_path: Path,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    images = generated(tmp_path / "own", instances=1)
    study_id = announce(client, admin_headers, images)
    headers = {**technologist, **kwargs.pop("headers", {})}
    response = client.post(f"/api/studies/{study_id}/images", headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}


# -- who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.PHYSICIAN, Role.INTEGRATION])
def test_other_roles_are_refused_and_nothing_is_stored(
    client: TestClient,
    admin_headers: dict[str, str],
    headers_for: HeadersFor,
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
    role: Role,
) -> None:
    images = generated(tmp_path / "own", instances=1)
    study_id = announce(client, admin_headers, images)
    response = upload(client, headers_for(role), study_id, *named(images))
    assert response.status_code == 403, response.text
    assert stored_files(orthanc, images.study_instance_uid) == {}
    assert audit_events(engine, "study.images_uploaded") == []


def test_an_unknown_study_is_404_and_no_token_is_401(
    client: TestClient, technologist: dict[str, str], orthanc: OrthancProcess, tmp_path: Path
) -> None:
    images = generated(tmp_path / "own", instances=1)
    assert upload(client, technologist, 987654, *named(images)).status_code == 404
    assert upload(client, technologist, 2**31, *named(images)).status_code == 422
    assert upload(client, {}, 1, *named(images)).status_code == 401
    assert stored_files(orthanc, images.study_instance_uid) == {}


def test_orthanc_down_answers_503_and_nothing_is_audited_as_stored(
    database_url: str, tmp_path: Path
) -> None:
    app = create_app(app_settings(database_url, tmp_path, orthanc_url=CLOSED_ORTHANC_URL))
    images = generated(tmp_path / "own", instances=2)
    with TestClient(app) as client:
        headers = login(client, "admin", ADMIN_PASSWORD)
        study_id = announce(client, headers, images)
        response = upload(client, headers, study_id, *named(images))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    [event] = audit_events(engine_of(app), "study.images_uploaded")
    assert (event.detail["stored"], event.detail["refused"]) == (0, 2)


def test_hostile_file_names_are_cleaned_and_too_many_files_refused(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    tmp_path: Path,
) -> None:
    images = generated(tmp_path / "own", instances=1)
    other = generated(tmp_path / "other", instances=1)
    study_id = announce(client, admin_headers, images)
    # Raw bytes: httpx would percent-encode the control characters itself.
    hostile = b"../../etc/evil\x1b[31m\x07name.dcm"
    long_name = b"x" * 1000 + b".dcm"
    body = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n'
        b"Content-Type: application/dicom\r\n\r\n%s\r\n" % (name, content)
        for name, content in (
            (hostile, other.files[0].read_bytes()),
            (long_name, images.files[0].read_bytes()),
        )
    )
    response = client.post(
        f"/api/studies/{study_id}/images",
        headers={**technologist, "Content-Type": "multipart/form-data; boundary=B"},
        content=body + b"--B--\r\n",
    )
    assert response.status_code == 200, response.text
    names = [f["filename"] for f in response.json()["files"]]
    assert names[0] == "evil[31mname.dcm"  # no directory, no control characters
    assert len(names[1]) == 255
    assert stored_files(orthanc, other.study_instance_uid) == {}

    many = [("files", (f"{n}.dcm", b"x", "application/dicom")) for n in range(1001)]
    refused = client.post(f"/api/studies/{study_id}/images", headers=technologist, files=many)
    assert refused.status_code == 400, refused.text
    assert "Too many files" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (None, None),
        ("", None),
        ("scan.dcm", "scan.dcm"),
        ("C:\\Users\\x\\scan.dcm", "scan.dcm"),
        ("dir/", None),
        ("a\u202eb\u200b.dcm", "ab.dcm"),
    ],
)
def test_clean_filename(name: str | None, shown: str | None) -> None:
    from sidecar.studies.upload_body import clean_filename

    assert clean_filename(name) == shown

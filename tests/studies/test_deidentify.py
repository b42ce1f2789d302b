"""De-identified copies (issue 15, item 8), against a real Orthanc (the run's plain Orthanc, with
the DICOM ingress filter): a study full of identifying attributes is copied under the PS3.15
Basic Application Level Confidentiality Profile, the copy's ZIP is fetched through its signed
link without a token and every file is read back with pydicom; the copy is never registered as
a clinical study, whichever way the sync hears of it. Both databases."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.core import signed_links
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.sync import OrthancSync, RoundReport
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.studies.deidentification import CopyStatus, DeidentifiedCopy
from sidecar.studies.models import Study, StudyStatus

from account_helpers import now_clock
from builders import audit_events
from dicom_factory import GeneratedStudy, make_study
from finding_helpers import FakeClock
from stack import wait_for
from testapp import USER_PASSWORD, app_settings, engine_of, login

pytestmark = pytest.mark.orthanc

HeadersFor = Callable[[Role], dict[str, str]]
PUBLIC_URL = "https://sidecar.example.org"
PURPOSE = "Teaching file: chest CT, 2027 residents' course"

# Identifying attributes written into every instance beside those make_study writes, with
# values found nowhere else (so that finding one anywhere in the copy is a leak).
EXTRA_IDENTIFYING = {
    "InstitutionAddress": "12 HARBOUR ROAD SPRINGFIELD",
    "InstitutionalDepartmentName": "RADIOLOGY WEST WING",
    "OtherPatientIDs": "OTHERMRN77120",
    "PatientAddress": "7 ELM STREET SHELBYVILLE",
    "PatientTelephoneNumbers": "555-0142-9981",
    "PatientMotherBirthName": "MOTHERSNAME^MAIDEN",
    "PatientBirthName": "BIRTHNAME^FORMER",
    "PatientBirthTime": "071530",
    "MedicalRecordLocator": "SHELF-B-4471",
    "Occupation": "HARBOUR PILOT",
    "AdditionalPatientHistory": "FELL FROM LADDER AT LIGHTHOUSE",
    "PatientComments": "PREFERS EVENING APPOINTMENTS",
    "ImageComments": "COMPARE WITH OUTSIDE FILM",
    "MilitaryRank": "CAPTAIN",
    "BranchOfService": "COAST GUARD",
    "PerformingPhysicianName": "PERFORMER^PAULA",
    "OperatorsName": "OPERATOR^OSCAR",
    "PhysiciansOfRecord": "RECORD^RITA",
    "NameOfPhysiciansReadingStudy": "READER^RAY",
    "RequestingPhysician": "REQUESTER^ROBIN",
    "DeviceSerialNumber": "SN-99812-X",
    "IssuerOfPatientID": "SPRINGFIELDGENERAL",
    "AdmissionID": "ADM-552901",
    "RequestedProcedureID": "RP-118832",
    "PerformedProcedureStepID": "PPS-118832",
    "PerformedProcedureStepDescription": "CT CHEST FOR LIGHTHOUSE FALL",
    "ProtocolName": "SPRINGFIELD CHEST PROTOCOL",
    "PatientWeight": "71.5",
    "PatientSize": "1.78",
}
# Attributes of PS3.15 Table E.1-1 a copy must not keep a value of (absent or empty).
PROFILE_ATTRIBUTES = (
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyDescription",
    "SeriesDescription",
    "StationName",
    "RequestAttributesSequence",
    "OtherPatientIDsSequence",
    "ReferencedStudySequence",
    *EXTRA_IDENTIFYING,
)
# UIDs that name a kind of thing (shared by every file of the kind), not one object.
CLASS_UIDS = {"SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID"}
CLASS_UIDS |= {"ImplementationClassUID", "ReferencedSOPClassUID"}


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


class Source:
    """A study with identifying attributes everywhere, stored in Orthanc."""

    def __init__(
        self, images: GeneratedStudy, orthanc_id: str, datasets: Sequence[Dataset]
    ) -> None:
        self.images = images
        self.orthanc_id = orthanc_id
        self.datasets = datasets

    def secrets(self) -> set[str]:
        """Every identifying value written, as text: none may appear anywhere in the copy."""
        found = {
            self.images.patient_id,
            self.images.accession_number,
            self.images.patient_birth_date,
            self.images.institution_name,
            self.images.study_description,
            *self.images.patient_name.split("^"),
            *self.images.referring_physician.split("^")[:2],
            *(value for value in EXTRA_IDENTIFYING.values() if not value[0].isdigit()),
            "PRIVATE CREATOR SECRET",
            "OTHER-PATIENT-ID-IN-SEQUENCE",
        }
        return {value for value in found if len(value) >= 4}

    def instance_uids(self) -> set[str]:
        return {uid for dataset in self.datasets for uid in object_uids(dataset)}


@pytest.fixture(scope="module")
def source(orthanc: OrthancProcess, tmp_path_factory: pytest.TempPathFactory) -> Source:
    images = make_study(tmp_path_factory.mktemp("deid"), series_count=2, instances_per_series=2)
    datasets = []
    orthanc_id = ""
    for path in images.files:
        dataset = pydicom.dcmread(path)
        for keyword, value in EXTRA_IDENTIFYING.items():
            setattr(dataset, keyword, value)
        request = Dataset()
        request.AccessionNumber = images.accession_number
        request.RequestedProcedureID = EXTRA_IDENTIFYING["RequestedProcedureID"]
        dataset.RequestAttributesSequence = [request]
        other = Dataset()
        other.PatientID = "OTHER-PATIENT-ID-IN-SEQUENCE"
        dataset.OtherPatientIDsSequence = [other]
        referenced = Dataset()
        referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        referenced.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        dataset.ReferencedStudySequence = [referenced]
        # The patient named again inside sequences the profile keeps (Orthanc replaces the
        # top-level PatientName and PatientID only), one of them two levels down.
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator = "121320", "DCM"
        purpose.PatientName = images.patient_name
        derived_from = Dataset()
        derived_from.ReferencedSOPClassUID = dataset.SOPClassUID
        derived_from.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        derived_from.PatientName = images.patient_name
        derived_from.PatientID = images.patient_id
        derived_from.StudyInstanceUID = dataset.StudyInstanceUID
        derived_from.PurposeOfReferenceCodeSequence = [purpose]
        dataset.SourceImageSequence = [derived_from]
        block = dataset.private_block(0x0009, "SPRINGFIELD PRIVATE", create=True)
        block.add_new(0x01, "LO", "PRIVATE CREATOR SECRET")
        dataset.save_as(path)
        datasets.append(dataset)
        stored = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes())
        stored.raise_for_status()
        orthanc_id = stored.json()["ParentStudy"]
    return Source(images, orthanc_id, datasets)


def object_uids(dataset: Dataset) -> Iterator[str]:
    """Every UID in the dataset (sequences included) that names one object."""
    for element in dataset.iterall():
        if element.VR == "UI" and element.keyword not in CLASS_UIDS and element.value:
            yield str(element.value)
    if hasattr(dataset, "file_meta") and "MediaStorageSOPInstanceUID" in dataset.file_meta:
        yield str(dataset.file_meta.MediaStorageSOPInstanceUID)


def texts(dataset: Dataset) -> Iterator[str]:
    for element in dataset.iterall():
        if element.VR in ("SQ", "OB", "OW", "UN") or element.value is None:
            continue
        yield str(element.value).upper()


@pytest.fixture
def clock() -> FakeClock:
    return now_clock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, orthanc: OrthancProcess) -> Settings:
    return app_settings(database_url, tmp_path, orthanc_url=orthanc.url, public_url=PUBLIC_URL)


@pytest.fixture
def app(settings: Settings, orthanc: OrthancProcess, clock: FakeClock) -> FastAPI:
    return create_app(settings, orthanc=OrthancClient(orthanc.url, timeout=30), clock=clock)


def seed_study(app: FastAPI, source: Source, **columns: Any) -> int:
    """The sidecar's row of the source study, as the sync writes it."""
    images = source.images
    with Session(engine_of(app)) as session:
        study = Study(
            study_instance_uid=images.study_instance_uid,
            patient_id=images.patient_id,
            patient_name=images.patient_name,
            accession_number=images.accession_number,
            orthanc_id=source.orthanc_id,
            status=StudyStatus.COMPLETED,
            series_count=len(images.series),
            instance_count=images.instance_count,
            **columns,
        )
        session.add(study)
        session.commit()
        assert study.id is not None
        return study.id


@pytest.fixture
def study_id(app: FastAPI, client: TestClient, source: Source) -> int:
    return seed_study(app, source)


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def message(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["message"])


def deidentify(
    client: TestClient, headers: dict[str, str], study_id: int, purpose: str = PURPOSE
) -> dict[str, Any]:
    answer = client.post(
        f"/api/studies/{study_id}/deidentify", json={"purpose": purpose}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "private, no-store"
    made: dict[str, Any] = answer.json()
    return made


def test_the_copy_keeps_no_identifying_value_has_new_uids_and_is_not_registered(
    app: FastAPI,
    client: TestClient,
    headers_for: HeadersFor,
    orthanc: OrthancProcess,
    source: Source,
    study_id: int,
    clock: FakeClock,
) -> None:
    made = deidentify(client, headers_for(Role.RADIOLOGIST), study_id)
    assert made["sourceStudyId"] == study_id
    assert made["status"] == "ready"
    assert made["instanceCount"] == source.images.instance_count
    assert made["purpose"] == PURPOSE
    assert made["createdBy"] == "radiologist-user"
    assert made["pseudonym"].startswith("DEID-")
    assert made["studyInstanceUID"].startswith("2.25.")
    assert made["archiveUrl"].startswith(f"{PUBLIC_URL}/api/deidentified/{made['id']}/archive?")
    in_orthanc = httpx.get(f"{orthanc.url}/studies/{made['orthancId']}").json()
    assert in_orthanc["MainDicomTags"]["StudyInstanceUID"] == made["studyInstanceUID"]

    archive = client.get(local(made["archiveUrl"]))  # no token
    assert archive.status_code == 200, archive.text
    assert archive.headers["content-type"] == "application/zip"
    assert archive.headers["cache-control"] == "private, no-store"
    assert "attachment" in archive.headers["content-disposition"]
    files = zipfile.ZipFile(io.BytesIO(archive.content))
    datasets = [pydicom.dcmread(io.BytesIO(files.read(name))) for name in files.namelist()]
    assert len(datasets) == source.images.instance_count

    secrets, original_uids = source.secrets(), source.instance_uids()
    copy_uids: set[str] = set()
    for dataset in datasets:
        assert dataset.PatientName == made["pseudonym"]
        assert dataset.PatientID == made["pseudonym"]
        assert dataset.PatientIdentityRemoved == "YES"
        assert "Basic Application Confidentiality Profile" in dataset.DeidentificationMethod
        assert dataset.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert dataset.StudyInstanceUID == made["studyInstanceUID"]
        for keyword in PROFILE_ATTRIBUTES:
            assert not dataset.get(keyword), keyword  # removed, or present and empty
        assert not [element for element in dataset if element.tag.is_private]
        leaked = [text for text in texts(dataset) for s in secrets if s.upper() in text]
        assert leaked == []
        uids = set(object_uids(dataset))
        assert uids & original_uids == set()
        copy_uids |= uids
    # Every series, instance and frame of reference has a UID of its own, new.
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    assert len({d.SeriesInstanceUID for d in datasets}) == len(source.images.series)
    assert made["studyInstanceUID"] in copy_uids

    engine = engine_of(app)
    deidentified = audit_events(engine, "study.deidentified")
    assert [(e.actor, e.entity_id) for e in deidentified] == [("radiologist-user", str(study_id))]
    assert deidentified[0].detail["purpose"] == PURPOSE
    assert deidentified[0].detail["copy_id"] == made["id"]
    downloads = audit_events(engine, "deidentified_copy.archive_downloaded")
    assert [(e.actor, e.entity_id) for e in downloads] == [("signed-link", str(made["id"]))]

    # The sync hears of the copy (the plugin's notice; the change log gives the same ids) and
    # passes over it, stable or not: no study row, no patient, nothing in the study list.
    sync = OrthancSync(engine, OrthancClient(orthanc.url), interval=1, now=clock)
    sync.enqueue([made["orthancId"], made["orthancId"]], "plugin")
    report = RoundReport()
    sync.process_pending(report)
    assert report.passed_over == [made["orthancId"]]
    assert report.registered == []
    with Session(engine) as session:
        registered = session.exec(select(Study.study_instance_uid)).all()
        assert registered == [source.images.study_instance_uid]
    listed = client.get("/api/studies", headers=headers_for(Role.RADIOLOGIST)).json()
    assert [s["id"] for s in listed["items"]] == [study_id]
    # The source itself is still registered normally (the check does not pass over everything)
    # once Orthanc calls it stable.
    wait_for(
        lambda: httpx.get(f"{orthanc.url}/studies/{source.orthanc_id}").json()["IsStable"],
        timeout=30,
        what="the source study stable in Orthanc",
    )
    sync.enqueue([source.orthanc_id], "plugin")
    sync.process_pending(report)
    assert source.orthanc_id in report.registered


def test_who_may_make_a_copy_and_what_the_request_must_say(
    app: FastAPI,
    client: TestClient,
    headers_for: HeadersFor,
    admin_headers: dict[str, str],
    source: Source,
    study_id: int,
) -> None:
    path = f"/api/studies/{study_id}/deidentify"
    radiologist = headers_for(Role.RADIOLOGIST)
    for body in ({}, {"purpose": ""}, {"purpose": "  \n "}, {"purpose": "x" * 501}):
        refused = client.post(path, json=body, headers=radiologist)
        assert refused.status_code == 422, body
        assert "purpose" in refused.text, body
    for wrong in ("ok\x00", "ok\x1b[2J", 5, None):
        answer = client.post(path, json={"purpose": wrong}, headers=radiologist)
        assert answer.status_code == 422, wrong
    assert client.post(path, json={"purpose": "x"}).status_code == 401
    for role in (Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION):
        answer = client.post(path, json={"purpose": "research"}, headers=headers_for(role))
        assert answer.status_code == 403, role
    unknown = client.post(
        "/api/studies/999999/deidentify", json={"purpose": "x"}, headers=admin_headers
    )
    assert unknown.status_code == 404

    # A radiologist limited to another facility: as for a study that does not exist.
    created = client.post(
        "/api/users",
        json={
            "username": "rad.north",
            "password": USER_PASSWORD,
            "role": "radiologist",
            "facilities": ["NORTH"],
        },
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.facility_id = "SOUTH"
        session.add(study)
        session.commit()
    north = login(client, "rad.north", USER_PASSWORD)
    outside = client.post(path, json={"purpose": "research"}, headers=north)
    assert outside.status_code == 404
    assert message(outside) == f"study {study_id} not found"

    # A study the sidecar knows with no images in Orthanc.
    with Session(engine_of(app)) as session:
        empty = Study(study_instance_uid="1.2.826.0.1.3680043.8.498.77", patient_id="P-EMPTY")
        session.add(empty)
        session.commit()
        empty_id = empty.id
    no_images = client.post(
        f"/api/studies/{empty_id}/deidentify", json={"purpose": "x"}, headers=admin_headers
    )
    assert no_images.status_code == 409
    assert "no images in Orthanc" in message(no_images)

    with Session(engine_of(app)) as session:
        assert session.exec(select(DeidentifiedCopy)).all() == []
    assert audit_events(engine_of(app), "study.deidentified") == []

    # A study whose images were deleted from Orthanc behind the sidecar's back.
    gone_id = seed_study_row(app, "1.2.826.0.1.3680043.8.498.78", "0" * 8 + "-00000000" * 4)
    gone = client.post(
        f"/api/studies/{gone_id}/deidentify", json={"purpose": "x"}, headers=admin_headers
    )
    assert gone.status_code == 409
    assert "no longer in Orthanc" in message(gone)
    with Session(engine_of(app)) as session:
        [failed] = session.exec(select(DeidentifiedCopy)).all()
        assert (failed.source_study_id, failed.status) == (gone_id, CopyStatus.FAILED)


def seed_study_row(app: FastAPI, uid: str, orthanc_id: str) -> int:
    with Session(engine_of(app)) as session:
        study = Study(study_instance_uid=uid, patient_id="P-GONE", orthanc_id=orthanc_id)
        session.add(study)
        session.commit()
        assert study.id is not None
        return study.id


def test_an_altered_incomplete_or_expired_archive_link_answers_403(
    app: FastAPI,
    settings: Settings,
    client: TestClient,
    orthanc: OrthancProcess,
    admin_headers: dict[str, str],
    study_id: int,
    clock: FakeClock,
) -> None:
    first = deidentify(client, admin_headers, study_id)
    second = deidentify(client, admin_headers, study_id, purpose="Second opinion, Boston")
    # Two copies of one study cannot be linked to each other.
    assert first["pseudonym"] != second["pseudonym"]
    assert first["studyInstanceUID"] != second["studyInstanceUID"]
    assert first["orthancId"] != second["orthancId"]

    url = first["archiveUrl"]
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    path = f"/api/deidentified/{first['id']}/archive"

    def fetch(target: str, **changes: str | None) -> httpx.Response:
        values = {k: v for k, v in {**query, **changes}.items() if v is not None}
        answer: httpx.Response = client.get(f"{target}?{urlencode(values)}")
        return answer

    signature = query["signature"]
    tampered = ("A" if signature[0] != "A" else "B") + signature[1:]
    refused = {
        "tampered signature": fetch(path, signature=tampered),
        "another copy": fetch(f"/api/deidentified/{second['id']}/archive"),
        "later expiry": fetch(path, expires=str(int(query["expires"]) + 600)),
        "malformed expiry": fetch(path, expires="tomorrow"),
        # str.isdigit() holds for these, int() refuses the first and reads the second as 123.
        "superscript digit expiry": fetch(path, expires="\u00b2"),
        "non-ASCII digits expiry": fetch(path, expires="\u0661\u0662\u0663"),
    }
    for case, answer in refused.items():
        assert answer.status_code == 403, case
        assert "signature does not match" in message(answer), case
    for name in ("expires", "signature"):
        answer = fetch(path, **{name: None})
        assert answer.status_code == 403, name
        assert f"incomplete (no {name})" in message(answer)
    # Signed with the same key for another kind of link, the same id and expiry: refused.
    other_kind = signed_links.sign(
        signed_links.link_key(settings.jwt_secret),
        "image-link",
        (first["id"],),
        int(query["expires"]),
    )
    assert fetch(path, signature=other_kind).status_code == 403
    assert (
        signed_links.sign(
            signed_links.link_key(settings.jwt_secret),
            "deidentified-archive",
            (first["id"],),
            int(query["expires"]),
        )
        == signature
    )  # the refusal above is the kind's, not a wrong key

    clock.advance(minutes=14, seconds=59)
    assert fetch(path).status_code == 200
    clock.advance(seconds=1)
    expired = fetch(path)
    assert expired.status_code == 403
    assert "expired" in message(expired)
    assert len(audit_events(engine_of(app), "deidentified_copy.archive_downloaded")) == 1

    # A new link, for those who may make copies, works again.
    renewed = client.get(f"/api/deidentified/{first['id']}/url", headers=admin_headers)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["studyInstanceUID"] == first["studyInstanceUID"]
    assert client.get(local(renewed.json()["archiveUrl"])).status_code == 200
    assert len(audit_events(engine_of(app), "deidentified_copy.link_created")) == 1
    assert client.get("/api/deidentified/999999/url", headers=admin_headers).status_code == 404

    # The copy deleted in Orthanc: its link says so rather than failing midway.
    assert httpx.delete(f"{orthanc.url}/studies/{first['orthancId']}").status_code == 200
    deleted = client.get(local(renewed.json()["archiveUrl"]))
    assert deleted.status_code == 404
    assert message(deleted) == f"de-identified copy {first['id']} is no longer in Orthanc"


def test_orthanc_down_answers_503_and_keeps_the_copy_out_of_the_registry(
    database_url: str, tmp_path: Path, source: Source
) -> None:
    """The default test settings point at a closed port: Orthanc is down."""
    settings = app_settings(database_url, tmp_path, public_url=PUBLIC_URL)
    app = create_app(settings)
    with TestClient(app) as client:
        study_id = seed_study(app, source)
        admin = login(client, "admin", settings.admin_password)
        answer = client.post(
            f"/api/studies/{study_id}/deidentify", json={"purpose": "x"}, headers=admin
        )
        assert answer.status_code == 503
        assert "no copy was made" in message(answer)
    engine = engine_of(app)
    with Session(engine) as session:
        copies = session.exec(select(DeidentifiedCopy).order_by(col(DeidentifiedCopy.id))).all()
        # Recorded (failed) rather than forgotten: a part Orthanc wrote is never registered.
        assert [(c.status, c.orthanc_id) for c in copies] == [(CopyStatus.FAILED, None)]
    assert audit_events(engine, "study.deidentified") == []
    assert [e.entity_id for e in audit_events(engine, "study.deidentify_failed")] == [str(study_id)]

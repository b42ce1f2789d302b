"""Stored images follow their patient (IHE PIR), against a real Orthanc with the ingress filter:
a merge re-files them under the surviving id, a correction rewrites them in place, every UID
stays, nothing is missing at any moment, Orthanc down or a crash mid-way loses nothing.

One Orthanc (without the plugin) serves the module; every test has its own patients and UIDs,
and its own database (both databases). The worker's thread is never started: tests call
`run_once` on a clock they hold."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from sidecar.core.models import utcnow
from sidecar.ingest.models import PendingStudy
from sidecar.ingest.orthanc_client import OrthancClient, OrthancUnavailable
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.patients import image_updates
from sidecar.patients import service as patients
from sidecar.patients.image_rewrite import REASSIGNMENT_METADATA, patient_values
from sidecar.patients.image_updates import ImageUpdater, queue_if_filed_elsewhere
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus, Patient, PatientSource
from sidecar.studies.models import Study

from builders import audit_events
from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from stack import free_port

pytestmark = pytest.mark.orthanc

ACTOR = "test"


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


@pytest.fixture
def client(orthanc: OrthancProcess) -> Iterator[OrthancClient]:
    client = OrthancClient(orthanc.url, timeout=30)
    yield client
    client.close()


class Stored:
    """A generated study stored in Orthanc, with the sidecar's records of it."""

    def __init__(self, images: GeneratedStudy, study_id: int, patient_record_id: int) -> None:
        self.images = images
        self.study_id = study_id
        self.patient_record_id = patient_record_id

    @property
    def uid(self) -> str:
        return self.images.study_instance_uid


def store(
    orthanc: OrthancProcess,
    engine: Engine,
    folder: Path,
    *,
    patient_id: str,
    patient_name: str = "DOE^JOHN",
    instances: int = 3,
) -> Stored:
    images = make_study(
        folder,
        patient_id=patient_id,
        patient_name=patient_name,
        series_count=1,
        instances_per_series=instances,
    )
    for path in images.files:
        httpx.post(f"{orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    [orthanc_id] = OrthancClient(orthanc.url).studies_with_uid(images.study_instance_uid)
    with Session(engine) as session:
        patient, _ = patients.get_or_create(
            session,
            patient_id,
            None,
            {"patient_name": patient_name},
            source=PatientSource.DICOM,
            actor=ACTOR,
        )
        study = Study(study_instance_uid=images.study_instance_uid, orthanc_id=orthanc_id)
        patients.file_study(session, study, patient)
        session.commit()
        assert study.id is not None and patient.id is not None
        return Stored(images, study.id, patient.id)


def registered_patient(
    engine: Engine, patient_id: str, name: str, birth_date: date | None = None
) -> int:
    with Session(engine) as session:
        patient, _ = patients.get_or_create(
            session,
            patient_id,
            None,
            {"patient_name": name, "patient_birth_date": birth_date, "patient_sex": "F"},
            source=PatientSource.ADT,
            actor=ACTOR,
        )
        session.commit()
        assert patient.id is not None
        return patient.id


def merge(engine: Engine, prior: int, surviving: int) -> None:
    with Session(engine) as session:
        prior_patient, target = session.get(Patient, prior), session.get(Patient, surviving)
        assert prior_patient is not None and target is not None
        patients.merge(session, prior_patient, target, actor=ACTOR)
        session.commit()


def files_of(orthanc: OrthancProcess, uid: str) -> list[pydicom.Dataset]:
    """Every stored file of the Study Instance UID, read back with pydicom."""
    holders = OrthancClient(orthanc.url).studies_with_uid(uid)
    files: list[pydicom.Dataset] = []
    for orthanc_id in holders:
        for instance in httpx.get(f"{orthanc.url}/studies/{orthanc_id}/instances").json():
            content = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/file").content
            files.append(pydicom.dcmread(io.BytesIO(content)))
    return files


def uids(datasets: list[pydicom.Dataset]) -> set[tuple[str, str, str]]:
    return {
        (str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in datasets
    }


def qido_name(orthanc: OrthancProcess, uid: str) -> Any:
    [answer] = httpx.get(
        f"{orthanc.url}/dicom-web/studies", params={"StudyInstanceUID": uid}
    ).json()
    return answer["00100010"]["Value"][0]["Alphabetic"], answer["00100020"]["Value"][0]


def job(engine: Engine, study_id: int) -> ImageUpdate:
    with Session(engine) as session:
        row = session.get(ImageUpdate, study_id)
        assert row is not None
        return row


def test_a_merge_refiles_the_images_under_the_surviving_patient_keeping_every_uid(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-PRIOR-1")
    before = files_of(orthanc, stored.uid)
    survivor = registered_patient(engine, "PIR-SURV-1", "KOWALSKA^ANNA", date(1961, 4, 5))
    merge(engine, stored.patient_record_id, survivor)
    assert (job(engine, stored.study_id).status, job(engine, stored.study_id).cause) == (
        ImageUpdateStatus.PENDING,
        "merge",
    )
    # Orthanc still has the prior id: nothing was written before the merge committed.
    assert {str(d.PatientID) for d in files_of(orthanc, stored.uid)} == {"PIR-PRIOR-1"}

    assert ImageUpdater(engine, client).run_once() is None

    after = files_of(orthanc, stored.uid)
    assert uids(after) == uids(before) and len(after) == 3
    assert {
        (str(d.PatientID), str(d.PatientName), str(d.PatientBirthDate), str(d.PatientSex))
        for d in after
    } == {("PIR-SURV-1", "KOWALSKA^ANNA", "19610405", "F")}
    holders = client.studies_with_uid(stored.uid)
    assert list(holders.values()) == ["PIR-SURV-1"]  # the prior's copies are deleted
    assert qido_name(orthanc, stored.uid) == ("KOWALSKA^ANNA", "PIR-SURV-1")
    done = job(engine, stored.study_id)
    assert (done.status, done.instances_updated, done.last_error) == (
        ImageUpdateStatus.DONE,
        3,
        None,
    )
    with Session(engine) as session:
        study = session.get(Study, stored.study_id)
        assert study is not None and study.orthanc_id == next(iter(holders))
        # Registered again under the new Orthanc ids of its images.
        assert session.get(PendingStudy, study.orthanc_id) is not None
    [event] = audit_events(engine, "study.images_updated_for_patient")
    assert (event.entity_id, event.detail["instances"]) == (str(stored.study_id), 3)

    # Done is done: another round writes nothing.
    assert ImageUpdater(engine, client).run_once() is None
    assert uids(files_of(orthanc, stored.uid)) == uids(before)


def test_corrected_demographics_are_written_in_place(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-SAME-2", instances=2)
    ids_before = set(client.study_instance_ids(next(iter(client.studies_with_uid(stored.uid)))))
    with Session(engine) as session:
        patient = session.get(Patient, stored.patient_record_id)
        assert patient is not None
        patients.update_demographics(
            session,
            patient,
            {"patient_name": "MÜLLER^JÖRG", "patient_birth_date": date(1950, 1, 2)},
            actor=ACTOR,
        )
        session.commit()
    assert job(engine, stored.study_id).cause == "demographics"

    assert ImageUpdater(engine, client).run_once() is None

    after = files_of(orthanc, stored.uid)
    assert {(str(d.PatientID), str(d.PatientName), str(d.PatientBirthDate)) for d in after} == {
        ("PIR-SAME-2", "MÜLLER^JÖRG", "19500102")
    }
    [holder] = client.studies_with_uid(stored.uid)
    assert set(client.study_instance_ids(holder)) == ids_before  # the same instances, rewritten
    # Orthanc's own index (its C-FIND, its explorer) re-read the new values too.
    assert client.study(holder)["PatientMainDicomTags"]["PatientName"] == "MÜLLER^JÖRG"
    assert qido_name(orthanc, stored.uid) == ("MÜLLER^JÖRG", "PIR-SAME-2")
    assert client.studies_with_uid(stored.uid) == {holder: "PIR-SAME-2"}  # nothing left held

    # The modality sends its old copy again: archived already, Orthanc keeps the corrected one.
    sent = storescu_dcmtk(stored.images.files, "127.0.0.1", orthanc.layout.dicom_port, "ORTHANC")
    assert sent.all_success
    assert {str(d.PatientName) for d in files_of(orthanc, stored.uid)} == {"MÜLLER^JÖRG"}


def test_an_issuer_the_surviving_patient_lacks_is_removed_from_the_images(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-PRIOR-7", instances=1)
    [old_study] = client.studies_with_uid(stored.uid)
    [instance] = client.study_instance_ids(old_study)
    # Its images name an issuer (stored again so, as a modality would have sent them).
    client.mark_study(old_study, REASSIGNMENT_METADATA, "PIR-HOLD-TEST")
    held, _ = client.store_instance(
        client.modified_instance(instance, {"PatientID": "PIR-HOLD-TEST"}, [])
    )
    client.delete_instance(instance)
    [held_study] = client.studies_with_uid(stored.uid)
    client.mark_study(held_study, REASSIGNMENT_METADATA, "PIR-PRIOR-7")
    client.store_instance(
        client.modified_instance(
            held, {"PatientID": "PIR-PRIOR-7", "IssuerOfPatientID": "HOSP-X"}, []
        )
    )
    client.delete_instance(held)
    assert {str(d.IssuerOfPatientID) for d in files_of(orthanc, stored.uid)} == {"HOSP-X"}
    survivor = registered_patient(engine, "PIR-SURV-7", "NOWAK^OLA")  # no issuer
    merge(engine, stored.patient_record_id, survivor)

    assert ImageUpdater(engine, client).run_once() is None

    [after] = files_of(orthanc, stored.uid)
    assert str(after.PatientID) == "PIR-SURV-7"
    assert "IssuerOfPatientID" not in after
    assert job(engine, stored.study_id).status == ImageUpdateStatus.DONE


def test_a_retry_after_a_failed_reconstruction_brings_orthancs_index_along(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-SAME-8", instances=2)
    # A second study of the patient keeps its Orthanc patient alive: the index is not rebuilt
    # by the instances alone.
    store(orthanc, engine, tmp_path / "t", patient_id="PIR-SAME-8", instances=1)
    with Session(engine) as session:
        patient = session.get(Patient, stored.patient_record_id)
        assert patient is not None
        patients.update_demographics(session, patient, {"patient_name": "NEW^NAME"}, actor=ACTOR)
        session.commit()

    class ReconstructFails(OrthancClient):
        def reconstruct_study(self, orthanc_id: str) -> None:
            raise OrthancUnavailable("POST reconstruct: ReadTimeout")

    failing = ReconstructFails(orthanc.url, timeout=30)
    assert ImageUpdater(engine, failing).run_once() is not None
    assert job(engine, stored.study_id).status == ImageUpdateStatus.PENDING
    later = ImageUpdater(engine, client, clock=lambda: utcnow() + timedelta(minutes=5))
    assert later.run_once() is None
    assert job(engine, stored.study_id).status == ImageUpdateStatus.DONE
    for holder in client.studies_with_uid(stored.uid):
        assert client.study(holder)["PatientMainDicomTags"]["PatientName"] == "NEW^NAME"


def test_orthanc_down_keeps_the_update_queued_until_it_is_back(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-PRIOR-3", instances=2)
    survivor = registered_patient(engine, "PIR-SURV-3", "NOWAK^EWA")
    merge(engine, stored.patient_record_id, survivor)

    unreachable = OrthancClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    delay = ImageUpdater(engine, unreachable).run_once()
    assert delay is not None and delay > 0
    waiting = job(engine, stored.study_id)
    assert (waiting.status, waiting.attempts) == (ImageUpdateStatus.PENDING, 1)
    assert waiting.last_error and "ConnectError" in waiting.last_error
    with Session(engine) as session:
        assert image_updates.backlog(session).pending == 1

    # Not due yet: a new worker (the sidecar restarted) leaves it until its time.
    assert ImageUpdater(engine, client).run_once() is not None
    assert job(engine, stored.study_id).status == ImageUpdateStatus.PENDING
    later = ImageUpdater(engine, client, clock=lambda: utcnow() + timedelta(minutes=5))
    assert later.run_once() is None
    assert job(engine, stored.study_id).status == ImageUpdateStatus.DONE
    assert {str(d.PatientID) for d in files_of(orthanc, stored.uid)} == {"PIR-SURV-3"}
    with Session(engine) as session:
        assert image_updates.backlog(session).pending == 0


def test_a_crash_between_storing_a_copy_and_deleting_the_original_is_finished_later(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-PRIOR-4", instances=3)
    before = uids(files_of(orthanc, stored.uid))
    survivor = registered_patient(engine, "PIR-SURV-4", "NOWAK^ADAM")
    merge(engine, stored.patient_record_id, survivor)
    with Session(engine) as session:
        study = session.get(Study, stored.study_id)
        assert study is not None
        values = patient_values(study)
    # What a worker killed mid-way leaves: one instance copied under the new id, not deleted.
    [old_study] = client.studies_with_uid(stored.uid)
    first = client.study_instance_ids(old_study)[0]
    client.mark_study(old_study, REASSIGNMENT_METADATA, "PIR-SURV-4")
    client.store_instance(client.modified_instance(first, values, []))
    assert sorted(client.studies_with_uid(stored.uid).values()) == ["PIR-PRIOR-4", "PIR-SURV-4"]

    assert ImageUpdater(engine, client).run_once() is None

    after = files_of(orthanc, stored.uid)
    assert uids(after) == before and len(after) == 3  # no instance lost, none twice
    assert {str(d.PatientID) for d in after} == {"PIR-SURV-4"}
    assert job(engine, stored.study_id).instances_updated == 3


def test_the_reassignment_marker_admits_only_the_marked_id_and_only_over_rest(
    orthanc: OrthancProcess, client: OrthancClient, engine: Engine, tmp_path: Path
) -> None:
    stored = store(orthanc, engine, tmp_path / "s", patient_id="PIR-PRIOR-5", instances=1)
    [old_study] = client.studies_with_uid(stored.uid)
    [instance] = client.study_instance_ids(old_study)
    client.mark_study(old_study, REASSIGNMENT_METADATA, "PIR-SURV-5")
    other = client.modified_instance(instance, {"PatientID": "PIR-OTHER-5"}, [])
    with pytest.raises(Exception, match="another patient id"):
        client.store_instance(other)
    # Over DICOM, even the marked id is refused: the marker is the sidecar's, not a modality's.
    marked = tmp_path / "marked.dcm"
    marked.write_bytes(client.modified_instance(instance, {"PatientID": "PIR-SURV-5"}, []))
    sent = storescu_dcmtk([marked], "127.0.0.1", orthanc.layout.dicom_port, "ORTHANC", check=False)
    assert not sent.all_success
    assert list(client.studies_with_uid(stored.uid).values()) == ["PIR-PRIOR-5"]


class NotKeeping:
    """An Orthanc that answers every call but keeps the old values (a value it cannot write)."""

    def __init__(self, patient_id: str) -> None:
        self.tags = {"0010,0020": patient_id, "0010,0010": "OLD^NAME", "0010,0040": "F"}

    def studies_with_uid(self, uid: str) -> dict[str, str]:
        return {"study-1": self.tags["0010,0020"]}

    def study_instances_tags(self, orthanc_id: str) -> dict[str, dict[str, Any]]:
        return {"instance-1": dict(self.tags)}

    def modified_instance(self, *_: Any) -> bytes:
        return b"DICM"

    def store_instance(self, content: bytes) -> tuple[str, str]:
        return "instance-1", "study-1"

    def delete_instance(self, instance_id: str) -> None:
        pass

    def mark_study(self, *_: Any) -> None:
        pass

    def study(self, orthanc_id: str) -> dict[str, Any]:
        names = {"PatientID": "0010,0020", "PatientName": "0010,0010", "PatientSex": "0010,0040"}
        return {"PatientMainDicomTags": {name: self.tags[tag] for name, tag in names.items()}}

    def reconstruct_study(self, orthanc_id: str) -> None:
        pass


def test_values_orthanc_does_not_keep_fail_the_update_instead_of_looping(
    engine: Engine,
) -> None:
    prior = registered_patient(engine, "PIR-NK-6", "OLD^NAME")
    with Session(engine) as session:
        study = Study(study_instance_uid="1.2.826.0.1.3680043.10.543.6", orthanc_id="study-1")
        patient = session.get(Patient, prior)
        assert patient is not None
        patients.file_study(session, study, patient)
        session.commit()
        study_id = study.id
        assert study_id is not None
        patients.update_demographics(session, patient, {"patient_name": "NEW^NAME"}, actor=ACTOR)
        session.commit()

    ImageUpdater(engine, NotKeeping("PIR-NK-6")).run_once()  # type: ignore[arg-type]

    failed = job(engine, study_id)
    assert failed.status == ImageUpdateStatus.FAILED
    assert failed.last_error == "Orthanc kept other values for PatientName"
    with Session(engine) as session:
        assert image_updates.backlog(session).failed == 1
        # Registering its images again does not queue it again: a person must look.
        found = session.exec(select(Study).where(Study.id == study_id)).one()
        found.patient_identity_issue = patients.MERGED_IDENTIFIER
        queue_if_filed_elsewhere(session, found)
        session.commit()
    assert job(engine, study_id).status == ImageUpdateStatus.FAILED

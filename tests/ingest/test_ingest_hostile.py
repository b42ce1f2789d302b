"""DICOM that lies about its patient, against the real Orthanc with the plugin and the sidecar:
one Study Instance UID (or one SOP instance) sent again under another patient id is refused at
C-STORE; a study that holds several patients anyway is kept from the viewer; and Orthanc's own
log never names the patient of an instance it refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlmodel import Session

from sidecar.studies.models import Study

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import STACK_ADMIN_PASSWORD, Stack, wait_for
from testapp import engine_of

pytestmark = pytest.mark.orthanc

REFUSED = 0xA700


def test_a_study_uid_sent_under_another_patient_id_is_refused_at_c_store(
    stack: Stack, tmp_path: Path
) -> None:
    first = make_study(tmp_path / "a", series_count=1, instances_per_series=2, patient_id="PAT-A")
    assert storescu_dcmtk(first.files, *stack.dicom_address).all_success
    registered = stack.wait_for_study(first.study_instance_uid, instances=2)

    # Another patient's images under the same Study Instance UID (a new series).
    other = make_study(
        tmp_path / "b",
        series_count=1,
        instances_per_series=1,
        patient_id="PAT-B",
        study_instance_uid=first.study_instance_uid,
    )
    refused = storescu_dcmtk(other.files, *stack.dicom_address, check=False)
    assert refused.statuses == [REFUSED]
    # One SOP instance of the first study re-sent under another patient id.
    relabelled = tmp_path / "relabelled.dcm"
    dataset = dcmread(first.files[0])
    dataset.PatientID = "PAT-C"
    dataset.save_as(relabelled)
    assert storescu_dcmtk([relabelled], *stack.dicom_address, check=False).statuses == [REFUSED]
    # The same instance sent again under its own patient id is still accepted.
    assert storescu_dcmtk(first.files[:1], *stack.dicom_address).all_success

    studies = stack.orthanc_get("/studies?expand")
    assert [s["PatientMainDicomTags"]["PatientID"] for s in studies] == ["PAT-A"]
    stack.wait_until_synced()
    shown = stack.api("GET", f"/api/studies/{registered['id']}").json()
    assert (shown["patientId"], shown["instanceCount"], shown["patientConflict"]) == (
        "PAT-A",
        2,
        None,
    )
    assert stack.api("GET", "/api/studies").json()["total"] == 1


def test_a_study_held_under_several_patients_is_kept_from_the_viewer(
    stack: Stack, tmp_path: Path
) -> None:
    """One that got in anyway (stored before the ingress check, or by a race between two
    associations) is flagged by the sidecar (tests/ingest/test_orthanc_sync.py): neither front
    serves it as one study."""
    generated = make_study(tmp_path / "dicom", series_count=1, instances_per_series=1)
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(generated.study_instance_uid, instances=1)
    # The flag is set as the sync sets it, once the sync is done with the study: registering it
    # again from Orthanc's change log (one patient there) would clear it.
    stack.wait_until_synced()
    assert stack.sidecar is not None
    with Session(engine_of(stack.sidecar.app)) as session:
        row = session.get(Study, study["id"])
        assert row is not None
        row.conflicting_patient_ids = "PAT-OTHER"
        session.add(row)
        session.commit()
    token = httpx.post(
        f"{stack.sidecar.url}/api/auth/login",
        json={"username": "admin", "password": STACK_ADMIN_PASSWORD},
    ).json()["accessToken"]
    headers = {"Authorization": f"Bearer {token}"}
    series = f"/dicom-web/studies/{generated.study_instance_uid}/series"

    through_sidecar = httpx.get(f"{stack.sidecar.url}{series}", headers=headers)
    assert through_sidecar.status_code == 403
    assert through_sidecar.json()["error"]["code"] == "quarantined"
    # What nginx's session check asks (docker-compose and `make run`'s front).
    through_nginx = httpx.get(
        f"{stack.sidecar.url}/api/viewer/authorize", headers={**headers, "X-Viewer-Path": series}
    )
    assert through_nginx.status_code == 403
    assert stack.api("GET", f"/api/studies/{study['id']}").json()["patientConflict"] == {
        "otherPatientIds": ["PAT-OTHER"],
        "description": (
            "Orthanc holds images under this Study Instance UID for other patient ids too: the "
            "viewer does not show the study until the images filed under the wrong patient are "
            "removed or corrected"
        ),
    }
    assert httpx.get(f"{stack.sidecar.url}/health").json()["studies"] == {
        "patientConflicts": 1,
        "imagesDeleted": 0,
    }


def test_orthancs_log_never_names_the_patient_of_a_refused_instance(
    stack: Stack, tmp_path: Path
) -> None:
    generated = make_study(
        tmp_path / "dicom", series_count=1, instances_per_series=1, patient_id="LEAK-CANARY-77"
    )
    broken = dcmread(generated.files[0])
    del broken.StudyInstanceUID
    broken.save_as(generated.files[0], enforce_file_format=True)
    result = storescu_dcmtk(generated.files, *stack.dicom_address, check=False)
    assert not result.all_success

    def refusal_logged() -> str | None:
        text = stack.orthanc.log_path.read_text(errors="replace")
        return text if "required tags" in text else None

    logged = wait_for(refusal_logged, timeout=10, what="Orthanc's refusal in its log")
    assert "PatientID=(withheld)" in logged
    assert "LEAK-CANARY-77" not in logged


def test_a_study_deleted_from_orthanc_may_come_again_under_another_patient_id(
    stack: Stack, tmp_path: Path
) -> None:
    """The ingress filter remembers the patient each UID was accepted under, to spare a study's
    later instances the lookup; a different patient id is checked against Orthanc itself."""
    first = make_study(tmp_path / "a", series_count=1, instances_per_series=1, patient_id="PAT-A")
    assert storescu_dcmtk(first.files, *stack.dicom_address).all_success
    [orthanc_id] = stack.orthanc_get("/studies")
    httpx.delete(f"{stack.orthanc.url}/studies/{orthanc_id}", timeout=10).raise_for_status()

    corrected = make_study(
        tmp_path / "b",
        series_count=1,
        instances_per_series=1,
        patient_id="PAT-B",
        study_instance_uid=first.study_instance_uid,
    )
    assert storescu_dcmtk(corrected.files, *stack.dicom_address).all_success
    studies = stack.orthanc_get("/studies?expand")
    assert [s["PatientMainDicomTags"]["PatientID"] for s in studies] == ["PAT-B"]

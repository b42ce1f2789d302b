"""Patient reconciliation against the real parts: ADT over MLLP, the DICOM Modality Worklist as
dcmtk's findscu -W reads it from Orthanc, a late C-STORE under a merged-away identifier, and
Orthanc's stored files following the registry (read back with pydicom, and through the viewer's
DICOMweb on the sidecar's front), also when Orthanc was down during the merge."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from findscu import find_dcmtk, findscu_keys
from hl7_samples import ADT_A01_251, ADT_A08_251, ADT_A40_251, ORM_FOR_MRN_7001, with_field
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

ACCESSION = "ACC-7666"
ORM_FOR_MRN_7666 = with_field(
    with_field(
        with_field(ORM_FOR_MRN_7001, "PID", 3, "MRN-7666^^^GENHOSP^MR"), "PID", 5, "DOE^JOHN"
    ),
    "OBR",
    18,
    ACCESSION,
)


def offered(stack: Stack, out: Path, expected: int, **top: str) -> list[pydicom.Dataset]:
    """Polls the worklist (written just after the ACK) until the query finds `expected` items."""
    seen: list[list[pydicom.Dataset]] = []

    def settled() -> bool:
        folder = out.with_name(f"{out.name}-{len(seen)}")
        seen.append(find_dcmtk(stack.layout.dicom_port, findscu_keys(top, {}), folder))
        return len(seen[-1]) == expected

    wait_for(settled, timeout=15, what=f"{expected} worklist item(s) for {sorted(top)}")
    return seen[-1]


def stored_files(stack: Stack, study_instance_uid: str) -> list[pydicom.Dataset]:
    """Every file Orthanc stores under the Study Instance UID (any patient id)."""
    url = stack.orthanc.url
    found = httpx.post(f"{url}/tools/lookup", content=study_instance_uid.encode()).json()
    files: list[pydicom.Dataset] = []
    for study in (r for r in found if r["Type"] == "Study"):
        listed = httpx.get(f"{url}/studies/{study['ID']}/instances")
        if listed.status_code == 404:
            continue  # emptied (and so deleted) since the lookup: its images moved on
        listed.raise_for_status()
        for instance in listed.json():
            answer = httpx.get(f"{url}/instances/{instance['ID']}/file")
            if answer.status_code == 404:
                continue  # deleted since it was listed: its copy is stored under the new id
            answer.raise_for_status()
            files.append(pydicom.dcmread(io.BytesIO(answer.content)))
    return files


def refiled(
    stack: Stack, study_instance_uid: str, patient_id: str, expected: int
) -> list[pydicom.Dataset]:
    """Waits until the study's `expected` stored files all carry `patient_id`."""

    def done() -> list[pydicom.Dataset] | None:
        files = stored_files(stack, study_instance_uid)
        done = files and {str(d.PatientID) for d in files} == {patient_id}
        return files if done and len(files) == expected else None

    return wait_for(done, timeout=30, what=f"the stored files re-filed under {patient_id}")


def qido(stack: Stack, study_instance_uid: str) -> dict[str, Any]:
    """The study as the viewer's QIDO-RS finds it through the sidecar's front."""
    answer = stack.api("GET", "/dicom-web/studies", params={"StudyInstanceUID": study_instance_uid})
    assert answer.status_code == 200, answer.text
    [study] = answer.json()
    return {
        "PatientID": study["00100020"]["Value"][0],
        "PatientName": study["00100010"]["Value"][0]["Alphabetic"],
    }


def test_the_worklist_follows_a_merge_and_an_update(stack: Stack, tmp_path: Path) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(ADT_A01_251)).code == "AA"
        assert parse_ack(his.send(ORM_FOR_MRN_7666)).code == "AA"
        offered(stack, tmp_path / "before", 1, PatientID="MRN-7666")
        assert parse_ack(his.send(ADT_A40_251)).code == "AA"
        # By the old id, nothing; by the surviving id and its name, the item.
        offered(stack, tmp_path / "old-id", 0, PatientID="MRN-7666")
        [item] = offered(stack, tmp_path / "new-id", 1, PatientID="MRN-7001")
        assert (str(item.AccessionNumber), str(item.PatientName)) == (ACCESSION, "KOWALSKI^ANNA")
        assert str(item.IssuerOfPatientID) == "GENHOSP"
        assert parse_ack(his.send(ADT_A08_251)).code == "AA"
    offered(stack, tmp_path / "new-name", 1, PatientName="KOWALSKA^ANNA^MARIA")
    offered(stack, tmp_path / "old-name", 0, PatientName="KOWALSKI^ANNA")

    # A late study under the merged-away id: filed under the survivor, matched to its order.
    images = make_study(
        tmp_path / "dicom",
        accession_number=ACCESSION,
        patient_id="MRN-7666",
        issuer_of_patient_id="GENHOSP",
        patient_name="DOE^JOHN",
        series_count=1,
        instances_per_series=1,
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(images.study_instance_uid, instances=1)
    filed = wait_for(
        lambda: (s := stack.api("GET", f"/api/studies/{study['id']}").json())["orderId"] and s,
        timeout=15,
        what="the study linked to the survivor's order",
    )
    assert filed["patientId"] == "MRN-7001"
    assert filed["patientName"] == "KOWALSKA^ANNA^MARIA"
    # Flagged (patientIdentityIssue) until its images carry the survivor: checked clear below,
    # as the image update may already be done by now.
    assert filed["orderMatchIssue"] is None
    survivor = stack.api("GET", "/api/patients", params={"patientId": "MRN-7001"}).json()
    assert filed["patientRecordId"] == survivor["items"][0]["id"]

    # Orthanc's copy follows the registry: the survivor's id and name, every UID kept.
    files = refiled(stack, images.study_instance_uid, "MRN-7001", 1)
    assert {(str(d.PatientName), str(d.IssuerOfPatientID)) for d in files} == {
        ("KOWALSKA^ANNA^MARIA", "GENHOSP")
    }
    assert {str(d.SOPInstanceUID) for d in files} == set(images.sop_instance_uids)
    assert wait_for(
        lambda: (
            stack.api("GET", f"/api/studies/{study['id']}").json()["patientIdentityIssue"] is None
        ),
        timeout=15,
        what="the study no longer flagged once its images carry its patient",
    )
    assert wait_for(
        lambda: qido(stack, images.study_instance_uid)["PatientID"] == "MRN-7001",
        timeout=15,
        what="QIDO-RS answering the surviving patient",
    )
    assert qido(stack, images.study_instance_uid)["PatientName"] == "KOWALSKA^ANNA^MARIA"


def test_a_merge_while_orthanc_is_down_reaches_the_images_once_it_is_back(
    stack: Stack, tmp_path: Path
) -> None:
    images = make_study(
        tmp_path / "dicom",
        patient_id="MRN-7666",
        issuer_of_patient_id="GENHOSP",
        patient_name="DOE^JOHN",
        series_count=2,
        instances_per_series=2,
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    stack.wait_for_study(images.study_instance_uid, instances=4)
    stack.wait_until_synced()

    stack.orthanc.stop()
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(ADT_A01_251)).code == "AA"
        assert parse_ack(his.send(ADT_A40_251)).code == "AA"  # not held up by Orthanc

    def waiting() -> dict[str, Any] | None:
        assert stack.sidecar is not None
        updates = httpx.get(f"{stack.sidecar.url}/health", timeout=10).json()["imageUpdates"]
        return updates if updates["pending"] == 1 and updates["lastError"] else None

    assert wait_for(waiting, timeout=20, what="the image update waiting for Orthanc")
    # The sidecar restarted meanwhile: the queue is a table, nothing is lost.
    stack.stop_sidecar()
    stack.start_sidecar()
    stack.start_orthanc()

    files = refiled(stack, images.study_instance_uid, "MRN-7001", 4)
    assert {str(d.PatientName) for d in files} == {"KOWALSKI^ANNA"}
    assert {str(d.SOPInstanceUID) for d in files} == set(images.sop_instance_uids)
    assert wait_for(
        lambda: qido(stack, images.study_instance_uid)["PatientName"] == "KOWALSKI^ANNA",
        timeout=15,
        what="QIDO-RS answering the surviving patient",
    )

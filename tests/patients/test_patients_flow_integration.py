"""Patient reconciliation against the real parts: ADT over MLLP, the DICOM Modality Worklist as
dcmtk's findscu -W reads it from Orthanc, and a late C-STORE under a merged-away identifier."""

from __future__ import annotations

from pathlib import Path

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
        patient_name="DOE^JOHN",
        series_count=1,
        instances_per_series=1,
    )
    for path in images.files:
        dataset = pydicom.dcmread(path)
        dataset.IssuerOfPatientID = "GENHOSP"
        dataset.save_as(path)
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(images.study_instance_uid, instances=1)
    filed = wait_for(
        lambda: (s := stack.api("GET", f"/api/studies/{study['id']}").json())["orderId"] and s,
        timeout=15,
        what="the study linked to the survivor's order",
    )
    assert filed["patientId"] == "MRN-7001"
    assert filed["patientName"] == "KOWALSKA^ANNA^MARIA"
    assert filed["patientIdentityIssue"]
    assert filed["orderMatchIssue"] is None
    survivor = stack.api("GET", "/api/patients", params={"patientId": "MRN-7001"}).json()
    assert filed["patientRecordId"] == survivor["items"][0]["id"]

"""IHE Scheduled Workflow end to end, against the real parts: an ORM^O01 over MLLP, the order on
the DICOM Modality Worklist (dcmtk findscu -W against Orthanc), the modality's C-STORE with the
worklist's accession number and Study Instance UID, and the study linked to its order."""

from __future__ import annotations

from pathlib import Path

import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from findscu import find_dcmtk, findscu_keys
from hl7_samples import ORM_CA_251, ORM_NW_251, with_field
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

ACCESSION = "ACC-24-0001"  # OBR-18 of ORM_NW_251
STUDY_UID = "1.2.826.0.1.3680043.9.7.1.20240301.1001"  # ZDS-1 of ORM_NW_251
PATIENT_ID = "4711-0815"  # PID-3 of ORM_NW_251


def worklist(stack: Stack, out: Path, **top: str) -> list[dict[str, str]]:
    if out.exists():  # polled: one findscu output folder per attempt
        out = out.with_name(f"{out.name}-{len(list(out.parent.glob(out.name + '*')))}")
    answers = find_dcmtk(stack.layout.dicom_port, findscu_keys(top, {}), out)
    return [
        {
            "accession": str(a.AccessionNumber),
            "patient": str(a.PatientID),
            "study": str(a.StudyInstanceUID),
            "modality": str(a.ScheduledProcedureStepSequence[0].Modality),
        }
        for a in answers
    ]


def worklist_becomes(
    stack: Stack, out: Path, expected_count: int, **top: str
) -> list[dict[str, str]]:
    """The worklist is written just after the ACK (off the HL7 path): poll until it shows
    `expected_count` items for the query, and return them."""
    seen: list[list[dict[str, str]]] = []

    def settled() -> bool:
        seen.append(worklist(stack, out, **top))
        return len(seen[-1]) == expected_count

    wait_for(settled, timeout=15, what=f"{expected_count} worklist item(s)")
    return seen[-1]


def test_order_reaches_the_modality_and_its_images_link_back(stack: Stack, tmp_path: Path) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(ORM_NW_251)).code == "AA"

    offered = worklist_becomes(stack, tmp_path / "mwl1", 1, AccessionNumber=ACCESSION)
    assert offered == [
        {"accession": ACCESSION, "patient": PATIENT_ID, "study": STUDY_UID, "modality": "CT"}
    ]

    # The modality copies what the worklist gave it into the images it sends.
    images = make_study(
        tmp_path / "dicom",
        accession_number=ACCESSION,
        patient_id=PATIENT_ID,
        study_instance_uid=STUDY_UID,
        series_count=1,
        instances_per_series=2,
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(STUDY_UID, instances=2)

    order = wait_for(
        lambda: next(
            (
                o
                for o in stack.api("GET", "/api/imaging-orders").json()["items"]
                if o["status"] == "IN_PROGRESS"
            ),
            None,
        ),
        timeout=15,
        what="order moved on",
    )
    linked = stack.api("GET", f"/api/studies/{study['id']}").json()
    assert linked["orderId"] == order["id"]
    assert linked["priority"] == "STAT"
    assert linked["clinicalIndication"] == order["clinicalIndication"]
    # Under way: no longer offered to modalities.
    assert worklist_becomes(stack, tmp_path / "mwl2", 0, AccessionNumber=ACCESSION) == []


def test_cancelled_order_leaves_the_worklist(stack: Stack, tmp_path: Path) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(ORM_NW_251)).code == "AA"
        assert len(worklist_becomes(stack, tmp_path / "before", 1, PatientID=PATIENT_ID)) == 1
        assert parse_ack(his.send(ORM_CA_251)).code == "AA"
    assert worklist_becomes(stack, tmp_path / "after", 0, PatientID=PATIENT_ID) == []


def test_worklist_keeps_answering_while_the_sidecar_is_down(stack: Stack, tmp_path: Path) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        second = with_field(with_field(ORM_NW_251, "MSH", 10, "MSG-2"), "OBR", 18, "ACC-2")
        second = with_field(with_field(second, "ORC", 2, "PLC-2"), "ZDS", 1, "1.2.3.4.2")
        assert parse_ack(his.send(ORM_NW_251)).code == "AA"
        assert parse_ack(his.send(second)).code == "AA"
    worklist_becomes(stack, tmp_path / "up", 2, PatientID=PATIENT_ID)
    stack.stop_sidecar()
    offered = worklist(stack, tmp_path / "down", PatientID=PATIENT_ID)
    assert sorted(o["accession"] for o in offered) == ["ACC-2", ACCESSION]


def test_images_of_another_patient_are_flagged_not_linked(stack: Stack, tmp_path: Path) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(ORM_NW_251)).code == "AA"
    images = make_study(
        tmp_path / "dicom",
        accession_number=ACCESSION,
        patient_id="OTHER-99",
        series_count=1,
        instances_per_series=1,
    )
    storescu_dcmtk(images.files, *stack.dicom_address)
    study = stack.wait_for_study(images.study_instance_uid, instances=1)
    flagged = wait_for(
        lambda: (
            (s := stack.api("GET", f"/api/studies/{study['id']}").json())["orderMatchIssue"] and s
        ),
        timeout=10,
        what="mismatch flagged",
    )
    assert flagged["orderId"] is None
    unmatched = stack.api("GET", "/api/studies", params={"matched": "false"}).json()["items"]
    assert [s["id"] for s in unmatched] == [study["id"]]
    assert stack.api("GET", "/api/imaging-orders").json()["items"][0]["status"] == "SCHEDULED"

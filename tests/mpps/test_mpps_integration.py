"""IHE Scheduled Workflow with MPPS, against the real parts: the HIS orders over MLLP, the modality
(pynetdicom) reports the step it performs (N-CREATE IN PROGRESS, N-SET COMPLETED or
DISCONTINUED) and sends its images to Orthanc (dcmtk C-STORE), a radiologist signs, and the HIS
hears, in order: IP, the result (ORU^R01 OBR-25 F), CM. dcmtk findscu -W sees the order leave the
worklist when the exam starts and come back when it is discontinued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from findscu import find_dcmtk, findscu_keys
from his_simulator import HisSimulator, Received
from hl7_samples import ORM_NW_251
from modality import completed, discontinued, in_progress, modality
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

ACCESSION = "ACC-24-0001"  # OBR-18 of ORM_NW_251
REQUESTED_PROCEDURE = "RP-7788"  # OBR-19
STUDY_UID = "1.2.826.0.1.3680043.9.7.1.20240301.1001"  # ZDS-1
PATIENT_ID = "4711-0815"  # PID-3


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def stack(tmp_path: Path, database_url: str, his: HisSimulator) -> Iterator[Stack]:
    running = Stack(tmp_path, database_url)
    running.settings = running.settings.model_copy(
        update={"his_mllp_host": "127.0.0.1", "his_mllp_port": his.port}
    )
    running.start_orthanc()
    running.start_sidecar()
    with MllpClient("127.0.0.1", running.mllp_port) as his_orders:
        assert parse_ack(his_orders.send(ORM_NW_251)).code == "AA"
    yield running
    running.close()


def on_worklist(stack: Stack, scratch: Path) -> list[str]:
    """The accession numbers dcmtk findscu -W finds for ACCESSION (each query in a fresh folder)."""
    keys = findscu_keys({"AccessionNumber": ACCESSION}, {})
    out = scratch / f"findscu-{uuid.uuid4().hex}"
    return [item.AccessionNumber for item in find_dcmtk(stack.layout.dicom_port, keys, out)]


def kind(received: Received) -> str:
    """IP/CM/DC for a status update (ORM^O01, ORC-1 SC), ORU-F/P/C for a result."""
    segments = {s[:3]: s.split("|") for s in received.raw.split("\r") if s}
    if segments["MSH"][8] == "ORM^O01^ORM_O01":
        assert segments["ORC"][1] == "SC"
        return segments["ORC"][5]
    assert segments["MSH"][8] == "ORU^R01^ORU_R01"
    return f"ORU-{segments['OBR'][25]}"


def test_the_modality_reports_the_exam_and_the_his_hears_it_before_the_result(
    stack: Stack, his: HisSimulator, tmp_path: Path
) -> None:
    wait_for(
        lambda: on_worklist(stack, tmp_path) == [ACCESSION],
        timeout=15,
        what="the order on the worklist",
    )
    images = make_study(
        tmp_path / "dicom",
        accession_number=ACCESSION,
        patient_id=PATIENT_ID,
        study_instance_uid=STUDY_UID,
        series_count=1,
        instances_per_series=2,
        modality="CT",
    )
    (series,) = images.series
    sop_uids = [instance.sop_instance_uid for instance in series.instances]

    with modality(stack.mpps_port, calling="CT01") as scanner:
        started, step_uid = scanner.create(
            in_progress(
                study_instance_uid=STUDY_UID,
                accession_number=ACCESSION,
                requested_procedure_id=REQUESTED_PROCEDURE,
                patient_id=PATIENT_ID,
                station="CT01",
                modality="CT",
            )
        )
        assert started.status == 0x0000
        (ip,) = his.wait_for(1)
        assert kind(ip) == "IP"
        wait_for(
            lambda: on_worklist(stack, tmp_path) == [],
            timeout=15,
            what="the order off the worklist",
        )
        # The modality says it made three images; only two reach the archive.
        announced = completed(series=[(series.series_instance_uid, [*sop_uids, "1.2.3.4.5.6"])])
        assert scanner.set(step_uid, announced).status == 0x0000
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(STUDY_UID, instances=2)
    assert study["instancesAnnounced"] == 3
    assert study["imagesMissing"] == 1
    steps = stack.api(
        "GET", "/api/performed-procedure-steps", params={"accessionNumber": ACCESSION}
    ).json()["items"]
    assert [(s["status"], s["seriesCount"], s["instanceCount"], s["studyId"]) for s in steps] == [
        ("COMPLETED", 1, 3, study["id"])
    ]
    # The study and its order show the step too.
    detail = stack.api("GET", f"/api/studies/{study['id']}").json()
    assert [(s["sopInstanceUID"], s["status"]) for s in detail["performedProcedureSteps"]] == [
        (step_uid, "COMPLETED")
    ]
    order_id = steps[0]["orderId"]
    order = stack.api("GET", f"/api/imaging-orders/{order_id}").json()
    assert [s["performedStationAeTitle"] for s in order["performedProcedureSteps"]] == ["CT01"]

    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr-reader", "password": "radiologist-password", "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    reader = {"Authorization": f"Bearer {stack.login('dr-reader', 'radiologist-password')}"}
    wait_for(
        lambda: stack.api("GET", f"/api/studies/{study['id']}").json()["orderId"],
        timeout=15,
        what="study linked to its order",
    )
    report = stack.api(
        "POST",
        "/api/reports",
        json={"studyId": study["id"], "findings": "No acute abnormality.", "impression": "Normal."},
        headers=reader,
    )
    assert report.status_code == 201, report.text
    signed = stack.api("POST", f"/api/reports/{report.json()['id']}/sign", headers=reader)
    assert signed.status_code == 200, signed.text

    filed = his.wait_for(3)
    assert [kind(m) for m in filed] == ["IP", "ORU-F", "CM"]
    assert [m.at for m in filed] == sorted(m.at for m in filed)
    assert len(his.received) == 3, "each message sent once"


def test_a_discontinued_exam_goes_back_on_the_worklist(
    stack: Stack, his: HisSimulator, tmp_path: Path
) -> None:
    wait_for(
        lambda: on_worklist(stack, tmp_path) == [ACCESSION],
        timeout=15,
        what="the order on the worklist",
    )
    with modality(stack.mpps_port, calling="CT01") as scanner:
        answer, step_uid = scanner.create(
            in_progress(
                study_instance_uid=STUDY_UID,
                accession_number=ACCESSION,
                patient_id=PATIENT_ID,
                station="CT01",
                modality="CT",
            )
        )
        assert answer.status == 0x0000
        wait_for(
            lambda: on_worklist(stack, tmp_path) == [],
            timeout=15,
            what="the order off the worklist",
        )
        assert scanner.set(step_uid, discontinued()).status == 0x0000
        assert scanner.set(step_uid, discontinued()).status == 0x0110  # final: not again

    wait_for(
        lambda: on_worklist(stack, tmp_path) == [ACCESSION],
        timeout=15,
        what="the order back on the worklist",
    )
    assert [kind(m) for m in his.wait_for(2)] == ["IP", "DC"]
    order = stack.api("GET", "/api/imaging-orders", params={"accessionNumber": ACCESSION}).json()
    assert order["items"][0]["status"] == "SCHEDULED"

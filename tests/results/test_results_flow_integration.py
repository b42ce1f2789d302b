"""The whole of IHE Scheduled Workflow, over real sockets: the HIS orders (ORM^O01 over MLLP),
the modality sends the images (dcmtk C-STORE into Orthanc), a radiologist reports and signs, and
the result (ORU^R01) reaches the HIS over MLLP, which completes the order; the HIS hears the
order's status on the way (ORM^O01 IP, then CM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from his_simulator import HisSimulator, Received
from hl7_samples import ORM_NW_251
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

ACCESSION = "ACC-24-0001"  # OBR-18 of ORM_NW_251
STUDY_UID = "1.2.826.0.1.3680043.9.7.1.20240301.1001"  # ZDS-1 of ORM_NW_251
PATIENT_ID = "4711-0815"  # PID-3 of ORM_NW_251


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
    yield running
    running.close()


def test_order_images_report_sign_and_the_result_reaches_the_his(
    stack: Stack, his: HisSimulator, tmp_path: Path
) -> None:
    with MllpClient("127.0.0.1", stack.mllp_port) as his_orders:
        assert parse_ack(his_orders.send(ORM_NW_251)).code == "AA"
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
    wait_for(
        lambda: stack.api("GET", f"/api/studies/{study['id']}").json()["orderId"],
        timeout=15,
        what="study linked to its order",
    )
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr-reader", "password": "radiologist-password", "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    assert stack.sidecar is not None
    token = httpx_login(stack, "dr-reader", "radiologist-password")

    report = stack.api(
        "POST",
        "/api/reports",
        json={"studyId": study["id"], "findings": "No acute abnormality.", "impression": "Normal."},
        headers=token,
    )
    assert report.status_code == 201, report.text
    signed = stack.api("POST", f"/api/reports/{report.json()['id']}/sign", headers=token)
    assert signed.status_code == 200, signed.text

    # The HIS hears the exam start (the first images: no MPPS here), the result, and the order
    # completed, in that order.
    started, result, completed_status = his.wait_for(3)
    assert [order_status(started), order_status(completed_status)] == ["IP", "CM"]
    message = parse_message(result.raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    observation = message.oru_r01_patient_result.oru_r01_order_observation
    assert observation.obr.obr_18.value == ACCESSION
    assert observation.obr.obr_25.value == "F"
    assert message.oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.value == PATIENT_ID
    assert STUDY_UID in result.raw
    order_id = signed.json()["orderId"]
    completed = wait_for(
        lambda: (
            (o := stack.api("GET", f"/api/imaging-orders/{order_id}").json())["status"]
            == "COMPLETED"
            and o
        ),
        timeout=15,
        what="order completed",
    )
    assert completed["accessionNumber"] == ACCESSION
    final_study = stack.api("GET", f"/api/studies/{study['id']}").json()
    assert final_study["status"] == "FINAL"


def httpx_login(stack: Stack, username: str, password: str) -> dict[str, str]:
    response = stack.api(
        "POST", "/api/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


def order_status(received: Received) -> str:
    """ORC-5 of an ORM^O01 status update (ORC-1 SC)."""
    (orc,) = [s.split("|") for s in received.raw.split("\r") if s.startswith("ORC|")]
    assert orc[1] == "SC" and "|ORM^O01^ORM_O01|" in received.raw
    return orc[5]

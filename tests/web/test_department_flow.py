"""A department's day through its pages, in headless Chromium behind the nginx front of a real
stack (Orthanc with the plugin, the sidecar, the HIS simulator on MLLP), on each database:

- the HIS orders a STAT CT over MLLP (ORM^O01), the API a routine one; the modality sends both
  studies by C-STORE (dcmtk storescu) into Orthanc; the radiologist's worklist shows the STAT
  study first;
- with the worklist open, a third study arrives (storescu) and its row appears without a reload
  (the live event stream);
- the sidecar stops; another node (here: a direct write) registers a study meanwhile; once the
  sidecar is back, the open page's event stream resumes from the last event it saw (the
  EventSource's Last-Event-ID, or app.js's ?lastEventId= after a refusal) and the page shows that
  study, still without a reload;
- the radiologist claims the STAT study, opens it, starts from a template, fills the sections and
  signs: the HIS receives the ORU^R01; the radiologist raises a critical finding;
- the ordering physician (the order names their provider id) sees the signed result on
  /app/results and acknowledges the finding with read-back;
- a technologist links the third study, which no order claims, to its order on /app/orders.

One stack and one browser session per role for the whole scenario. What each page shows is also
checked through the API afterwards (state, not the page's word)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, create_engine

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient
from sidecar.studies.models import Study, StudyStatus

from app_browser import AppFront, PageUser
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from his_simulator import HisSimulator
from hl7_samples import ORM_NW_251, with_field
from stack import Stack, wait_for
from testapp import PHYSICIAN_PROVIDER_ID

pytestmark = pytest.mark.orthanc

STAT_ACCESSION = "ACC-24-0001"  # OBR-18 of ORM_NW_251 (TQ1-9: S, STAT)
STAT_UID = "1.2.826.0.1.3680043.9.7.1.20240301.1001"  # its ZDS-1
STAT_PATIENT = "4711-0815"  # its PID-3 (issuer GENHOSP)
ROUTINE_ACCESSION = "RTN-0001"
ROUTINE_PATIENT = "FLOW-0002"
LATE_ACCESSION = "LATE-0001"  # the third study's: no order has it
LATE_PATIENT = "FLOW-0003"
DOWN_ACCESSION = "DOWN-0001"  # registered while the sidecar is down
SECTIONS = {
    "Comparison": "None available.",
    "Findings": "Spiculated 2 cm nodule in the right upper lobe.",
    "Impression": "Right upper lobe nodule, suspicious for malignancy.",
    "Recommendations": "CT-guided biopsy.",
}
TEMPLATE_TECHNIQUE = "Helical CT of the thorax and abdomen with contrast."
#: The STAT order, naming the physician page user as its ordering provider (ORC-12, OBR-16).
STAT_ORDER = with_field(
    with_field(ORM_NW_251, "ORC", 12, f"{PHYSICIAN_PROVIDER_ID}^House^Gregory^^^Dr^MD"),
    "OBR",
    16,
    f"{PHYSICIAN_PROVIDER_ID}^House^Gregory^^^Dr^MD",
)


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def stack(tmp_path: Path, database_url: str, his: HisSimulator) -> Iterator[Stack]:
    """The conftest's stack, its results going to the HIS simulator."""
    running = Stack(tmp_path, database_url)
    running.settings = running.settings.model_copy(
        update={"his_mllp_host": "127.0.0.1", "his_mllp_port": his.port}
    )
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


def _ok(answer: Any, status: int = 200) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _api_order(stack: Stack, patient_id: str, accession: str | None = None) -> dict[str, Any]:
    body = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "patientName": "ROE^RICHARD",
        "modality": "CT",
        "procedureDescription": "CT chest",
        "priority": "ROUTINE",
        "scheduledAt": datetime.now(UTC).isoformat(),
        **({"accessionNumber": accession} if accession else {}),
    }
    return _ok(stack.api("POST", "/api/imaging-orders", json=body), 201)


def _send(
    stack: Stack, directory: Path, accession: str, patient: str, uid: str | None = None
) -> str:
    """One small CT study by C-STORE; its Study Instance UID."""
    images = make_study(
        directory,
        series_count=1,
        instances_per_series=2,
        accession_number=accession,
        patient_id=patient,
        study_instance_uid=uid,
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    return images.study_instance_uid


def test_a_department_day_through_the_pages(
    nginx_app_front: AppFront,
    page_users: dict[str, PageUser],
    his: HisSimulator,
    tmp_path: Path,
) -> None:
    stack = nginx_app_front.stack
    with MllpClient("127.0.0.1", stack.mllp_port) as his_orders:
        assert parse_ack(his_orders.send(STAT_ORDER)).code == "AA"
    _api_order(stack, ROUTINE_PATIENT, ROUTINE_ACCESSION)
    late_order = _api_order(stack, LATE_PATIENT)  # the order the third study should have named
    template = _ok(
        stack.api(
            "POST",
            "/api/report-templates",
            json={
                "name": "CT thorax",
                "modality": "CT",
                "sections": {"technique": TEMPLATE_TECHNIQUE},
            },
        ),
        201,
    )
    # The routine study first: the worklist's order is its rule, not arrival.
    routine_uid = _send(stack, tmp_path / "routine", ROUTINE_ACCESSION, ROUTINE_PATIENT)
    _send(stack, tmp_path / "stat", STAT_ACCESSION, STAT_PATIENT, STAT_UID)
    stat = stack.wait_for_study(STAT_UID, instances=2)
    stack.wait_for_study(routine_uid, instances=2)
    wait_for(
        lambda: _ok(stack.api("GET", f"/api/studies/{stat['id']}"))["orderId"],
        timeout=15,
        what="the STAT study linked to its order",
    )
    late: dict[str, Any] = {}

    def a_study_arrives() -> None:
        uid = _send(stack, tmp_path / "late", LATE_ACCESSION, LATE_PATIENT)
        late.update(stack.wait_for_study(uid, instances=2))

    def the_sidecar_restarts() -> None:
        stack.stop_sidecar()
        engine = create_engine(stack.settings.database_url)
        with Session(engine) as session:  # the live event row comes from the table's trigger
            session.add(
                Study(
                    study_instance_uid="1.2.826.0.1.3680043.9.7.2.1",
                    accession_number=DOWN_ACCESSION,
                    patient_id="FLOW-0004",
                    modalities="CT",
                    status=StudyStatus.COMPLETED,
                    images_received_at=datetime.now(UTC),
                )
            )
            session.commit()
        engine.dispose()
        stack.start_sidecar()

    radiologist = nginx_app_front.run(
        [
            page_users["radiologist"].login_step(),
            {"goto": {"path": "/app/worklist", "status": 200}},
            {"read": "#worklist-rows tbody th[scope=row]"},
            {"pause": "a study arrives"},
            {"waitForText": LATE_ACCESSION, "within": "#worklist-rows"},
            {"pause": "the sidecar restarts"},
            {"waitForText": DOWN_ACCESSION, "within": "#worklist-rows"},
            {"click": {"role": "button", "name": f"Claim {STAT_ACCESSION}"}},
            {"waitForText": "(claimed)", "within": f"#study-{stat['id']}"},
            {"click": {"role": "link", "name": STAT_ACCESSION}},
            {"expectUrl": rf"/app/studies/{stat['id']}$"},
            {"select": {"label": "Report template", "value": str(template["id"])}},
            {"click": {"role": "button", "name": "Start from template"}},
            {"waitForText": "Template applied", "within": {"role": "alert"}},
            *({"fill": {"label": label, "value": text}} for label, text in SECTIONS.items()),
            {"click": {"role": "button", "name": "Sign"}},
            {"waitForText": "Report signed.", "within": {"role": "alert"}},
            {"expectText": SECTIONS["Impression"], "within": "#report"},
            {"select": {"label": "Severity", "value": "CRITICAL"}},
            {"fill": {"label": "Description", "value": "Suspected malignancy, right upper lobe"}},
            {"click": {"role": "button", "name": "Raise critical finding"}},
            {"waitForText": "Critical finding raised."},
        ],
        hooks={"a study arrives": a_study_arrives, "the sidecar restarts": the_sidecar_restarts},
    )

    [rows] = [step["texts"] for step in radiologist["steps"] if step["name"].startswith("read")]
    assert [row.split()[0] for row in rows] == [STAT_ACCESSION, ROUTINE_ACCESSION]
    report = _ok(stack.api("GET", f"/api/reports/study/{stat['id']}"))["items"][0]
    assert report["status"] == "FINAL" and report["technique"] == TEMPLATE_TECHNIQUE
    assert report["findings"] == SECTIONS["Findings"]
    [result] = wait_for(
        lambda: [m for m in his.received if "|ORU^R01" in m.raw], timeout=20, what="the ORU^R01"
    )
    assert STAT_ACCESSION in result.raw and SECTIONS["Impression"] in result.raw
    [finding] = _ok(stack.api("GET", f"/api/critical-findings/study/{stat['id']}"))["items"]

    nginx_app_front.run(
        [
            page_users["physician"].login_step(),
            {"goto": {"path": "/app/results", "status": 200}},
            {"expectText": STAT_ACCESSION},
            {"select": {"label": "How it was received", "value": "PHONE"}},
            {"fill": {"label": "Read-back: the finding in your words", "value": "RUL nodule"}},
            {"check": {"label": "I read the finding back and it was confirmed"}},
            {"click": {"role": "button", "name": f"Acknowledge finding {finding['id']}"}},
            {"waitForText": "The critical finding is acknowledged."},
            {"click": {"role": "link", "name": f"Read report {report['id']}"}},
            {"expectText": SECTIONS["Impression"]},
        ]
    )
    acknowledged = _ok(stack.api("GET", f"/api/critical-findings/{finding['id']}"))
    assert acknowledged["status"] == "ACKNOWLEDGED"
    assert (
        acknowledged["readBackConfirmed"] is True and acknowledged["readBackText"] == "RUL nodule"
    )

    assert _ok(stack.api("GET", f"/api/studies/{late['id']}"))["orderId"] is None
    nginx_app_front.run(
        [
            page_users["technologist"].login_step(),
            {"goto": {"path": "/app/orders", "status": 200}},
            {"expectText": f"Study {late['id']}: {LATE_ACCESSION}"},
            {
                "fill": {
                    "label": "Or the order's accession number",
                    "value": late_order["accessionNumber"],
                },
                "within": {"role": "form", "name": f"Study {late['id']}: {LATE_ACCESSION}"},
            },
            {"click": {"role": "button", "name": f"Link study {late['id']}"}},
            {"waitForText": f"Study {late['id']} is linked to its order."},
        ]
    )
    assert _ok(stack.api("GET", f"/api/studies/{late['id']}"))["orderId"] == late_order["id"]

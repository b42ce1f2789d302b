"""GET /metrics after real traffic: an order over MLLP, its images by C-STORE into Orthanc, a
report signed whose result reaches the HIS, a critical finding raised and acknowledged. The
counters move by exactly what happened, the backlogs read from the database come back to zero,
and no label holds anything of the patient's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from his_simulator import HisSimulator
from hl7_samples import ORM_NW_251, with_field
from metrics_scrape import Samples, label_values, moved, parse, value
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

ACCESSION = "ACC-24-0001"  # OBR-18 of ORM_NW_251
STUDY_UID = "1.2.826.0.1.3680043.9.7.1.20240301.1001"  # ZDS-1 of ORM_NW_251
PATIENT_ID = "4711-0815"  # PID-3 of ORM_NW_251
PLACER = "PLC-1001"  # ORC-2 of ORM_NW_251


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


def scrape(stack: Stack) -> Samples:
    assert stack.sidecar is not None
    response = httpx.get(f"{stack.sidecar.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_real_traffic_moves_each_counter_by_what_happened(
    stack: Stack, his: HisSimulator, tmp_path: Path
) -> None:
    before = scrape(stack)

    # HL7 in: an order (AA) and a message of a type the intake does not take (refused).
    with MllpClient("127.0.0.1", stack.mllp_port) as hospital:
        assert parse_ack(hospital.send(ORM_NW_251)).code == "AA"
        odd = with_field(with_field(ORM_NW_251, "MSH", 9, "ZZZ^Z01"), "MSH", 10, "MSG-ODD-1")
        refused = parse_ack(hospital.send(odd)).code
    assert refused in ("AE", "AR")

    # Images: 2 series of 2 instances, C-STORE into Orthanc, registered and linked to the order.
    images = make_study(
        tmp_path / "dicom",
        accession_number=ACCESSION,
        patient_id=PATIENT_ID,
        study_instance_uid=STUDY_UID,
        series_count=2,
        instances_per_series=2,
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(STUDY_UID, instances=4)
    wait_for(
        lambda: stack.api("GET", f"/api/studies/{study['id']}").json()["orderId"],
        timeout=15,
        what="study linked to its order",
    )
    stack.wait_until_synced()

    # A radiologist reports and signs, raises a critical finding, records its hand-over.
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr-metrics", "password": "radiologist-password", "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    reader = {"Authorization": f"Bearer {stack.login('dr-metrics', 'radiologist-password')}"}
    report = stack.api(
        "POST",
        "/api/reports",
        json={"studyId": study["id"], "findings": "Subdural haematoma.", "impression": "Acute."},
        headers=reader,
    )
    assert report.status_code == 201, report.text
    signed = stack.api("POST", f"/api/reports/{report.json()['id']}/sign", headers=reader)
    assert signed.status_code == 200, signed.text
    finding = stack.api(
        "POST",
        "/api/critical-findings",
        json={"studyId": study["id"], "severity": "CRITICAL", "description": "Midline shift"},
        headers=reader,
    )
    assert finding.status_code == 201, finding.text
    acknowledged = stack.api(
        "POST",
        f"/api/critical-findings/{finding.json()['id']}/acknowledge",
        json={"method": "PHONE", "acknowledgedByName": "Dr Welby", "readBackConfirmed": True},
        headers=reader,
    )
    assert acknowledged.status_code == 200, acknowledged.text
    # The HIS hears the exam started (IP), the result, the order completed (CM).
    his.wait_for(3)
    for _ in range(2):
        assert stack.api("GET", f"/api/studies/{study['id']}").status_code == 200
    assert stack.api("GET", f"/api/studies/accession/{ACCESSION}-none").status_code == 404
    assert stack.sidecar is not None
    httpx.get(f"{stack.sidecar.url}/nowhere/{PATIENT_ID}")  # the viewer's catch-all route
    nul = httpx.get(f"{stack.sidecar.url}/api/studies/{ACCESSION}%00")  # refused before routing
    assert nul.status_code == 400

    def settled() -> Samples | None:
        after = scrape(stack)
        delivered = moved(
            before,
            after,
            "sidecar_hl7_messages_sent_total",
            kind="status_update",
            outcome="delivered",
        )
        noticed = moved(before, after, "sidecar_studies_registration_lag_seconds_count")
        return after if delivered == 2 and noticed >= 1 else None

    after = wait_for(settled, timeout=20, what="the order's status updates delivered")

    # HL7 in, by type and ACK code, each ACK timed.
    received = "sidecar_hl7_messages_received_total"
    assert moved(before, after, received, message_type="ORM^O01", ack_code="AA") == 1
    assert moved(before, after, received, message_type="other", ack_code=refused) == 1
    assert moved(before, after, received, message_type="ZZZ^Z01", ack_code=refused) == 0
    assert (
        moved(before, after, "sidecar_hl7_ack_latency_seconds_count", message_type="ORM^O01") == 1
    )
    # HL7 out: one result and two status updates delivered, nothing refused or unanswered.
    sent = "sidecar_hl7_messages_sent_total"
    assert moved(before, after, sent, kind="result", outcome="delivered") == 1
    for kind in ("result", "status_update"):
        for outcome in ("refused", "no_answer"):
            assert moved(before, after, sent, kind=kind, outcome=outcome) == 0
    assert value(after, "sidecar_hl7_outbox_depth", scope="cluster", status="pending") == 0
    assert value(after, "sidecar_hl7_outbox_oldest_age_seconds", scope="cluster") == 0
    # Studies: one registered with its 4 instances, its registration timed once; none waiting.
    assert moved(before, after, "sidecar_studies_registered_total") == 1
    assert moved(before, after, "sidecar_studies_instances_registered_total") == 4
    assert moved(before, after, "sidecar_studies_registration_lag_seconds_count") == 1
    assert value(after, "sidecar_studies_pending", scope="cluster") == 0
    assert value(after, "sidecar_studies_changes_cursor_lag", scope="cluster") == 0
    # The report: signed final, its turnaround measured under the study's priority.
    priority = stack.api("GET", f"/api/studies/{study['id']}").json()["priority"] or "ROUTINE"
    assert moved(before, after, "sidecar_reports_signed_total", priority=priority) == 1
    assert moved(before, after, "sidecar_reports_turnaround_seconds_count", priority=priority) == 1
    assert value(after, "sidecar_reading_worklist_waiting", scope="cluster", priority=priority) == 0
    # The finding: raised, acknowledged, its time to acknowledge measured; none left waiting.
    for name in (
        "sidecar_critical_findings_raised_total",
        "sidecar_critical_findings_acknowledged_total",
        "sidecar_critical_findings_time_to_acknowledge_seconds_count",
    ):
        assert moved(before, after, name, severity="CRITICAL") == 1, name
    assert (
        value(
            after, "sidecar_critical_findings_unacknowledged", scope="cluster", severity="CRITICAL"
        )
        == 0
    )
    # HTTP: by route template, never the path.
    duration = "http_request_duration_seconds_count"
    route = "/api/studies/{study_id}"
    assert moved(before, after, duration, route=route, method="GET", status="200") >= 2
    assert moved(before, after, duration, route="<unmatched>", method="GET", status="400") == 1
    assert (
        sum(
            moved(before, after, duration, route="/{file_path:path}", method="GET", status=status)
            for status in ("200", "401", "404")
        )
        == 1
    )
    # The node and its database.
    assert value(after, "sidecar_node_info", node=stack.settings.node_name) == 1
    assert value(after, "sidecar_database_up") == 1
    assert value(after, "sidecar_orthanc_up") == 1

    # Nothing of the patient, the order or the study in any label.
    identifiers = [
        ACCESSION,
        PATIENT_ID,
        PLACER,
        STUDY_UID,
        "MSG-NW-0001",
        "Müller",
        "Jürgen",
        "dr-metrics",
    ]
    for name, label, text in label_values(after):
        for identifier in identifiers:
            assert identifier not in text, (name, label, text)
    routes = {text for _, label, text in label_values(after) if label == "route"}
    assert f"/api/studies/{study['id']}" not in routes
    assert all(route.startswith("/") or route == "<unmatched>" for route in routes)

"""The orders and results pages in headless Chromium on a real stack, with data on them: a
technologist links an unmatched study (htmx, no reload), a physician acknowledges a critical
finding with read-back, reads the report, prints it and downloads its PDF; axe-core on each
page with its tables and forms filled, the keyboard reaching every control. What is checked does
not depend on the database: the SQLite run has it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app_browser import PAGE_USER_PASSWORD, AppFront, PageUser
from stack import Stack
from testapp import PHYSICIAN_PROVIDER_ID

pytestmark = [pytest.mark.orthanc, pytest.mark.one_database]

TABLET = {"width": 768, "height": 1024}
SECTIONS = {
    "technique": "CT of the head without contrast.",
    "comparison": "None.",
    "findings": "Acute left subdural haematoma, 12 mm midline shift.",
    "impression": "Acute left subdural haematoma with mass effect.",
    "recommendations": "Urgent neurosurgical consultation.",
}


def _ok(answer: Any, status: int = 200) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _order(stack: Stack, patient_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "patientName": "DOE^JANE",
        "modality": "CT",
        "procedureDescription": "CT head without contrast",
        "scheduledAt": datetime.now(UTC).isoformat(),
        **extra,
    }
    return _ok(stack.api("POST", "/api/imaging-orders", json=body), 201)


def _study(stack: Stack, patient_id: str, accession_number: str) -> dict[str, Any]:
    body = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "accessionNumber": accession_number,
        "studyDescription": "CT head",
        "modalities": ["CT"],
    }
    return _ok(stack.api("POST", "/api/studies", json=body), 201)


def test_a_technologist_links_an_unmatched_study(
    sidecar_front: AppFront, page_users: dict[str, PageUser]
) -> None:
    stack = sidecar_front.stack
    order = _order(stack, "PAT-B1")
    study = _study(stack, "PAT-B1", "UNMATCHED1")

    report = sidecar_front.run(
        [
            page_users["technologist"].login_step(),
            {"goto": {"path": "/app/orders", "status": 200}},
            {"expectText": order["accessionNumber"], "within": "#today-heading + .table-wrap"},
            {"axe": {"name": "orders"}},
            {"keyboardAll": True},
            {"fill": {"label": "Or the order's accession number", "value": "NOSUCH1"}},
            {"click": {"role": "button", "name": f"Link study {study['id']}"}},
            {"waitForText": "no order has accession number NOSUCH1", "within": {"role": "alert"}},
            {"axe": {"name": "orders with an error"}},
            {
                "fill": {
                    "label": "Or the order's accession number",
                    "value": order["accessionNumber"],
                }
            },
            {"click": {"role": "button", "name": f"Link study {study['id']}"}},
            {"waitForText": f"Study {study['id']} is linked to its order."},
            {"expectText": "Every study is linked to an order."},
            {"viewport": TABLET},
            {"noHorizontalScroll": True},
            {"axe": {"name": "orders on a tablet"}},
        ]
    )

    assert report["axe"] == {"orders": [], "orders with an error": [], "orders on a tablet": []}
    linked = _ok(stack.api("GET", f"/api/studies/{study['id']}"))
    assert linked["orderId"] == order["id"]


def test_a_physician_acknowledges_a_finding_and_reads_the_report(
    sidecar_front: AppFront, page_users: dict[str, PageUser], tmp_path: Any
) -> None:
    stack = sidecar_front.stack
    order = _order(stack, "PAT-B2", providerId=PHYSICIAN_PROVIDER_ID)
    study = _study(stack, "PAT-B2", order["accessionNumber"])
    _ok(stack.api("POST", f"/api/studies/{study['id']}/link-order", json={"orderId": order["id"]}))
    _ok(stack.api("PATCH", f"/api/studies/{study['id']}/status", json={"status": "COMPLETED"}))
    token = stack.login(page_users["radiologist"].username, PAGE_USER_PASSWORD)
    radiologist = {"Authorization": f"Bearer {token}"}
    written = _ok(
        stack.api(
            "POST", "/api/reports", json={"studyId": study["id"], **SECTIONS}, headers=radiologist
        ),
        201,
    )
    _ok(stack.api("POST", f"/api/reports/{written['id']}/sign", headers=radiologist))
    finding = _ok(
        stack.api(
            "POST",
            "/api/critical-findings",
            json={"studyId": study["id"], "severity": "CRITICAL", "description": "Subdural"},
            headers=radiologist,
        ),
        201,
    )

    report = sidecar_front.run(
        [
            page_users["physician"].login_step(),
            {"goto": {"path": "/app/results", "status": 200}},
            {"axe": {"name": "results"}},
            {"keyboardAll": True},
            {"select": {"label": "How it was received", "value": "PHONE"}},
            {"fill": {"label": "Read-back: the finding in your words", "value": "Subdural, 12 mm"}},
            {"click": {"role": "button", "name": f"Acknowledge finding {finding['id']}"}},
            {"waitForText": "must be read back", "within": {"role": "alert"}},
            {"check": {"label": "I read the finding back and it was confirmed"}},
            {"click": {"role": "button", "name": f"Acknowledge finding {finding['id']}"}},
            {"waitForText": "The critical finding is acknowledged."},
            {"viewport": TABLET},
            {"noHorizontalScroll": True},
            {"axe": {"name": "results on a tablet"}},
            {"click": {"role": "link", "name": f"Read report {written['id']}"}},
            {"expectText": SECTIONS["impression"]},
            {"axe": {"name": "report"}},
            {
                "print": {
                    "path": str(tmp_path / "report.pdf"),
                    "expectHidden": [".site-header", ".no-print"],
                    "expectText": [SECTIONS["impression"]],
                }
            },
            {"download": {"role": "link", "name": "PDF", "expectContentType": "application/pdf"}},
        ]
    )

    assert report["axe"] == {"results": [], "results on a tablet": [], "report": []}
    [download] = [step for step in report["steps"] if step["name"].startswith("download")]
    assert download["bytes"] > 1000
    shown = _ok(stack.api("GET", f"/api/critical-findings/{finding['id']}"))
    assert shown["status"] == "ACKNOWLEDGED"
    assert shown["readBackConfirmed"] is True and shown["readBackText"] == "Subdural, 12 mm"

"""The report as a PDF (issue 14, item 7), opened with a real reader (pypdf): the department,
patient, exam, every section, the signer, the amendment history and a critical finding's
communication record are in it; physicians get it under the report's own scoping."""

from __future__ import annotations

import io

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pypdf import PdfReader

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings

from finding_helpers import raise_finding
from reporting import SECTIONS, add_user, ordered_study, sign, write_report
from testapp import USER_PASSWORD, login

Headers = dict[str, str]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"department_name": "Saint Luke Imaging Department"})


def pdf_text(client: TestClient, headers: Headers, report_id: int) -> str:
    response = client.get(
        f"/api/reports/{report_id}/rendering", params={"format": "pdf"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(response.content))
    # Lines joined: a long paragraph wraps, and the check is about the words.
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_the_pdf_holds_every_part_of_the_report(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers
) -> None:
    study_id, order = ordered_study(app, client, technologist)
    report = write_report(client, radiologist, study_id)
    finding = raise_finding(client, radiologist, study_id, "CRITICAL", reportId=report["id"])
    sign(client, radiologist, report["id"])
    amended = client.post(
        f"/api/reports/{report['id']}/amend",
        json={"reason": "Late comparison with the prior CT", "comparison": "CT of 2026-10-01."},
        headers=radiologist,
    )
    assert amended.status_code == 200, amended.text
    acknowledged = client.post(
        f"/api/critical-findings/{finding['id']}/acknowledge",
        json={
            "method": "PHONE",
            "acknowledgedByName": "Dr Gregory House",
            "readBackConfirmed": True,
            "readBackText": "Left subdural haematoma, 12 mm shift",
        },
        headers=radiologist,
    )
    assert acknowledged.status_code == 200, acknowledged.text

    text = pdf_text(client, radiologist, report["id"])
    expected = [
        "Saint Luke Imaging Department",
        f"Radiology report {report['id']}",
        "JANE DOE",  # DICOM DOE^JANE as people write it
        "PAT-0001",
        order["accessionNumber"],
        "CTHEAD CT head without contrast",
        "Fall, headache",
        "GREGORY HOUSE",
        *(" ".join(value.split()) for name, value in SECTIONS.items() if name != "comparison"),
        "CT of 2026-10-01.",
        "Signed by radiologist-user on",
        "Revision 1 (FINAL) signed by radiologist-user",
        "Revision 2 (AMENDED) signed by radiologist-user",
        "Reason: Late comparison with the prior CT",
        f"Critical finding {finding['id']} (CRITICAL)",
        "Acute left subdural haematoma with 12 mm midline shift",
        "Notified DR-0042 (raised, level 0): NOT_CONFIGURED",
        "Communicated to Dr Gregory House on",
        "(phone); read-back confirmed",
        "Read back: Left subdural haematoma, 12 mm shift",
    ]
    missing = [part for part in expected if part not in text]
    assert not missing, f"not in the PDF: {missing}\n{text}"


def test_a_preliminary_report_says_so_and_physicians_follow_the_reports_scope(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers
) -> None:
    study_id, _ = ordered_study(app, client, technologist)
    draft = write_report(client, radiologist, study_id)
    assert "PRELIMINARY: not signed" in pdf_text(client, radiologist, draft["id"])
    add_user(app, "dr.house", Role.PHYSICIAN, provider_id="DR-0042")
    add_user(app, "dr.other", Role.PHYSICIAN, provider_id="DR-9999")
    house = login(client, "dr.house", USER_PASSWORD)
    other = login(client, "dr.other", USER_PASSWORD)
    path = f"/api/reports/{draft['id']}/rendering"
    # A draft is not the physician's to read; the signed report is, for their patient only.
    assert client.get(path, params={"format": "pdf"}, headers=house).status_code == 404
    sign(client, radiologist, draft["id"])
    assert "Signed by radiologist-user" in pdf_text(client, house, draft["id"])
    assert client.get(path, params={"format": "pdf"}, headers=other).status_code == 404
    assert client.get(path, params={"format": "pdf"}).status_code == 401
    assert client.get(path, params={"format": "docx"}, headers=house).status_code == 422


def test_text_outside_latin1_and_very_long_words_do_not_break_it(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers
) -> None:
    study_id, _ = ordered_study(app, client, technologist)
    report = write_report(
        client,
        radiologist,
        study_id,
        findings="Łódź 東京 " + "x" * 3000,
        impression="Normal.\n" * 400,  # several pages
    )
    text = pdf_text(client, radiologist, report["id"])
    assert "?ód? ??" in text  # ó is Latin-1; Ł, ź and the kanji are not
    response = client.get(
        f"/api/reports/{report['id']}/rendering", params={"format": "pdf"}, headers=radiologist
    )
    assert len(PdfReader(io.BytesIO(response.content)).pages) > 1

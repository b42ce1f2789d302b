"""/app/studies/{id}: the study as GET /api/studies/{id} shows it, with the same care scope (a
physician's other patients: 404), each of its sections, the thumbnail and the report's PDF
through the page's session, and raising a critical finding through the findings API's service."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.studies.thumbnails import Rendering, ThumbnailCache, representative_image

from page_session import HTML, form_login
from reporting import SECTIONS, ordered_study, sign, write_report
from testapp import PHYSICIAN_PROVIDER_ID, USER_PASSWORD, engine_of

Headers = dict[str, str]
LoggedIn = Callable[[Role], TestClient]
PNG = b"\x89PNG\r\n\x1a\n" + b"thumbnail-bytes"


def csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found, html
    return found[1]


def section(html: str, heading_id: str) -> str:
    return html.split(f'id="{heading_id}"', 1)[1].split("</section>", 1)[0]


def test_the_study_page_shows_each_section(
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
    radiologist: Headers,
    logged_in: LoggedIn,
) -> None:
    prior, _ = ordered_study(app, client, technologist)
    study, order = ordered_study(app, client, technologist)
    other_patient, _ = ordered_study(app, client, technologist, patient_id="PAT-0002")
    finding = client.post(
        "/api/critical-findings",
        json={"studyId": study, "severity": "CRITICAL", "description": "Tension pneumothorax"},
        headers=radiologist,
    )
    assert finding.status_code == 201, finding.text
    page = logged_in(Role.RADIOLOGIST)

    answer = page.get(f"/app/studies/{study}")
    assert answer.status_code == 200, answer.text
    html = answer.text
    assert f"<h1>Study {order['accessionNumber']}</h1>" in html
    patient = section(html, "patient-heading")
    assert "DOE JANE" in patient and "PAT-0001" in patient and "1970-01-01" in patient
    ordered = section(html, "order-heading")
    assert "CT head without contrast" in ordered and "Fall, headache" in ordered
    assert order["placerOrderNumber"] in ordered and "HOUSE GREGORY" in ordered
    images = section(html, "images-heading")
    with Session(engine_of(app)) as session:
        assert representative_image(session, study) is not None
    assert f'src="/app/studies/{study}/thumbnail"' in images
    assert re.search(r"\d+ images? in \d+ series", images)
    assert "No performed procedure step" in section(html, "steps-heading")
    priors = section(html, "priors-heading")
    assert f'href="/app/studies/{prior}"' in priors
    assert f'href="/app/studies/{other_patient}"' not in priors
    findings = section(html, "findings-heading")
    assert "Tension pneumothorax" in findings and "Critical" in findings
    report = section(html, "report-heading")
    for label in ("Technique", "Comparison", "Findings", "Impression", "Recommendations"):
        assert f'">{label}</label>' in report
    assert ">Sign</button>" in report and ">Save draft</button>" in report
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert re.search(r"\son[a-z]+=", html) is None


def test_care_scope_and_roles_as_the_api(
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
    headers_for: Callable[[Role], Headers],
    logged_in: LoggedIn,
) -> None:
    theirs, _ = ordered_study(app, client, technologist, provider_id=PHYSICIAN_PROVIDER_ID)
    not_theirs, _ = ordered_study(app, client, technologist, patient_id="PAT-0009")
    physician = headers_for(Role.PHYSICIAN)  # physician-user, known by PHYSICIAN_PROVIDER_ID
    assert client.get(f"/api/studies/{not_theirs}", headers=physician).status_code == 404
    assert form_login(client, "physician-user", USER_PASSWORD).status_code == 303

    refused = client.get(f"/app/studies/{not_theirs}", headers=HTML)
    assert refused.status_code == 404
    assert 'role="alert"' in refused.text
    assert client.get(f"/app/studies/{not_theirs}/thumbnail").status_code == 404
    shown = client.get(f"/app/studies/{theirs}")
    assert shown.status_code == 200
    assert "<form" not in section(shown.text, "report-heading")  # a physician writes nothing
    assert client.get("/app/studies/999999").status_code == 404

    tech = logged_in(Role.TECHNOLOGIST)
    html = tech.get(f"/app/studies/{theirs}").text
    assert ">Sign</button>" not in html and "Raise critical finding" not in html
    token = csrf(html)
    signed = tech.post(
        f"/app/studies/{theirs}/report",
        data={"csrf_token": token, "action": "sign", **SECTIONS},
    )
    assert signed.status_code == 403  # the reports API's role: radiologists
    raised = tech.post(
        f"/app/studies/{theirs}/findings",
        data={"csrf_token": token, "severity": "HIGH", "description": "x"},
    )
    assert raised.status_code == 403
    reports = client.get(f"/api/reports/study/{theirs}", headers=technologist).json()
    assert reports["total"] == 0


def test_thumbnail_and_pdf_through_the_session(
    app: FastAPI,
    client: TestClient,
    settings: Settings,
    technologist: Headers,
    radiologist: Headers,
    logged_in: LoggedIn,
) -> None:
    study, _ = ordered_study(app, client, technologist)
    with Session(engine_of(app)) as session:
        image = representative_image(session, study)
        assert image is not None and image.orthanc_id is not None
        orthanc_id = image.orthanc_id
    # A rendering kept by the API's cache is what the API would answer (no Orthanc asked).
    cache = ThumbnailCache(settings.data_dir / "thumbnails", max_bytes=1 << 20)
    cache.put(orthanc_id, Rendering.THUMBNAIL, PNG)
    report = sign(client, radiologist, write_report(client, radiologist, study)["id"])
    page = logged_in(Role.RADIOLOGIST)

    thumbnail = page.get(f"/app/studies/{study}/thumbnail")
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/png"
    assert thumbnail.content == PNG
    api = client.get(f"/api/studies/{study}/thumbnail", headers=radiologist)
    assert api.content == PNG and api.headers["etag"] == thumbnail.headers["etag"]

    html = page.get(f"/app/studies/{study}").text
    assert f'href="/app/reports/{report["id"]}/pdf"' in html
    pdf = page.get(f"/app/reports/{report['id']}/pdf")
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    client.cookies.clear()
    assert client.get(f"/app/reports/{report['id']}/pdf", headers=HTML).status_code == 401


def test_raising_a_critical_finding(
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
    radiologist: Headers,
    logged_in: LoggedIn,
) -> None:
    study, _ = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    token = csrf(page.get(f"/app/studies/{study}").text)

    missing = page.post(
        f"/app/studies/{study}/findings",
        data={
            "csrf_token": token,
            "severity": "CRITICAL",
            "description": " ",
            "recommendation": "CT",
        },
    )
    assert missing.status_code == 400
    alert = missing.text.split('id="finding-message" role="alert"', 1)[1].split("</div>", 1)[0]
    assert "Description" in alert
    assert ">\nCT</textarea>" in missing.text  # what was sent is kept
    assert page.post(f"/app/studies/{study}/findings", data={"severity": "HIGH"}).status_code == 403

    raised = page.post(
        f"/app/studies/{study}/findings",
        data={
            "csrf_token": token,
            "severity": "CRITICAL",
            "description": "Free air under the diaphragm",
            "recommendation": "Surgical review now",
        },
        follow_redirects=False,
    )
    assert raised.status_code == 303
    assert raised.headers["location"] == f"/app/studies/{study}#findings"
    by_htmx = page.post(
        f"/app/studies/{study}/findings",
        data={"severity": "LOW", "description": "Incidental cyst"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert by_htmx.status_code == 200
    assert by_htmx.text.lstrip().startswith('<section id="findings"')
    assert "Critical finding raised." in by_htmx.text
    found = client.get(f"/api/critical-findings/study/{study}", headers=radiologist).json()["items"]
    assert sorted((f["severity"], f["description"]) for f in found) == [
        ("CRITICAL", "Free air under the diaphragm"),
        ("LOW", "Incidental cyst"),
    ]
    assert {f["raisedById"] for f in found} == {found[0]["raisedById"]}

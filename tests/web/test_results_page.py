"""/app/results: a physician's signed reports (their patients' only, as the API scopes them),
each as a printable page and the PDF, and the critical findings sent to them, acknowledged with
read-back through the API's service, with the plain form and with htmx."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role

from builders import audit_events
from finding_helpers import raise_finding
from page_session import HTML, form_login
from reporting import SECTIONS, ordered_study, sign, write_report
from testapp import PHYSICIAN_PROVIDER_ID, USER_PASSWORD, engine_of

Headers = dict[str, str]


def _csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page
    return found[1]


@pytest.fixture
def physician(headers_for: Callable[[Role], Headers]) -> Headers:
    """The physician of provider id PHYSICIAN_PROVIDER_ID, over the API (bearer)."""
    return headers_for(Role.PHYSICIAN)


@pytest.fixture
def physician_page(client: TestClient, physician: Headers) -> TestClient:
    """The same physician logged in to the pages (the session cookie)."""
    assert physician
    answer = form_login(client, "physician-user", USER_PASSWORD, next="/app/")
    assert answer.status_code == 303, answer.text
    return client


def _signed_report(
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
    radiologist: Headers,
    *,
    patient_id: str,
    provider_id: str,
) -> tuple[int, dict[str, Any]]:
    study_id, order = ordered_study(
        app, client, technologist, patient_id=patient_id, provider_id=provider_id
    )
    report = write_report(client, radiologist, study_id)
    return study_id, {**sign(client, radiologist, report["id"]), "order": order}


def test_a_physician_sees_their_patients_signed_reports_only(
    app: FastAPI, technologist: Headers, radiologist: Headers, physician_page: TestClient
) -> None:
    client = physician_page
    _, mine = _signed_report(
        app,
        client,
        technologist,
        radiologist,
        patient_id="PAT-R1",
        provider_id=PHYSICIAN_PROVIDER_ID,
    )
    _, other = _signed_report(
        app, client, technologist, radiologist, patient_id="PAT-R2", provider_id="DR-OTHER"
    )

    page = client.get("/app/results")

    assert page.status_code == 200
    assert f'href="/app/results/reports/{mine["id"]}"' in page.text
    assert f'href="/app/reports/{mine["id"]}/pdf"' in page.text
    assert mine["order"]["accessionNumber"] in page.text
    assert "radiologist-user" in page.text  # the signer
    assert f"/app/results/reports/{other['id']}" not in page.text
    assert other["order"]["accessionNumber"] not in page.text
    assert 'data-live="report finding"' in page.text
    assert 'hx-trigger="live-report from:body, live-finding from:body"' in page.text
    for script in re.findall(r"<script\b[^>]*>", page.text):
        assert re.search(r'\bsrc="/app/static/[a-z.]+"', script), script
    assert re.search(r"\son[a-z]+=", page.text) is None

    report = client.get(f"/app/results/reports/{mine['id']}")
    assert report.status_code == 200
    assert SECTIONS["impression"] in report.text and "Signed by radiologist-user" in report.text
    assert "<textarea" not in report.text and "<form" not in report.text.split("<main", 1)[1]
    hidden = client.get(f"/app/results/reports/{other['id']}")
    assert hidden.status_code == 404 and "Not found" in hidden.text
    assert client.get(f"/app/reports/{other['id']}/pdf").status_code == 404
    assert client.get("/app/results/reports/999999").status_code == 404


def test_the_pdf_downloads_with_the_session(
    app: FastAPI, technologist: Headers, radiologist: Headers, physician_page: TestClient
) -> None:
    client = physician_page
    _, mine = _signed_report(
        app,
        client,
        technologist,
        radiologist,
        patient_id="PAT-R3",
        provider_id=PHYSICIAN_PROVIDER_ID,
    )
    pdf = client.get(f"/app/reports/{mine['id']}/pdf")
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-disposition"] == f'attachment; filename="report-{mine["id"]}.pdf"'
    client.cookies.clear()
    assert client.get(f"/app/reports/{mine['id']}/pdf", headers=HTML).status_code == 401


def test_a_physician_acknowledges_a_finding_with_read_back(
    app: FastAPI,
    technologist: Headers,
    radiologist: Headers,
    physician: Headers,
    physician_page: TestClient,
) -> None:
    client = physician_page
    study_id, _ = ordered_study(
        app, client, technologist, patient_id="PAT-R4", provider_id=PHYSICIAN_PROVIDER_ID
    )
    finding = raise_finding(client, radiologist, study_id)
    page = client.get("/app/results")
    assert f'action="/app/results/findings/{finding["id"]}/acknowledge"' in page.text
    token = _csrf(page.text)
    path = f"/app/results/findings/{finding['id']}/acknowledge"
    by_phone = {"csrf_token": token, "method": "PHONE", "read_back_text": "Left subdural, 12 mm"}

    unread = client.post(path, data=by_phone)  # read back not confirmed: the service refuses
    assert unread.status_code == 400
    assert "read back" in unread.text.split('role="alert"', 1)[1]
    assert "Left subdural, 12 mm</textarea>" in unread.text  # what was typed, kept
    assert client.get(f"/api/critical-findings/{finding['id']}", headers=physician).json()[
        "status"
    ] in ("PENDING", "NOTIFIED")

    done = client.post(
        path, data={**by_phone, "read_back_confirmed": "true"}, follow_redirects=False
    )

    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/app/results?acknowledged={finding['id']}"
    shown = client.get(f"/api/critical-findings/{finding['id']}", headers=physician).json()
    assert shown["status"] == "ACKNOWLEDGED"
    assert shown["acknowledgementMethod"] == "PHONE"
    assert shown["readBackConfirmed"] is True
    assert shown["readBackText"] == "Left subdural, 12 mm"
    assert shown["acknowledgedByName"] == PHYSICIAN_PROVIDER_ID
    [event] = audit_events(engine_of(app), "critical_finding.acknowledged")
    assert event.actor == "physician-user" and event.entity_id == str(finding["id"])
    after = client.get(done.headers["location"])
    assert "is acknowledged" in after.text and path not in after.text
    again = client.post(path, data={**by_phone, "read_back_confirmed": "true"})
    assert again.status_code == 409  # acknowledged already: the service's conflict, shown


def test_acknowledging_with_htmx_answers_the_fragment(
    app: FastAPI,
    technologist: Headers,
    radiologist: Headers,
    physician: Headers,
    physician_page: TestClient,
) -> None:
    client = physician_page
    study_id, _ = ordered_study(
        app, client, technologist, patient_id="PAT-R5", provider_id=PHYSICIAN_PROVIDER_ID
    )
    finding = raise_finding(client, radiologist, study_id)
    token = _csrf(client.get("/app/results").text)
    path = f"/app/results/findings/{finding['id']}/acknowledge"
    htmx = {"HX-Request": "true", "X-CSRF-Token": token}

    invalid = client.post(path, data={"method": "CARRIER_PIGEON"}, headers=htmx)
    assert invalid.status_code == 200 and invalid.text.startswith('<div id="results-live"')
    assert "How it was received" in invalid.text.split('role="alert"', 1)[1]
    sent = client.post(path, data={"method": "ELECTRONIC"}, headers=htmx)

    assert sent.status_code == 200
    assert "is acknowledged" in sent.text and path not in sent.text
    shown = client.get(f"/api/critical-findings/{finding['id']}", headers=physician).json()
    assert shown["status"] == "ACKNOWLEDGED" and shown["acknowledgementMethod"] == "ELECTRONIC"


def test_other_roles_another_physicians_finding_and_forms_without_the_token_are_refused(
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
    radiologist: Headers,
    physician: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    study_id, _ = ordered_study(app, client, technologist, patient_id="PAT-R6", provider_id="DR-X")
    finding = raise_finding(client, radiologist, study_id)
    path = f"/app/results/findings/{finding['id']}/acknowledge"
    for role in (Role.RADIOLOGIST, Role.TECHNOLOGIST):
        refused = logged_in(role).get("/app/results")
        assert refused.status_code == 403 and "Not allowed" in refused.text
    assert logged_in(Role.ADMIN).get("/app/results").status_code == 200

    form_login(client, "physician-user", USER_PASSWORD)
    page = client.get("/app/results")
    assert path not in page.text  # not sent to them
    token = _csrf(page.text)
    no_token = client.post(path, data={"method": "ELECTRONIC"})
    assert no_token.status_code == 403 and "security token" in no_token.text
    not_theirs = client.post(path, data={"csrf_token": token, "method": "ELECTRONIC"})
    assert not_theirs.status_code == 404  # out of their scope, as the API answers
    status = client.get(f"/api/critical-findings/{finding['id']}", headers=radiologist).json()
    assert status["status"] != "ACKNOWLEDGED"

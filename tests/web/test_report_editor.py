"""The report editor of /app/studies/{id}: a template pre-fills the sections, "Save draft"
claims a study nobody reads, "Sign" saves what the editor shows and signs it in one request
(the HIS gets the ORU), "Amend"; and the refusals shown with the text kept: another reader's
claim, a stale version, an incomplete report, a missing reason, CSRF."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings

from his_simulator import HisSimulator
from reading_helpers import radiologist
from reporting import SECTIONS, ordered_study
from testapp import USER_PASSWORD, login

Headers = dict[str, str]
LoggedIn = Callable[[Role], TestClient]
FORM = {name: f"{text} (from the page)" for name, text in SECTIONS.items()}


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def settings(settings: Settings, his: HisSimulator) -> Settings:
    return settings.model_copy(
        update={
            "his_mllp_host": "127.0.0.1",
            "his_mllp_port": his.port,
            "his_mllp_timeout": 2.0,
            "result_retry_max_delay": 0.2,
            "results_send_preliminary": False,
            "his_status_updates": False,
        }
    )


def csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found, html
    return found[1]


def alert(html: str) -> str:
    return html.split('id="report-message" role="alert"', 1)[1].split("</div>", 1)[0]


def field(html: str, name: str) -> str:
    found = re.search(
        rf'<textarea id="section-{name}" name="{name}"[^>]*>\n(.*?)</textarea>', html, re.S
    )
    assert found, html
    return found[1]


def hidden_version(html: str) -> str:
    found = re.search(r'<input type="hidden" name="version" value="(\d*)">', html)
    assert found, html
    return found[1]


def the_report(client: TestClient, headers: Headers, study: int) -> dict[str, Any]:
    items = client.get(f"/api/reports/study/{study}", headers=headers).json()["items"]
    assert len(items) == 1, items
    report: dict[str, Any] = items[0]
    return report


def post(page: TestClient, study: int, token: str, **data: str) -> Any:
    return page.post(
        f"/app/studies/{study}/report", data={"csrf_token": token, **data}, follow_redirects=False
    )


def test_a_template_pre_fills_the_editor_and_saves_nothing(
    client: TestClient,
    app: FastAPI,
    technologist: Headers,
    admin_headers: Headers,
    logged_in: LoggedIn,
) -> None:
    template = client.post(
        "/api/report-templates",
        json={
            "name": "CT head",
            "modality": "CT",
            "sections": {"technique": "Axial CT of the head.", "impression": "[[impression]]"},
        },
        headers=admin_headers,
    ).json()
    study, _ = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    html = page.get(f"/app/studies/{study}").text
    assert f'<option value="{template["id"]}">CT head (suits this study)</option>' in html

    filled = post(
        page,
        study,
        csrf(html),
        action="template",
        template_id=str(template["id"]),
        findings="My own findings.",
    )
    assert filled.status_code == 200
    assert "Template applied: check each section" in alert(filled.text)
    assert field(filled.text, "technique") == "Axial CT of the head."
    assert field(filled.text, "impression") == "[[impression]]"
    assert field(filled.text, "findings") == "My own findings."  # not in the template: kept
    assert field(filled.text, "recommendations") == ""
    assert client.get(f"/api/reports/study/{study}", headers=admin_headers).json()["total"] == 0
    unchosen = post(page, study, csrf(html), action="template", template_id="")
    assert unchosen.status_code == 400 and "choose a template" in alert(unchosen.text)


def test_save_draft_then_sign_in_one_click_reaches_the_his(
    client: TestClient, app: FastAPI, his: HisSimulator, technologist: Headers, logged_in: LoggedIn
) -> None:
    study, order = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    reader = login(client, "radiologist-pages", USER_PASSWORD)
    token = csrf(page.get(f"/app/studies/{study}").text)

    saved = post(page, study, token, action="save", **{**FORM, "impression": "Draft impression."})
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/app/studies/{study}#report"
    draft = the_report(client, reader, study)
    assert (draft["status"], draft["impression"]) == ("PRELIMINARY", "Draft impression.")
    # Nobody read the study: saving claimed it for its author.
    mine = client.get("/api/reading-worklist", params={"assignedTo": "me"}, headers=reader)
    assert [i["studyId"] for i in mine.json()["items"]] == [study]
    html = page.get(f"/app/studies/{study}").text
    assert field(html, "impression") == "Draft impression."
    assert hidden_version(html) == str(draft["version"])

    signed = post(page, study, token, action="sign", version=hidden_version(html), **FORM)
    assert signed.status_code == 303
    final = the_report(client, reader, study)
    assert final["status"] == "FINAL" and final["revision"] == 1
    assert {name: final[name] for name in FORM} == FORM  # what the editor showed
    (received,) = his.wait_for(1)
    assert f"|{order['accessionNumber']}|" in received.raw
    assert "Acute left subdural haematoma with mass effect. (from the page)" in received.raw
    [obr] = [s.split("|") for s in received.raw.split("\r") if s.startswith("OBR|")]
    assert obr[25] == "F"

    shown = page.get(f"/app/studies/{study}").text
    assert ">Sign</button>" not in shown and ">Amend</button>" in shown
    assert f'href="/app/reports/{final["id"]}/pdf"' in shown
    assert "(from the page)" in shown.split('class="report-text"', 1)[1]


def test_sign_without_a_draft_and_by_htmx(
    client: TestClient, app: FastAPI, technologist: Headers, logged_in: LoggedIn
) -> None:
    study, _ = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    token = csrf(page.get(f"/app/studies/{study}").text)
    incomplete = page.post(
        f"/app/studies/{study}/report",
        data={"action": "sign", "technique": "CT.", "findings": " ", "impression": ""},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert incomplete.status_code == 200  # htmx swaps 2xx answers: the refusal is in the section
    assert incomplete.text.lstrip().startswith('<section id="report"')
    assert "neither findings nor an impression" in alert(incomplete.text)
    assert field(incomplete.text, "technique") == "CT."
    assert client.get(f"/api/reports/study/{study}", headers=technologist).json()["total"] == 0

    signed = page.post(
        f"/app/studies/{study}/report",
        data={"action": "sign", **FORM},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert signed.status_code == 200
    assert "Report signed." in alert(signed.text)
    report = the_report(client, technologist, study)
    assert report["status"] == "FINAL" and report["findings"] == FORM["findings"]


def test_another_readers_claim_and_a_stale_version_keep_the_text(
    client: TestClient, app: FastAPI, technologist: Headers, logged_in: LoggedIn
) -> None:
    held, _ = ordered_study(app, client, technologist)
    _, other = radiologist(app, client, "dr.other")
    assert client.post(f"/api/studies/{held}/claim", headers=other).status_code == 200
    page = logged_in(Role.RADIOLOGIST)
    token = csrf(page.get(f"/app/studies/{held}").text)
    refused = post(page, held, token, action="sign", **FORM)
    assert refused.status_code == 409
    assert "held by radiologist dr.other" in alert(refused.text)
    assert field(refused.text, "findings") == FORM["findings"]
    assert client.get(f"/api/reports/study/{held}", headers=other).json()["total"] == 0

    study, _ = ordered_study(app, client, technologist)
    reader = login(client, "radiologist-pages", USER_PASSWORD)
    assert post(page, study, token, action="save", **FORM).status_code == 303
    read_version = hidden_version(page.get(f"/app/studies/{study}").text)
    report = the_report(client, reader, study)
    changed = client.patch(
        f"/api/reports/{report['id']}", json={"impression": "Changed elsewhere."}, headers=reader
    )
    assert changed.status_code == 200

    stale = post(
        page,
        study,
        token,
        action="save",
        version=read_version,
        **{**FORM, "impression": "My impression."},
    )
    assert stale.status_code == 409
    assert "someone changed it since you read it" in alert(stale.text)
    assert field(stale.text, "impression") == "My impression."  # the user's text is kept
    assert "Changed elsewhere." in stale.text.split('class="no-print saved-now"', 1)[1]
    assert hidden_version(stale.text) == str(changed.json()["version"])
    assert the_report(client, reader, study)["impression"] == "Changed elsewhere."
    # Saving again from there writes over the version now shown.
    again = post(
        page,
        study,
        token,
        action="save",
        version=hidden_version(stale.text),
        **{**FORM, "impression": "My impression."},
    )
    assert again.status_code == 303
    assert the_report(client, reader, study)["impression"] == "My impression."


def test_amend_a_signed_report(
    client: TestClient, app: FastAPI, technologist: Headers, logged_in: LoggedIn
) -> None:
    study, _ = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    reader = login(client, "radiologist-pages", USER_PASSWORD)
    token = csrf(page.get(f"/app/studies/{study}").text)
    assert post(page, study, token, action="sign", **FORM).status_code == 303
    html = page.get(f"/app/studies/{study}").text
    version = hidden_version(html)
    assert 'for="amend-reason">Reason for the amendment</label>' in html

    amended_text = {**FORM, "impression": "Amended impression."}
    url = f"/app/studies/{study}/report/amend"
    no_reason = page.post(url, data={"csrf_token": token, "version": version, **amended_text})
    assert no_reason.status_code == 400
    assert "Reason" in alert(no_reason.text)
    assert "Amended impression." in no_reason.text  # kept
    amended = page.post(
        url,
        data={
            "csrf_token": token,
            "version": version,
            "kind": "AMENDED",
            "reason": "Clinical history received",
            **amended_text,
        },
        follow_redirects=False,
    )
    assert amended.status_code == 303
    report = the_report(client, reader, study)
    assert (report["status"], report["revision"]) == ("AMENDED", 2)
    assert report["impression"] == "Amended impression."
    versions = client.get(f"/api/reports/{report['id']}/versions", headers=reader).json()
    assert [v["reason"] for v in versions] == [None, "Clinical history received"]


def test_csrf_and_print_styles(
    client: TestClient, app: FastAPI, technologist: Headers, logged_in: LoggedIn
) -> None:
    study, _ = ordered_study(app, client, technologist)
    page = logged_in(Role.RADIOLOGIST)
    refused = page.post(f"/app/studies/{study}/report", data={"action": "sign", **FORM})
    assert refused.status_code == 403 and "security token" in refused.text
    wrong = page.post(
        f"/app/studies/{study}/report", data={"action": "save", "csrf_token": "0" * 64, **FORM}
    )
    assert wrong.status_code == 403
    assert client.get(f"/api/reports/study/{study}", headers=technologist).json()["total"] == 0
    html = page.get(f"/app/studies/{study}").text
    assert 'class="form editor no-print"' in html  # the forms do not print; the report does
    css = client.get("/app/static/app.css").text
    assert "@media print" in css and ".no-print" in css

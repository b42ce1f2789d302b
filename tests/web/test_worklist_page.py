"""/app/worklist: the reading queue as GET /api/reading-worklist gives it (STAT first, the same
filters), claiming and releasing through the API's own action, with and without htmx, and the
refusals: another reader's claim (409 shown on the list), roles, CSRF."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app

from finding_helpers import T0, FakeClock
from page_session import HTML
from reading_helpers import radiologist, ready_study, worklist_ids
from testapp import USER_PASSWORD, login

Headers = dict[str, str]
LoggedIn = Callable[[Role], TestClient]


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def row_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="study-(\d+)"', html)]


def csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found, html
    return found[1]


def page_reader(client: TestClient) -> Headers:
    """API headers of the page's radiologist (conftest's logged_in: radiologist-pages)."""
    return login(client, "radiologist-pages", USER_PASSWORD)


def test_the_worklist_opens_on_the_whole_queue_stat_first_as_the_api_sorts_it(
    app: FastAPI, client: TestClient, clock: FakeClock, technologist: Headers, logged_in: LoggedIn
) -> None:
    routine = ready_study(app, client, technologist, now=T0, priority="ROUTINE")
    urgent = ready_study(
        app, client, technologist, now=T0 + timedelta(minutes=5), priority="URGENT"
    )
    stat = ready_study(app, client, technologist, now=T0 + timedelta(minutes=30), priority="STAT")
    clock.now = T0 + timedelta(days=3)
    page = logged_in(Role.RADIOLOGIST)
    reader = page_reader(client)

    answer = page.get("/app/worklist")
    assert answer.status_code == 200, answer.text
    html = answer.text
    assert row_ids(html) == worklist_ids(client, reader) == [stat, urgent, routine]
    assert 'data-live="study report"' in html
    assert 'hx-trigger="live-study from:body, live-report from:body"' in html
    assert 'hx-get="/app/worklist/rows"' in html
    first_row = html.split(f'<tr id="study-{stat}"', 1)[1].split("</tr>", 1)[0]
    assert 'class="is-overdue"' in first_row and "Overdue" in first_row  # 3 days: every one
    assert '<span class="badge badge--stat">STAT</span>' in first_row
    assert f'<a href="/app/studies/{stat}">' in first_row
    assert "DOE JANE" in first_row and "PAT-0001" in first_row
    assert "CT HEAD" in first_row
    assert "Unassigned" in first_row
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert re.search(r"\son[a-z]+=", html) is None

    rows = page.get("/app/worklist/rows", headers={"HX-Request": "true"})
    assert rows.status_code == 200
    assert rows.text.lstrip().startswith('<div id="worklist-rows"')
    assert row_ids(rows.text) == [stat, urgent, routine]


def test_filters_mine_unassigned_priority_and_pages(
    app: FastAPI, client: TestClient, technologist: Headers, logged_in: LoggedIn
) -> None:
    ids = [ready_study(app, client, technologist, now=T0, priority=p) for p in ("ROUTINE", "STAT")]
    routine, stat = ids
    page = logged_in(Role.RADIOLOGIST)
    reader = page_reader(client)
    assert client.post(f"/api/studies/{routine}/claim", headers=reader).status_code == 200

    assert row_ids(page.get("/app/worklist?assigned=mine").text) == [routine]
    assert row_ids(page.get("/app/worklist?assigned=unassigned").text) == [stat]
    assert worklist_ids(client, reader, assignedTo="unassigned") == [stat]
    assert row_ids(page.get("/app/worklist?priority=ROUTINE").text) == [routine]
    assert row_ids(page.get("/app/worklist?modality=MR").text) == []
    assert row_ids(page.get("/app/worklist?assigned=all&modality=&priority=").text) == [
        stat,
        routine,
    ]
    # The filters keep to the rows' fragment and the forms' actions (enumerated values only).
    mine = page.get("/app/worklist?assigned=mine").text
    assert 'hx-get="/app/worklist/rows?assigned=mine"' in mine
    assert f'action="/app/worklist/{routine}/release?assigned=mine"' in mine

    for wrong in ("assigned=everyone", "modality=ct", "priority=LOW", "offset=-1"):
        refused = page.get(f"/app/worklist?{wrong}")
        assert refused.status_code == 400, wrong
        assert 'role="alert"' in refused.text
    # Pages as the API's: 50 rows each, the next page past them.
    assert "Next page" not in page.get("/app/worklist").text
    assert row_ids(page.get("/app/worklist?offset=1").text) == [routine]


def test_claim_and_release_through_the_page_with_and_without_htmx(
    app: FastAPI, client: TestClient, technologist: Headers, logged_in: LoggedIn
) -> None:
    study = ready_study(app, client, technologist, now=T0, priority="STAT")
    page = logged_in(Role.RADIOLOGIST)
    reader = page_reader(client)
    token = csrf(page.get("/app/worklist").text)

    claimed = page.post(
        f"/app/worklist/{study}/claim?assigned=unassigned",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert claimed.status_code == 303
    assert claimed.headers["location"] == "/app/worklist?assigned=unassigned"
    assert worklist_ids(client, reader, assignedTo="me") == [study]
    html = page.get("/app/worklist").text
    assert 'radiologist-pages <span class="muted">(claimed)</span>' in html
    assert f'action="/app/worklist/{study}/release"' in html

    released = page.post(
        f"/app/worklist/{study}/release",
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert released.status_code == 200
    assert released.text.lstrip().startswith('<div id="worklist-rows"')
    assert f"You released study {study}." in released.text
    assert worklist_ids(client, reader, assignedTo="unassigned") == [study]
    assert client.get(f"/api/studies/{study}", headers=reader).status_code == 200


def test_another_readers_claim_is_shown_as_a_conflict_naming_them(
    app: FastAPI, client: TestClient, technologist: Headers, logged_in: LoggedIn
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    _, other = radiologist(app, client, "dr.other")
    assert client.post(f"/api/studies/{study}/claim", headers=other).status_code == 200
    page = logged_in(Role.RADIOLOGIST)
    token = csrf(page.get("/app/worklist").text)

    refused = page.post(f"/app/worklist/{study}/claim", data={"csrf_token": token})
    assert refused.status_code == 409
    alert = refused.text.split('role="alert"', 1)[1].split("</div>", 1)[0]
    assert "held by radiologist dr.other" in alert
    assert row_ids(refused.text) == [study]  # the list is still there
    by_htmx = page.post(
        f"/app/worklist/{study}/release", headers={"HX-Request": "true", "X-CSRF-Token": token}
    )
    assert by_htmx.status_code == 200  # htmx swaps 2xx answers: the refusal is in the fragment
    assert "held by radiologist dr.other" in by_htmx.text
    assert worklist_ids(client, other, assignedTo="me") == [study]


def test_roles_and_csrf(
    app: FastAPI, client: TestClient, technologist: Headers, logged_in: LoggedIn
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    technologist_page = logged_in(Role.TECHNOLOGIST)
    refused = technologist_page.get("/app/worklist", headers=HTML)
    assert refused.status_code == 403  # as GET /api/reading-worklist
    assert "radiologist" in refused.text

    admin = logged_in(Role.ADMIN)
    html = admin.get("/app/worklist").text
    assert row_ids(html) == [study]
    assert "/claim" not in html  # claiming is a radiologist's (the API's role)
    token = csrf(html)
    assert admin.post(f"/app/worklist/{study}/claim", data={"csrf_token": token}).status_code == 403

    page = logged_in(Role.RADIOLOGIST)
    assert page.post(f"/app/worklist/{study}/claim", data={}).status_code == 403
    assert "security token" in page.post(f"/app/worklist/{study}/claim").text
    assert worklist_ids(client, page_reader(client), assignedTo="unassigned") == [study]

"""/app/admin: accounts, the procedure catalog import, assignment rules and report templates,
changed through the page as a browser sends its forms (and as htmx does), checked through the
API and the audit trail afterwards: the page makes the API's changes, by the API's rules."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.audit import AuditEvent

from builders import audit_events
from page_session import HTML, form_login
from testapp import USER_PASSWORD, engine_of

Headers = dict[str, str]
NEW_PASSWORD = "a-long-password-for-the-page"
HTMX = {"HX-Request": "true"}
SUB_PAGES = ["/app/admin", "/app/admin/users", "/app/admin/procedures", "/app/admin/rules"]
SUB_PAGES.append("/app/admin/templates")


def by_admin(app: FastAPI, action: str) -> list[AuditEvent]:
    """The audit rows of the action the administrator (not the service itself) wrote."""
    return [event for event in audit_events(engine_of(app), action) if event.actor == "admin"]


def token_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page
    return found[1]


@pytest.fixture
def admin_page(logged_in: Callable[[Role], TestClient]) -> tuple[TestClient, str]:
    """The administrator's browser and its CSRF token."""
    client = logged_in(Role.ADMIN)
    page = client.get("/app/admin")
    assert page.status_code == 200, page.text
    return client, token_of(page.text)


def post(
    client: TestClient, url: str, token: str, data: dict[str, object], htmx: bool = False
) -> httpx.Response:
    """The form as a browser sends it (the 303 not followed), or as htmx does (with
    HX-Request, the 303 followed as the browser's XMLHttpRequest does)."""
    answer: httpx.Response = client.post(
        url,
        data={**data, "csrf_token": token},
        headers=HTMX if htmx else {},
        follow_redirects=htmx,
    )
    return answer


def alert_of(page: str) -> str:
    found = re.search(r'role="alert">(.*?)</div>', page, re.S)
    assert found, page
    return re.sub(r"<[^>]+>", " ", found[1])


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.PHYSICIAN])
def test_only_administrators_open_the_admin_pages(
    logged_in: Callable[[Role], TestClient], role: Role
) -> None:
    client = logged_in(role)
    for path in SUB_PAGES:
        refused = client.get(path)
        assert refused.status_code == 403, path
        assert "this page is for the roles: admin" in refused.text
    refused = client.post("/app/admin/users", data={"username": "x"})
    assert refused.status_code == 403


def test_the_admin_pages_open_without_inline_script(admin_page: tuple[TestClient, str]) -> None:
    client, _ = admin_page
    for path in SUB_PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        for script in re.findall(r"<script\b[^>]*>", page.text):
            assert re.search(r'\bsrc="/app/static/[a-z.]+"', script), script
        assert re.search(r"\son[a-z]+=", page.text) is None
        for form in re.findall(r"<form\b[^>]*method=\"post\"[^>]*>.*?</form>", page.text, re.S):
            if 'action="/logout"' not in form:
                assert 'name="csrf_token"' in form, form


def test_a_form_without_the_csrf_token_is_refused(
    app: FastAPI, admin_page: tuple[TestClient, str]
) -> None:
    client, _ = admin_page
    refused = client.post(
        "/app/admin/users",
        data={"username": "no-token", "password": NEW_PASSWORD, "role": "radiologist"},
    )
    assert refused.status_code == 403
    assert "security token" in refused.text
    assert by_admin(app, "user.created") == []


def test_an_account_created_on_the_page_logs_in_and_disabling_it_ends_its_session(
    app: FastAPI, admin_page: tuple[TestClient, str], admin_headers: Headers
) -> None:
    client, token = admin_page
    created = post(
        client,
        "/app/admin/users",
        token,
        {"username": "dr.page", "password": NEW_PASSWORD, "role": "radiologist"},
    )
    assert created.status_code == 303
    assert created.headers["location"] == "/app/admin/users?done=created"
    listed = client.get(created.headers["location"])
    assert "The account was created." in listed.text
    assert "dr.page" in listed.text
    users = client.get("/api/users", params={"limit": 100}, headers=admin_headers).json()["items"]
    [account] = [u for u in users if u["username"] == "dr.page"]
    assert (account["role"], account["isActive"]) == ("radiologist", True)
    [event] = by_admin(app, "user.created")
    assert (event.actor, event.entity_id) == ("admin", str(account["id"]))

    with second_browser(app) as browser:
        assert form_login(browser, "dr.page", NEW_PASSWORD, next="/app/").status_code == 303
        assert browser.get("/app/").status_code == 200
        disabled = post(client, f"/app/admin/users/{account['id']}/disable", token, {})
        assert disabled.status_code == 303
        assert browser.get("/app/", headers=HTML).status_code == 401
        assert form_login(browser, "dr.page", NEW_PASSWORD).status_code != 303
    assert [e.entity_id for e in audit_events(engine_of(app), "user.disabled")] == [
        str(account["id"])
    ]
    # Enabled again by htmx: the redirect is followed and the page's section comes back.
    enabled = post(client, f"/app/admin/users/{account['id']}/enable", token, {}, htmx=True)
    assert enabled.status_code == 200
    assert 'id="admin-section"' in enabled.text and "The account was enabled." in enabled.text
    assert client.get("/api/users?limit=100", headers=admin_headers).json()["items"][-1]["isActive"]


def test_a_refused_account_keeps_what_was_typed_and_names_the_field(
    app: FastAPI, admin_page: tuple[TestClient, str], page_user: Callable[[Role], str]
) -> None:
    client, token = admin_page
    short = post(
        client,
        "/app/admin/users",
        token,
        {"username": "dr.short", "password": "short", "role": "radiologist", "facilities": "A, B"},
    )
    assert short.status_code == 422
    assert "Password:" in alert_of(short.text)
    assert 'value="dr.short"' in short.text and 'value="A, B"' in short.text
    assert "short" not in re.findall(r'name="password"[^>]*>', short.text)[0]
    taken = post(
        client,
        "/app/admin/users",
        token,
        {"username": page_user(Role.RADIOLOGIST), "password": NEW_PASSWORD, "role": "radiologist"},
        htmx=True,
    )
    assert taken.status_code == 200  # htmx swaps only 2xx: the refusal is in the section
    assert "already exists" in alert_of(taken.text)
    me = [
        u for u in client.get("/app/admin/users").text.split("<tr") if '<th scope="row">admin<' in u
    ]
    assert me and "You" in me[0]  # no button to disable oneself
    admin_id = _user_id(client, "admin")
    mine = post(client, f"/app/admin/users/{admin_id}/disable", token, {})
    assert mine.status_code == 409
    assert "cannot disable their own account" in alert_of(mine.text)
    assert by_admin(app, "user.created") == []


def test_a_password_reset_on_the_page_is_the_apis_reset(
    app: FastAPI, admin_page: tuple[TestClient, str], page_user: Callable[[Role], str]
) -> None:
    client, token = admin_page
    username = page_user(Role.TECHNOLOGIST)
    user_id = _user_id(client, username)
    reset = post(
        client,
        "/app/admin/users/password",
        token,
        {"user_id": str(user_id), "password": NEW_PASSWORD},
    )
    assert reset.status_code == 303, reset.text
    [event] = audit_events(engine_of(app), "user.updated")
    assert event.entity_id == str(user_id)
    assert event.detail["must_change_password"] is True
    with second_browser(app) as browser:
        # The old password no longer works; the new one must be changed before any page.
        assert form_login(browser, username, USER_PASSWORD).status_code != 303
        answer = browser.post(
            "/api/auth/login", json={"username": username, "password": NEW_PASSWORD}
        )
        assert answer.json()["scope"] == "password_change"


@contextmanager
def second_browser(app: FastAPI) -> Iterator[TestClient]:
    """Another browser on the same running app (its lifespan is the first client's)."""
    browser = TestClient(app)
    try:
        yield browser
    finally:
        browser.close()


def _user_id(client: TestClient, username: str) -> int:
    page = client.get("/app/admin/users").text
    for row in page.split("<tr")[1:]:
        if f'<th scope="row">{username}</th>' in row:
            found = re.search(r'data-user="(\d+)"', row)
            assert found
            return int(found[1])
    raise AssertionError(username)


CATALOG = "code,modality,description,priority\nCTHEAD,CT,CT head,STAT\nMRKNEE,MR,MR knee,\n"
BAD_CATALOG = "code,modality,description\nCTHEAD,CT,CT head\nXRAY1,PHOTO,X-ray\nCTHEAD,CT,again\n"


def test_a_catalog_imported_on_the_page_is_the_apis(
    app: FastAPI, admin_page: tuple[TestClient, str], admin_headers: Headers
) -> None:
    client, token = admin_page
    sent = client.post(
        "/app/admin/procedures/import",
        data={"csrf_token": token},
        files={"file": ("catalog.csv", CATALOG.encode(), "text/csv")},
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    shown = client.get(sent.headers["location"])
    assert "Imported 2 rows: 2 codes created, 0 updated." in shown.text
    codes = client.get("/api/procedures", headers=admin_headers).json()["items"]
    assert [(c["code"], c["modality"], c["priority"]) for c in codes] == [
        ("CTHEAD", "CT", "STAT"),
        ("MRKNEE", "MR", None),
    ]
    [event] = audit_events(engine_of(app), "procedure.imported")
    assert (event.actor, event.detail["created"]) == ("admin", 2)


def test_a_catalog_with_mistakes_imports_nothing_and_lists_each_row(
    app: FastAPI, admin_page: tuple[TestClient, str], admin_headers: Headers
) -> None:
    """As the API: all rows or none (a half-imported catalog would be worse than none)."""
    client, token = admin_page
    for headers in ({}, HTMX):
        refused = client.post(
            "/app/admin/procedures/import",
            data={"csrf_token": token},
            files={"file": ("catalog.csv", BAD_CATALOG.encode(), "text/csv")},
            headers=headers,
        )
        assert refused.status_code == (200 if headers else 422)
        table = refused.text.split('id="import-problems"', 1)[1].split("</table>", 1)[0]
        rows = [
            [
                re.sub(r"<[^>]+>", "", cell).strip()
                for cell in re.findall(r"<td[^>]*>(.*?)</td>", tr)
            ]
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)
        ]
        rows = [row for row in rows if row]
        assert [row[:2] for row in rows] == [["3", "modality"], ["4", "code"]], rows
        assert "also on row 2" in rows[1][2]
    assert client.get("/api/procedures", headers=admin_headers).json()["total"] == 0
    assert audit_events(engine_of(app), "procedure.imported") == []
    empty = client.post(
        "/app/admin/procedures/import",
        data={"csrf_token": token},
        files={"file": ("", b"", "application/octet-stream")},
    )
    assert empty.status_code == 422 and "choose a CSV file" in empty.text


def test_assignment_rules_created_and_deleted_on_the_page(
    app: FastAPI,
    admin_page: tuple[TestClient, str],
    admin_headers: Headers,
    page_user: Callable[[Role], str],
) -> None:
    client, token = admin_page
    reader_id = _user_id(client, page_user(Role.RADIOLOGIST))
    tech_id = _user_id(client, page_user(Role.TECHNOLOGIST))
    refused = post(
        client,
        "/app/admin/rules",
        token,
        {"name": "CT heads", "modality": "CT", "pool": [str(tech_id)], "enabled": "on"},
    )
    assert refused.status_code == 400
    assert "are not radiologists" in alert_of(refused.text)
    assert 'value="CT heads"' in refused.text
    created = post(
        client,
        "/app/admin/rules",
        token,
        {
            "name": "CT heads",
            "position": "3",
            "modality": "CT",
            "body_part": "HEAD",
            "priority": "STAT",
            "pool": [str(reader_id)],
            "enabled": "on",
        },
    )
    assert created.status_code == 303, created.text
    [rule] = client.get("/api/assignment-rules", headers=admin_headers).json()
    assert (rule["name"], rule["position"], rule["modality"], rule["bodyPart"]) == (
        "CT heads",
        3,
        "CT",
        "HEAD",
    )
    assert (rule["priority"], rule["pool"], rule["enabled"]) == ("STAT", [reader_id], True)
    listed = client.get(created.headers["location"])
    assert "The rule was created." in listed.text and "radiologist-pages" in listed.text
    deleted = post(client, f"/app/admin/rules/{rule['id']}/delete", token, {}, htmx=True)
    assert deleted.status_code == 200 and "The rule was deleted." in deleted.text
    assert client.get("/api/assignment-rules", headers=admin_headers).json() == []
    actions = [e.action for e in audit_events(engine_of(app)) if e.entity_type == "assignment_rule"]
    assert actions == ["assignment_rule.created", "assignment_rule.deleted"]


def test_report_templates_created_edited_and_deleted_on_the_page(
    app: FastAPI, admin_page: tuple[TestClient, str], admin_headers: Headers
) -> None:
    client, token = admin_page
    empty = post(client, "/app/admin/templates", token, {"name": "CT head"})
    assert empty.status_code == 422
    assert "at least one section" in alert_of(empty.text)
    assert 'value="CT head"' in empty.text
    created = post(
        client,
        "/app/admin/templates",
        token,
        {"name": "CT head", "modality": "CT", "findings": "Bleed of [[size]] mm."},
    )
    assert created.status_code == 303, created.text
    [template] = client.get("/api/report-templates", headers=admin_headers).json()
    assert (template["modality"], template["fields"]) == ("CT", ["size"])
    editor = client.get(f"/app/admin/templates/{template['id']}")
    assert "Bleed of [[size]] mm.</textarea>" in editor.text
    bad = post(
        client,
        f"/app/admin/templates/{template['id']}",
        token,
        {"name": "CT head", "modality": "ct head", "impression": "Kept text"},
    )
    assert bad.status_code == 422
    assert "Modality:" in alert_of(bad.text) and "Kept text</textarea>" in bad.text
    saved = post(
        client,
        f"/app/admin/templates/{template['id']}",
        token,
        {"name": "CT head v2", "modality": "", "impression": "No [[finding]]."},
    )
    assert saved.status_code == 303, saved.text
    [changed] = client.get("/api/report-templates", headers=admin_headers).json()
    assert (changed["name"], changed["modality"]) == ("CT head v2", None)
    assert changed["sections"] == {"impression": "No [[finding]]."}
    deleted = post(client, f"/app/admin/templates/{template['id']}/delete", token, {})
    assert deleted.status_code == 303
    assert client.get("/api/report-templates", headers=admin_headers).json() == []
    actions = [e.action for e in audit_events(engine_of(app)) if e.entity_type == "report_template"]
    assert actions == [
        "report_template.created",
        "report_template.updated",
        "report_template.deleted",
    ]
    assert client.get("/app/admin/templates/999999").status_code == 404

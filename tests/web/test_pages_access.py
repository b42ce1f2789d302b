"""Who may open the pages: the viewer's login and session cookie, checked by the API's rules
(a disabled account, a forged or expired token refused), a home page per role, and refusals
answered as pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import create_access_token
from sidecar.viewer.access import SESSION_COOKIE
from sidecar.viewer.headers import CONTENT_SECURITY_POLICY

from page_session import HTML, form_login
from testapp import ADMIN_PASSWORD, TEST_JWT_SECRET, USER_PASSWORD, engine_of

# The links of each role's home page (the cards; the navigation has the same and Home).
HOME_LINKS = {
    Role.RADIOLOGIST: ["/app/worklist", "/app/analytics"],
    Role.TECHNOLOGIST: ["/app/orders"],
    Role.PHYSICIAN: ["/app/results"],
    Role.ADMIN: [
        "/app/worklist",
        "/app/orders",
        "/app/results",
        "/app/analytics",
        "/app/admin",
    ],
}
ALL_PAGES = {"/app/worklist", "/app/orders", "/app/results", "/app/analytics", "/app/admin"}


def card_links(html: str) -> list[str]:
    cards = html.split('<ul class="cards">', 1)[1].split("</ul>", 1)[0]
    return [link for link in re.findall(r'href="([^"]+)"', cards) if link.startswith("/app/")]


def test_without_a_session_a_page_answers_the_login_form_that_returns_to_it(
    client: TestClient,
) -> None:
    asked = client.get("/app/worklist?mine=1", headers=HTML)
    assert asked.status_code == 401
    assert '<form method="post" action="/login"' in asked.text
    assert 'name="next" value="/app/worklist?mine=1"' in asked.text
    assert asked.headers["cache-control"] == "no-store"

    answer = form_login(client, "admin", ADMIN_PASSWORD, next="/app/worklist?mine=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/app/worklist?mine=1"


def test_login_with_next_opens_the_home_page_with_the_roles_links(
    client: TestClient, page_user: Callable[[Role], str]
) -> None:
    answer = form_login(client, page_user(Role.RADIOLOGIST), USER_PASSWORD, next="/app/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/app/"
    home = client.get(answer.headers["location"])
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert card_links(home.text) == HOME_LINKS[Role.RADIOLOGIST]
    assert "radiologist-pages" in home.text


def test_login_without_next_still_logs_in_and_the_pages_open(client: TestClient) -> None:
    answer = form_login(client, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    assert client.get("/app/").status_code == 200


@pytest.mark.parametrize("role", list(HOME_LINKS))
def test_each_role_sees_the_pages_it_may_use(
    logged_in: Callable[[Role], TestClient], role: Role
) -> None:
    client = logged_in(role)
    home = client.get("/app/")
    assert home.status_code == 200
    links = card_links(home.text)
    assert links == HOME_LINKS[role]
    nav = home.text.split('<nav class="site-nav"', 1)[1].split("</nav>", 1)[0]
    for page in ALL_PAGES:
        assert (f'href="{page}"' in nav) is (page in HOME_LINKS[role]), page
    assert 'aria-current="page"' in nav


def test_the_integration_account_has_no_pages(
    client: TestClient, headers_for: Callable[[Role], dict[str, str]]
) -> None:
    bearer = headers_for(Role.INTEGRATION)
    refused = client.get("/app/", headers=bearer)
    assert refused.status_code == 403
    assert "machine account" in refused.text
    assert refused.headers["content-type"].startswith("text/html")


def test_a_disabled_accounts_cookie_is_refused(
    app: FastAPI,
    logged_in: Callable[[Role], TestClient],
    admin_headers: dict[str, str],
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    assert client.get("/app/").status_code == 200
    with Session(engine_of(app)) as session:
        user_id = session.exec(select(User.id).where(User.username == "technologist-pages")).one()
    disabled = client.post(f"/api/users/{user_id}/disable", headers=admin_headers)
    assert disabled.status_code == 200
    refused = client.get("/app/", headers=HTML)
    assert refused.status_code == 401
    assert '<form method="post" action="/login"' in refused.text


@pytest.mark.parametrize("which", ["forged", "expired", "garbage"])
def test_a_forged_or_expired_cookie_is_refused(client: TestClient, which: str) -> None:
    lifetime = timedelta(minutes=-1) if which == "expired" else timedelta(minutes=30)
    secret = "another-secret-" * 4 if which == "forged" else TEST_JWT_SECRET
    token, _ = create_access_token(
        user_id=1, username="admin", role=Role.ADMIN, secret=secret, lifetime=lifetime
    )
    if which == "garbage":
        token = "not-a-token"
    client.cookies.set(SESSION_COOKIE, token)
    refused = client.get("/app/", headers=HTML)
    assert refused.status_code == 401
    assert '<form method="post" action="/login"' in refused.text


def test_an_htmx_request_whose_session_ended_reloads_the_page(client: TestClient) -> None:
    refused = client.get("/app/", headers={"HX-Request": "true"})
    assert refused.status_code == 401
    assert refused.headers["hx-refresh"] == "true"


def test_app_without_slash_and_unknown_pages(logged_in: Callable[[Role], TestClient]) -> None:
    client = logged_in(Role.PHYSICIAN)
    moved = client.get("/app", follow_redirects=False)
    assert moved.status_code == 307
    assert moved.headers["location"] == "/app/"
    missing = client.get("/app/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "Not found" in missing.text
    assert "OHIF" not in missing.text
    # Never the viewer's catch-all, with or without a session.
    client.cookies.clear()
    assert client.get("/app/no-such-page", headers=HTML).status_code == 401
    assert client.get("/app", follow_redirects=False).status_code == 307


def test_the_api_keeps_answering_json(client: TestClient) -> None:
    answer = client.get("/api/studies")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert client.get("/api/no-such-route").json()["error"]["code"] == "not_found"


def test_pages_carry_the_security_headers_and_no_inline_script(
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.ADMIN)
    pages = [client.get("/app/"), client.get("/app/no-such-page")]
    client.cookies.clear()
    pages.append(client.get("/app/", headers=HTML))
    for page in pages:
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["x-frame-options"] == "SAMEORIGIN"
        scripts = re.findall(r"<script\b[^>]*>", page.text)
        if page.status_code == 401:
            continue  # the login form's one script, allowed by its hash
        assert scripts, page.text
        for script in scripts:
            assert re.search(r'\bsrc="/app/static/[a-z.]+"', script), script
        assert re.search(r"\son[a-z]+=", page.text) is None  # no inline handlers either

"""CSRF: every POST, PUT, PATCH and DELETE of a page needs the session's token, in the form field
csrf_token or the X-CSRF-Token header. No page posts anything yet (the pages that do are built on
this), so a test-only page router is included the way sidecar.main includes the real ones:
with the check as a router dependency."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.web.session import PageUser, check_csrf
from sidecar.web.templating import render

from page_session import HTML


def _test_pages() -> APIRouter:
    router = APIRouter()

    @router.get("/app/test-form", response_class=HTMLResponse)
    def form_page(request: Request, user: PageUser) -> HTMLResponse:
        del user
        return render(request, "error.html", {"heading": "Form", "message": "a form"})

    @router.post("/app/test-form")
    def form_sent(user: PageUser, note: str = Form("")) -> PlainTextResponse:
        return PlainTextResponse(f"saved by {user.username}: {note}")

    @router.delete("/app/test-form")
    def form_deleted(user: PageUser) -> PlainTextResponse:
        return PlainTextResponse(f"deleted by {user.username}")

    return router


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    built = create_app(settings)
    # Before the /app/ catch-all and the viewer's: the first route that matches answers.
    holder = APIRouter()
    holder.include_router(_test_pages(), dependencies=[Depends(check_csrf)])
    built.router.routes[:0] = holder.routes
    return built


def _token(client: TestClient) -> str:
    page = client.get("/app/test-form")
    assert page.status_code == 200
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page.text)
    assert found, page.text
    return found[1]


def test_a_post_without_the_token_is_refused(logged_in: Callable[[Role], TestClient]) -> None:
    client = logged_in(Role.RADIOLOGIST)
    refused = client.post("/app/test-form", data={"note": "x"})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("text/html")
    assert "security token" in refused.text
    assert client.delete("/app/test-form").status_code == 403


def test_a_wrong_token_is_refused(logged_in: Callable[[Role], TestClient]) -> None:
    client = logged_in(Role.RADIOLOGIST)
    token = _token(client)
    wrong = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert client.post("/app/test-form", data={"note": "x", "csrf_token": wrong}).status_code == 403
    assert client.post("/app/test-form", headers={"X-CSRF-Token": wrong}).status_code == 403
    assert client.post("/app/test-form", data={"csrf_token": ""}).status_code == 403


def test_the_right_token_in_the_form_or_the_header_passes(
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    token = _token(client)
    sent = client.post("/app/test-form", data={"note": "hello", "csrf_token": token})
    assert sent.status_code == 200
    assert sent.text == "saved by radiologist-pages: hello"
    by_header = client.post("/app/test-form", data={"note": "hi"}, headers={"X-CSRF-Token": token})
    assert by_header.text == "saved by radiologist-pages: hi"
    assert client.delete("/app/test-form", headers={"X-CSRF-Token": token}).status_code == 200


def test_another_sessions_token_does_not_pass(
    client: TestClient, logged_in: Callable[[Role], TestClient]
) -> None:
    logged_in(Role.RADIOLOGIST)
    radiologist_token = _token(client)
    logged_in(Role.TECHNOLOGIST)  # the cookie is now the technologist's
    assert _token(client) != radiologist_token
    refused = client.post("/app/test-form", data={"csrf_token": radiologist_token})
    assert refused.status_code == 403


def test_without_a_session_a_post_is_401_not_403(client: TestClient) -> None:
    refused = client.post("/app/test-form", data={"csrf_token": "x"}, headers=HTML)
    assert refused.status_code == 401
    assert '<form method="post" action="/login"' in refused.text

"""Refresh tokens: rotated on each use, a reused one ends its whole family, logout, expiry, and
the credential changes that end every session of an account."""

from __future__ import annotations

import secrets

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import RefreshToken
from sidecar.core.settings import Settings

from account_helpers import (
    TOKEN_FIELDS,
    attempt,
    audit_events,
    bearer,
    clocked_app,
    new_user,
    now_clock,
)
from finding_helpers import FakeClock
from testapp import ADMIN_PASSWORD, USER_PASSWORD, engine_of


@pytest.fixture
def clock() -> FakeClock:
    return now_clock()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return clocked_app(settings, clock)


def refreshed(client: TestClient, token: str) -> httpx.Response:
    response: httpx.Response = client.post("/api/auth/refresh", json={"refreshToken": token})
    return response


def session_of(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = attempt(client, username, password)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert "log in again" in response.json()["error"]["message"]


def test_a_refresh_answers_a_new_pair_and_uses_the_old_token_up(client: TestClient) -> None:
    first = session_of(client, "admin", ADMIN_PASSWORD)

    response = refreshed(client, first["refreshToken"])

    assert response.status_code == 200, response.text
    second = response.json()
    assert set(second) == TOKEN_FIELDS
    assert second["refreshToken"] != first["refreshToken"]
    assert second["scope"] == "full"
    me = client.get("/api/auth/me", headers=bearer(second["accessToken"]))
    assert me.json()["username"] == "admin"
    third = refreshed(client, second["refreshToken"])
    assert third.status_code == 200


def test_a_reused_token_revokes_its_whole_family_and_no_other(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    stolen = session_of(client, "admin", ADMIN_PASSWORD)
    elsewhere = session_of(client, "admin", ADMIN_PASSWORD)  # another device, its own family
    rotated = refreshed(client, stolen["refreshToken"]).json()

    # The thief (or the owner) presents the used token again: both lose the session.
    assert_refused(refreshed(client, stolen["refreshToken"]))
    assert_refused(refreshed(client, rotated["refreshToken"]))
    assert refreshed(client, elsewhere["refreshToken"]).status_code == 200
    events = audit_events(client, admin_headers, action="auth.refresh_reused")
    assert [e["actor"] for e in events] == ["admin"]


def test_logout_ends_the_session(client: TestClient, admin_headers: dict[str, str]) -> None:
    tokens = session_of(client, "admin", ADMIN_PASSWORD)
    next_pair = refreshed(client, tokens["refreshToken"]).json()

    response = client.post("/api/auth/logout", json={"refreshToken": next_pair["refreshToken"]})

    assert response.status_code == 204, response.text
    assert_refused(refreshed(client, next_pair["refreshToken"]))
    assert_refused(refreshed(client, tokens["refreshToken"]))
    logouts = audit_events(client, admin_headers, action="auth.logout")
    assert [e["actor"] for e in logouts] == ["admin"]
    unknown = client.post("/api/auth/logout", json={"refreshToken": secrets.token_urlsafe(32)})
    assert unknown.status_code == 401


def test_an_expired_refresh_token_is_refused(client: TestClient, clock: FakeClock) -> None:
    tokens = session_of(client, "admin", ADMIN_PASSWORD)
    clock.advance(days=7)
    assert_refused(refreshed(client, tokens["refreshToken"]))


def test_it_lasts_refresh_token_days(client: TestClient, clock: FakeClock) -> None:
    tokens = session_of(client, "admin", ADMIN_PASSWORD)
    clock.advance(days=6, hours=23)
    assert refreshed(client, tokens["refreshToken"]).status_code == 200


@pytest.mark.parametrize(
    "value",
    [secrets.token_urlsafe(32), "x", "a.b.c", "' OR 1=1 --"],
    ids=["random", "short", "jwt-shaped", "sql"],
)
def test_forged_refresh_tokens_are_refused(client: TestClient, value: str) -> None:
    session_of(client, "admin", ADMIN_PASSWORD)
    assert_refused(refreshed(client, value))


def test_an_access_token_is_not_a_refresh_token(client: TestClient) -> None:
    tokens = session_of(client, "admin", ADMIN_PASSWORD)
    assert refreshed(client, tokens["accessToken"]).status_code in (401, 422)


@pytest.mark.parametrize(
    "body",
    [{}, {"refreshToken": ""}, {"refreshToken": "x" * 129}, {"refreshToken": None}],
    ids=["missing", "empty", "over-long", "null"],
)
def test_malformed_refresh_bodies_are_refused(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/api/auth/refresh", json=body).status_code == 422
    assert client.post("/api/auth/logout", json=body).status_code == 422


def test_only_a_hash_of_the_token_is_stored(app: FastAPI, client: TestClient) -> None:
    tokens = session_of(client, "admin", ADMIN_PASSWORD)
    with Session(engine_of(app)) as session:
        rows = session.exec(select(RefreshToken)).all()
    assert len(rows) == 1
    assert rows[0].token_hash != tokens["refreshToken"]
    assert len(rows[0].token_hash) == 64
    assert tokens["refreshToken"] not in repr(rows[0].model_dump())


@pytest.mark.parametrize("change", ["password", "role", "disable", "deactivate"])
def test_a_credentials_change_or_a_disabled_account_ends_refresh(
    client: TestClient, admin_headers: dict[str, str], change: str
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    tokens = session_of(client, "tech.one", USER_PASSWORD)
    url = f"/api/users/{user_id}"
    if change == "password":
        answer = client.patch(url, headers=admin_headers, json={"password": "fresh-horse-battery"})
    elif change == "role":
        answer = client.patch(url, headers=admin_headers, json={"role": "physician"})
    elif change == "disable":
        answer = client.post(f"{url}/disable", headers=admin_headers)
    else:
        answer = client.patch(url, headers=admin_headers, json={"isActive": False})
    assert answer.status_code == 200, answer.text

    assert_refused(refreshed(client, tokens["refreshToken"]))

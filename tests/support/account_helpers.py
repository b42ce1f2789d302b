"""Account security test helpers: an app on a clock the test moves, users made over the API,
and logins that return the whole answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.core.settings import Settings
from sidecar.main import create_app

from finding_helpers import FakeClock
from testapp import USER_PASSWORD

TOKEN_FIELDS = {"accessToken", "tokenType", "expiresIn", "refreshToken", "scope"}


def clocked_app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def now_clock() -> FakeClock:
    """A clock that starts at the real time (access tokens are checked against it) and moves
    only when the test says."""
    return FakeClock(datetime.now(UTC))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def attempt(client: TestClient, username: str, password: str, **extra: Any) -> httpx.Response:
    response: httpx.Response = client.post(
        "/api/auth/login", json={"username": username, "password": password, **extra}
    )
    return response


def new_user(
    client: TestClient,
    admin_headers: dict[str, str],
    username: str,
    role: str = "technologist",
    password: str = USER_PASSWORD,
) -> int:
    response = client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": username, "password": password, "role": role},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def audit_events(
    client: TestClient, admin_headers: dict[str, str], **filters: str
) -> list[dict[str, Any]]:
    """Oldest first."""
    response = client.get("/api/audit", headers=admin_headers, params={"limit": 500, **filters})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["items"]))


def error_message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])

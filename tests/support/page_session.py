"""Logging in to the pages (sidecar.web) as a browser does: the login form, the session cookie."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

HTML = {"Accept": "text/html,application/xhtml+xml"}


def form_login(client: TestClient, username: str, password: str, **fields: str) -> httpx.Response:
    """POST /login as the login page's form sends it; the answer is not followed."""
    answer: httpx.Response = client.post(
        "/login",
        data={"username": username, "password": password, **fields},
        follow_redirects=False,
    )
    return answer

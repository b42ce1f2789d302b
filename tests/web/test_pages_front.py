"""The pages through both fronts of a running stack: the sidecar itself, and nginx running
viewer/nginx.conf (which hands /app to the sidecar: it checks the cookie itself)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sidecar.viewer.access import SESSION_COOKIE
from sidecar.viewer.headers import COMMON_HEADERS

from nginx_front import start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack


@pytest.fixture(params=["sidecar", "nginx"])
def front_url(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[str]:
    assert stack.sidecar is not None
    if request.param == "sidecar":
        yield stack.sidecar.url
        return
    nginx = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    yield nginx.url
    nginx.stop()


def raw_get(base_url: str, target: str) -> int:
    """The status of a GET of `target` sent exactly as written (no client normalises it)."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode("latin-1"))
        head = b""
        while b"\r\n" not in head:
            chunk = connection.recv(4096)
            if not chunk:
                break
            head += chunk
    status = re.match(rb"HTTP/1\.[01] ([0-9]{3}) ", head)
    assert status, head
    return int(status[1])


@pytest.mark.orthanc
def test_pages_open_with_the_session_cookie_on_both_fronts(front_url: str) -> None:
    with httpx.Client(base_url=front_url, timeout=10) as browser:
        asked = browser.get("/app/", headers={"Accept": "text/html"})
        assert asked.status_code == 401
        assert '<form method="post" action="/login"' in asked.text
        assert 'name="next" value="/app/"' in asked.text
        moved = browser.get("/app")
        assert moved.status_code == 307
        assert moved.headers["location"].endswith("/app/")

        logged_in = browser.post(
            "/login", data={"username": "admin", "password": STACK_ADMIN_PASSWORD, "next": "/app/"}
        )
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == "/app/"
        assert SESSION_COOKIE in browser.cookies
        home = browser.get("/app/")
        assert home.status_code == 200
        assert 'href="/app/admin"' in home.text
        for name, value in COMMON_HEADERS:
            assert home.headers.get_list(name) == [value], name
        script = browser.get("/app/static/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert browser.get("/app/no-such-page").status_code == 404

    for target in (
        "/app/static/../main.py",
        "/app/static/%2e%2e/main.py",
        "/app/static/..%5cmain.py",
        "/app/static/..\\main.py",
    ):
        assert raw_get(front_url, target) in (400, 401, 404), target

"""The pages' static files: the vendored htmx and the pages' own script and styles, served by name
with their types, revalidated by ETag; nothing else of the disk reachable through them."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from sidecar.web.router import STATIC_DIR

# The files are the same whatever the database.
pytestmark = pytest.mark.one_database

HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("htmx.min.js", "text/javascript; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("htmx.LICENSE", "text/plain; charset=utf-8"),
    ],
)
def test_static_files_are_served_with_their_type_and_revalidated(
    client: TestClient, name: str, content_type: str
) -> None:
    answer = client.get(f"/app/static/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == content_type
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.content == (STATIC_DIR / name).read_bytes()
    assert answer.headers["cache-control"] == "no-cache"
    etag = answer.headers["etag"]
    again = client.get(f"/app/static/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""


def test_the_vendored_htmx_is_the_release_noted() -> None:
    body = (STATIC_DIR / "htmx.min.js").read_bytes()
    assert hashlib.sha256(body).hexdigest() == HTMX_SHA256
    assert b'version:"2.0.11"' in body
    assert "htmx.org 2.0.11" in (STATIC_DIR / "README").read_text()
    assert "Zero-Clause BSD" in (STATIC_DIR / "htmx.LICENSE").read_text()


@pytest.mark.parametrize(
    "target",
    [
        "/app/static/../main.py",
        "/app/static/..%2fmain.py",
        "/app/static/%2e%2e/main.py",
        "/app/static/%2e%2e%2f%2e%2e%2fmain.py",
        "/app/static/..%5c..%5cmain.py",
        "/app/static/..\\..\\main.py",
        "/app/static/%2e%2e%5cweb%5csession.py",
        "/app/static/README",
        "/app/static/session.py",
        "/app/static/",
        "/app/static/.app.js",
        "/app/static/app.js%00.css",
    ],
)
def test_nothing_else_is_reachable_through_the_static_route(
    client: TestClient, target: str
) -> None:
    answer = client.get(target)
    assert answer.status_code in (400, 401, 404), answer.status_code
    assert b"import" not in answer.content
    assert b"sidecar" not in answer.content.lower() or answer.status_code == 401

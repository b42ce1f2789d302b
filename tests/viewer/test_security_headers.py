"""The security headers of both viewer fronts (sidecar.viewer.headers): one definition, held
verbatim by viewer/nginx.conf, allowing exactly the inline scripts the pages have, and sent by
the sidecar with every answer. The fronts running for real (nginx and the sidecar in front of a
real Orthanc) are tests/viewer/test_viewer_deployment.py's; the viewer running under the policy
in Chromium is tests/viewer/test_viewer_browser.py's."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.viewer.bundle import DEFAULT_DIST
from sidecar.viewer.headers import (
    COMMON_HEADERS,
    CONTENT_SECURITY_POLICY,
    OHIF_INLINE_SCRIPTS,
    nginx_add_headers,
    nginx_map,
    script_hash,
)
from sidecar.viewer.login import login_page

from nginx_front import NGINX_CONF
from testapp import ADMIN_PASSWORD

EXPECTED = dict(COMMON_HEADERS)
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)


def inline_scripts(html: str) -> list[str]:
    return [body for body in _INLINE_SCRIPT.findall(html) if body]


def script_sources() -> list[str]:
    [directive] = [d for d in CONTENT_SECURITY_POLICY.split("; ") if d.startswith("script-src ")]
    return directive.split()[1:]


# --- the policy --------------------------------------------------------------------------------


def test_the_policy_holds_what_the_brief_requires() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "'unsafe-eval'" not in directives["script-src"]
    assert EXPECTED["X-Content-Type-Options"] == "nosniff"
    assert EXPECTED["Referrer-Policy"] == "no-referrer"


def test_inline_scripts_allowed_are_exactly_the_pages_ones() -> None:
    """OHIF's index.html (the installed release) and the login page: each inline script is
    allowed by its hash, and no other hash is."""
    index = DEFAULT_DIST / "index.html"
    assert index.is_file(), "the viewer is not installed: make viewer"
    ohif = [script_hash(body) for body in inline_scripts(index.read_text(encoding="utf-8"))]
    assert ohif == list(OHIF_INLINE_SCRIPTS), (
        "OHIF's inline scripts changed: update OHIF_INLINE_SCRIPTS in sidecar/viewer/headers.py"
        f" to {ohif} and viewer/nginx.conf (python -m sidecar.viewer.headers)"
    )
    login = [script_hash(body) for body in inline_scripts(login_page(next_url="/x"))]
    hashes = [source for source in script_sources() if source.startswith("'sha256-")]
    assert sorted(hashes) == sorted([*ohif, *login])


# --- nginx's copy ------------------------------------------------------------------------------


def test_nginx_conf_sends_the_sidecars_headers() -> None:
    """Verbatim: the map at http level, the add_header lines at server level."""
    text = NGINX_CONF.read_text()
    assert nginx_map() in text
    assert nginx_add_headers() in text
    http_level, _, server = text.partition("\nserver {\n")
    assert nginx_map() in http_level
    assert nginx_add_headers() in server.partition("\n    location ")[0]


def test_no_location_of_nginx_conf_loses_the_servers_headers() -> None:
    """nginx gives a location (or an if block, or a named location) with an add_header or a
    proxy_hide_header of its own none of the server's: the only ones are the server's."""
    text = NGINX_CONF.read_text()
    for directive in ("add_header", "proxy_hide_header"):
        found = re.findall(rf"(?m)^\s*{directive}\s", text)
        expected = re.findall(rf"(?m)^\s*{directive}\s", nginx_add_headers())
        assert len(found) == len(expected), f"a block of viewer/nginx.conf has its own {directive}"


# --- the sidecar's front -----------------------------------------------------------------------


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>OHIF Viewer</title>")
    (folder / "app.bundle.0123abcd.js").write_text("console.log('viewer')")
    return folder


@pytest.fixture
def settings(settings: Settings, dist: Path) -> Settings:
    return settings.model_copy(update={"viewer_dist": dist})


def assert_secured(headers: httpx.Headers, *, hsts: bool) -> None:
    for name, value in EXPECTED.items():
        assert headers.get_list(name) == [value], name
    assert headers.get_list("Strict-Transport-Security") == (["max-age=31536000"] if hsts else [])


def test_every_answer_of_the_sidecar_carries_the_headers(client: TestClient) -> None:
    """The viewer's pages, its files, the login page, refusals (401, 403, 404, 400) and the
    API's JSON: none without them. Over http, no Strict-Transport-Security."""
    answers = {
        "login page": client.get("/login"),
        "viewer without session (401)": client.get(
            "/viewer?StudyInstanceUIDs=1.2.3", headers={"Accept": "text/html"}
        ),
        "dicomweb without session (401)": client.get("/dicom-web/studies"),
        "unknown dicomweb path (404)": client.get("/dicom-web/servers"),
        "malformed path (400)": client.get("/dicom-web/%2e%2e/studies"),
        "NUL (400)": client.get("/api/studies?patientId=%00"),
        "api without token (401)": client.get("/api/auth/me"),
        "unknown api path (404)": client.get("/api/nothing-here"),
        "viewer file": client.get("/app.bundle.0123abcd.js"),
    }
    logged_in = client.post(
        "/login",
        content=f"username=admin&password={ADMIN_PASSWORD}&next=/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    answers["login (303)"] = logged_in
    answers["index page"] = client.get("/")
    assert answers["index page"].status_code == 200
    answers["api json"] = client.get("/api/auth/me")
    assert answers["api json"].status_code in (200, 401)
    for what, answer in answers.items():
        try:
            assert_secured(answer.headers, hsts=False)
        except AssertionError as exc:
            raise AssertionError(f"{what} ({answer.status_code}): {exc}") from exc


def test_strict_transport_security_when_the_viewer_is_public_over_https(
    settings: Settings,
) -> None:
    app = create_app(settings.model_copy(update={"public_viewer_url": "https://viewer.example"}))
    with TestClient(app) as client:
        for path in ("/login", "/dicom-web/studies", "/api/auth/me"):
            assert_secured(client.get(path).headers, hsts=True)

"""The viewer front without Orthanc: viewer links on study answers, the login page and session
cookie, who may view, the viewer switched off or not installed, and what reaches the logs.

A stand-in dist/ (an index.html and one bundle) replaces the npm install, so these tests do not
depend on it; tests/viewer/test_viewer_browser.py runs the real viewer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.core.audit import AuditEvent
from sidecar.core.logs import configure_logging
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.studies.models import Study
from sidecar.viewer.access import SESSION_COOKIE
from sidecar.viewer.front import ViewerFront
from sidecar.viewer.login import safe_next

from testapp import ADMIN_PASSWORD, USER_PASSWORD, engine_of, service_of

# What the viewer's front checks (sessions, paths, headers, streaming) does not depend on the
# database: SQLite pass only.
pytestmark = pytest.mark.one_database

UID = "1.2.826.0.1.3680043.8.498.1"
HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>OHIF Viewer</title>")
    (folder / "app.bundle.0123abcd.js").write_text("console.log('viewer')")
    return folder


@pytest.fixture
def settings(settings: Settings, dist: Path) -> Settings:
    return settings.model_copy(update={"viewer_dist": dist, "sidecar_port": 3999})


def make_user(app: FastAPI, role: Role) -> str:
    username = f"{role.value}-viewer"
    with Session(engine_of(app)) as session:
        session.add(User(username=username, password_hash=hash_password(USER_PASSWORD), role=role))
        session.commit()
    return username


def log_in(client: TestClient, username: str, password: str, next_url: str = "/") -> httpx.Response:
    answer: httpx.Response = client.post(
        "/login",
        content=f"username={username}&password={password}&next={next_url}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    return answer


@pytest.fixture
def viewer_session(client: TestClient) -> Iterator[TestClient]:
    answer = log_in(client, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303, answer.text
    yield client


# --- viewer links ------------------------------------------------------------------------------


def test_study_answers_carry_the_viewer_link_of_this_sidecar(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = client.post(
        "/api/studies", headers=admin_headers, json={"patientId": "P1", "studyInstanceUID": UID}
    )
    assert created.status_code == 201, created.text
    expected = f"http://127.0.0.1:3999/viewer?StudyInstanceUIDs={UID}"
    assert created.json()["viewerUrl"] == expected

    study_id = created.json()["id"]
    assert client.get(f"/api/studies/{study_id}", headers=admin_headers).json()["viewerUrl"] == (
        expected
    )
    items = client.get("/api/studies", headers=admin_headers).json()["items"]
    assert [item["viewerUrl"] for item in items] == [expected]
    link = urlsplit(expected)
    assert parse_qs(link.query) == {"StudyInstanceUIDs": [UID]}


def test_public_viewer_url_names_the_front_users_open(settings: Settings, tmp_path: Path) -> None:
    # Validated anew, as the environment would be (model_copy skips validators).
    behind_nginx = Settings.model_validate(
        {
            **settings.model_dump(),
            "public_viewer_url": "https://viewer.hospital.test/",
            "viewer_enabled": False,
        }
    )
    with TestClient(create_app(behind_nginx)) as client:
        headers = _admin(client)
        client.post(
            "/api/studies", headers=headers, json={"patientId": "P1", "studyInstanceUID": UID}
        )
        [item] = client.get("/api/studies", headers=headers).json()["items"]
    assert item["viewerUrl"] == f"https://viewer.hospital.test/viewer?StudyInstanceUIDs={UID}"


def test_viewer_not_installed_leaves_the_rest_running_and_says_why(
    settings: Settings, tmp_path: Path
) -> None:
    missing = settings.model_copy(update={"viewer_dist": tmp_path / "no-such-dist"})
    with TestClient(create_app(missing)) as client:
        headers = _admin(client)
        created = client.post("/api/studies", headers=headers, json={"patientId": "P1"})
        assert created.status_code == 201
        # No link to an error page: nothing serves a viewer.
        assert created.json()["viewerUrl"] is None
        answer = client.get("/viewer", params={"StudyInstanceUIDs": UID}, headers=HTML)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "viewer_unavailable"
        assert "make viewer" in answer.json()["error"]["message"]
        assert client.get("/health/db").status_code == 200


def test_viewer_disabled_turns_off_files_and_proxy_but_not_the_authorize_check(
    settings: Settings,
) -> None:
    disabled = settings.model_copy(update={"viewer_enabled": False})
    with TestClient(create_app(disabled)) as client:
        headers = _admin(client)
        assert client.get("/viewer", headers=headers).status_code == 503
        answer = client.get("/dicom-web/studies", headers=headers)
        assert answer.status_code == 503
        assert "VIEWER_ENABLED" in answer.json()["error"]["message"]
        assert client.get("/api/viewer/authorize", headers=headers).status_code == 204


# --- login and session ------------------------------------------------------------------------


def test_a_link_without_a_session_answers_the_login_page_then_returns_to_the_link(
    client: TestClient,
) -> None:
    link = f"/viewer?StudyInstanceUIDs={UID}"
    first = client.get(link, headers=HTML)
    assert first.status_code == 401
    assert '<form method="post" action="/login"' in first.text
    assert "OHIF Viewer" not in first.text

    answer = log_in(client, "admin", ADMIN_PASSWORD, next_url=link.replace("?", "%3F"))
    assert answer.status_code == 303
    assert answer.headers["location"] == link
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie

    opened = client.get(link, headers=HTML)
    assert opened.status_code == 200
    assert "OHIF Viewer" in opened.text
    assert opened.headers["cache-control"] == "no-store"


def test_wrong_password_and_missing_fields_are_refused_with_the_form(client: TestClient) -> None:
    wrong = log_in(client, "admin", "not-the-password")
    assert wrong.status_code == 401
    assert "wrong password" in wrong.text
    assert "set-cookie" not in wrong.headers
    empty = log_in(client, "admin", "")
    assert empty.status_code == 400
    assert "enter a user name and a password" in empty.text


def test_logout_clears_the_session(viewer_session: TestClient) -> None:
    assert viewer_session.get("/viewer", headers=HTML).status_code == 200
    answer = viewer_session.post("/logout", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"
    assert viewer_session.get("/viewer", headers=HTML).status_code == 401


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/viewer?StudyInstanceUIDs=1.2", "/viewer?StudyInstanceUIDs=1.2"),
        ("//evil.example/phish", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("viewer", "/"),
        ("/viewer\r\nSet-Cookie: x=1", "/"),
    ],
)
def test_login_returns_only_to_paths_of_this_origin(given: str, kept: str) -> None:
    assert safe_next(given) == kept


def test_the_apps_files_are_public_but_its_pages_need_a_session(client: TestClient) -> None:
    bundle = client.get("/app.bundle.0123abcd.js")
    assert bundle.status_code == 200
    assert "immutable" in bundle.headers["cache-control"]
    config = client.get("/app-config.js")
    assert config.status_code == 200
    assert "qidoRoot: '/dicom-web'" in config.text
    assert client.get("/", headers=HTML).status_code == 401
    # Not a browser page: a JSON 401 naming the scheme.
    answer = client.get("/viewer")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_paths_outside_dist_and_unknown_api_paths_never_serve_viewer_files(
    viewer_session: TestClient,
) -> None:
    secret = viewer_session.get("/..%2f..%2fetc/passwd")
    assert "root:" not in secret.text
    assert viewer_session.get("/api/no-such-route").status_code == 404
    assert viewer_session.get("/api/no-such-route").json()["error"]["code"] == "not_found"


# --- who may view --------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.PHYSICIAN])
def test_clinicians_may_log_in_to_the_viewer(app: FastAPI, client: TestClient, role: Role) -> None:
    username = make_user(app, role)
    assert log_in(client, username, USER_PASSWORD).status_code == 303
    assert client.get("/viewer", headers=HTML).status_code == 200


def test_the_integration_account_may_not_view(
    app: FastAPI, client: TestClient, headers_for: Callable[[Role], dict[str, str]]
) -> None:
    username = make_user(app, Role.INTEGRATION)
    refused = log_in(client, username, USER_PASSWORD)
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
    token = headers_for(Role.INTEGRATION)
    assert client.get("/dicom-web/studies", headers=token).status_code == 403
    assert client.get("/api/viewer/authorize", headers=token).status_code == 403


def test_a_disabled_account_loses_the_viewer(
    app: FastAPI, client: TestClient, admin_headers: dict[str, str]
) -> None:
    username = make_user(app, Role.RADIOLOGIST)
    token = client.post(
        "/api/auth/login", json={"username": username, "password": USER_PASSWORD}
    ).json()["accessToken"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/viewer/authorize", headers=bearer).status_code == 204
    with Session(engine_of(app)) as session:
        user_id = session.exec(select(User.id).where(User.username == username)).one()
    assert client.post(f"/api/users/{user_id}/disable", headers=admin_headers).status_code == 200
    # The account check is cached for a few seconds; a fresh front sees the change at once.
    service_of(app, ViewerFront).access._accounts.clear()
    assert client.get("/api/viewer/authorize", headers=bearer).status_code == 401


# --- what may reach Orthanc --------------------------------------------------------------------
# The whole hostile list runs against a real Orthanc in test_viewer_proxy.py; here, that the
# refusal comes first: before the session check (no 401), before Orthanc (down here: no 502).


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/dicom-web/%2e%2e/studies/0249773a?_method=DELETE", 400),
        ("/dicom-web/..%2fstudies/0249773a", 400),
        ("/dicom-web/studies?_method=DELETE", 400),
        ("/dicom-web/studies?%5Fmethod=DELETE", 400),
        ("/%77ado?requestType=WADO", 400),
        ("/wado/..%2fpatients", 400),
        ("/dicom-web/servers", 404),
        ("/DICOM-WEB/studies", 404),
        ("/Wado?requestType=WADO", 404),
    ],
)
def test_hostile_paths_are_refused_before_the_session_is_asked(
    client: TestClient, target: str, status: int
) -> None:
    answer = client.get(target)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == ("bad_request" if status == 400 else "not_found")
    logged_in = log_in(client, "admin", ADMIN_PASSWORD)
    assert logged_in.status_code == 303
    assert client.get(target).status_code == status


def test_a_method_override_is_refused_before_orthanc(viewer_session: TestClient) -> None:
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        answer = viewer_session.get("/dicom-web/studies", headers={header: "DELETE"})
        assert answer.status_code == 400
    # Without one, the request goes on to Orthanc, which is down here.
    assert viewer_session.get("/dicom-web/studies").status_code == 502


def test_hostile_paths_are_refused_with_the_viewer_disabled_too(settings: Settings) -> None:
    disabled = settings.model_copy(update={"viewer_enabled": False})
    with TestClient(create_app(disabled)) as client:
        assert client.get("/dicom-web/%2e%2e/changes?_method=DELETE").status_code == 400
        assert client.get("/dicom-web/studies").status_code == 503


# --- the reverse proxy's auth_request ------------------------------------------------------


def test_authorize_answers_the_orthanc_credential_and_audits_the_study_once(
    settings: Settings,
) -> None:
    with_credentials = settings.model_copy(
        update={"orthanc_username": "sidecar", "orthanc_password": "orthanc-secret"}
    )
    app = create_app(with_credentials)
    with TestClient(app) as client:
        headers = _admin(client)
        created = client.post(
            "/api/studies", headers=headers, json={"patientId": "P1", "studyInstanceUID": UID}
        ).json()
        assert client.get("/api/viewer/authorize").status_code == 401
        for _ in range(3):
            answer = client.get(
                "/api/viewer/authorize",
                headers={**headers, "X-Viewer-Path": f"/dicom-web/studies/{UID}/series"},
            )
            assert answer.status_code == 204
        # base64("sidecar:orthanc-secret")
        assert answer.headers["x-orthanc-authorization"] == "Basic c2lkZWNhcjpvcnRoYW5jLXNlY3JldA=="
    with Session(engine_of(app)) as session:
        viewed = session.exec(select(AuditEvent).where(AuditEvent.action == "study.viewed")).all()
    assert [(e.actor, e.entity_type, e.entity_id) for e in viewed] == [
        ("admin", "study", str(created["id"]))
    ]


def test_authorize_finds_the_studies_in_the_query_nginx_passes_on(
    app: FastAPI, client: TestClient, admin_headers: dict[str, str]
) -> None:
    """nginx sends the session check the target as received ($request_uri): a quarantined study
    named in its query is refused as one named in its path; one the sidecar cannot check is
    refused with the 400 the sidecar's own front answers, before any session is asked for."""
    created = client.post(
        "/api/studies", headers=admin_headers, json={"patientId": "P1", "studyInstanceUID": UID}
    )
    assert created.status_code == 201, created.text
    with Session(engine_of(app)) as session:
        row = session.get(Study, created.json()["id"])
        assert row is not None
        row.conflicting_patient_ids = "P2"
        session.add(row)
        session.commit()

    def authorize(target: str, headers: dict[str, str]) -> httpx.Response:
        answer: httpx.Response = client.get(
            "/api/viewer/authorize", headers={**headers, "X-Viewer-Path": target}
        )
        return answer

    for target in (
        f"/dicom-web/studies?StudyInstanceUID={UID}",
        f"/dicom-web/series?0020000D=1.2.3,{UID}",
        f"/wado?requestType=WADO&studyUID={UID}&objectUID=1.2.3&contentType=application/dicom",
    ):
        kept = authorize(target, admin_headers)
        assert kept.status_code == 403, target
        assert kept.json()["error"]["code"] == "quarantined"
        assert "x-viewer-refusal" not in kept.headers
    for target in (
        "/wado?requestType=WADO&objectUID=1.2.3&contentType=application/dicom",
        f"/dicom-web/series?StudyInstanceUID={UID}*",
    ):
        for headers in (admin_headers, {}):
            refused = authorize(target, headers)
            assert (refused.status_code, refused.headers["x-viewer-refusal"]) == (403, "400")
            assert refused.json()["error"]["code"] == "bad_request"
    assert authorize("/dicom-web/series?StudyInstanceUID=1.2.3", admin_headers).status_code == 204
    assert authorize(f"/viewer?StudyInstanceUIDs={UID}", admin_headers).status_code == 204


def test_the_sidecars_front_refuses_an_uncheckable_study_before_the_session_and_orthanc(
    viewer_session: TestClient,
) -> None:
    target = "/wado?requestType=WADO&objectUID=1.2.3&contentType=application/dicom"
    answer = viewer_session.get(target)
    assert answer.status_code == 400  # Orthanc is down here: it was not asked (502)
    assert "studyUID" in answer.json()["error"]["message"]
    viewer_session.cookies.clear()
    assert viewer_session.get(target).status_code == 400


# --- logs ------------------------------------------------------------------------------------


@pytest.fixture
def service_logging() -> Iterator[None]:
    """Logging as the launcher sets it up, at its most verbose level."""
    quieted = {name: logging.getLogger(name).level for name in ("httpx", "uvicorn.access")}
    configure_logging("DEBUG")
    yield
    for name, level in quieted.items():
        logging.getLogger(name).setLevel(level)


def test_no_query_string_or_path_identifier_reaches_the_log(
    viewer_session: TestClient, caplog: pytest.LogCaptureFixture, service_logging: None
) -> None:
    caplog.set_level(logging.DEBUG)
    viewer_session.get("/dicom-web/studies", params={"PatientName": "DOE^JANE", "limit": "5"})
    viewer_session.get(f"/dicom-web/studies/{UID}/series")
    viewer_session.get("/viewer", params={"StudyInstanceUIDs": UID}, headers=HTML)
    viewer_session.get("/login", params={"next": "/viewer?PatientID=MRN123"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "/dicom-web/{path:path}" in text  # the access log did run
    for leaked in ("DOE", "JANE", UID, "MRN123", "PatientName"):
        assert leaked not in text, [
            r.getMessage() for r in caplog.records if leaked in r.getMessage()
        ]


def _admin(client: TestClient) -> dict[str, str]:
    token = client.post(
        "/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["accessToken"]
    return {"Authorization": f"Bearer {token}"}


def test_orthanc_down_answers_502_with_a_reason(viewer_session: TestClient) -> None:
    answer = viewer_session.get("/dicom-web/studies")
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "unavailable"
    assert "Orthanc did not answer" in answer.json()["error"]["message"]

"""The viewer in docker-compose.yml: the services as Compose reads them, and the front's nginx
configuration run for real (Debian's nginx) against a real Orthanc and sidecar on loopback, with
the compose service names pointed at them. No Docker engine needed."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pydicom
import pytest

import sidecar.launcher.nginx
from sidecar.viewer.access import SESSION_COOKIE
from sidecar.viewer.bundle import APP_CONFIG, VIEWER_PACKAGE_DIR
from sidecar.viewer.front import ViewerFront
from sidecar.viewer.headers import COMMON_HEADERS, STRICT_TRANSPORT_SECURITY
from sidecar.viewer.paths import nginx_maps

from compose import Rendered
from compose import config as config
from compose import render as render
from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from hostile_paths import (
    KEPT_FROM_ORTHANC,
    RecordingOrthanc,
    answers_that_failed,
    check_exact_forwarding,
    refusals_that_failed,
    store_study,
    viewer_credentials,
)
from nginx_front import NGINX_CONF, NginxFront, start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack, wait_for
from testapp import service_of

# The front's configuration is what is checked, not the sidecar's database: the SQLite run has it.
pytestmark = pytest.mark.one_database

# --- docker-compose.yml ------------------------------------------------------------------------


def test_viewer_image_is_the_release_the_sidecar_serves(config: Rendered) -> None:
    pinned = json.loads((VIEWER_PACKAGE_DIR / "package.json").read_text())["dependencies"]
    assert config.service("viewer")["image"] == f"ohif/app:v{pinned['@ohif/app']}"
    [mount] = config.service("viewer")["volumes"]
    assert Path(mount["source"]) == APP_CONFIG
    assert mount["target"] == "/usr/share/nginx/html/app-config.js"
    assert mount["read_only"] is True
    # Only the front reaches the viewer container.
    assert not config.service("viewer").get("ports")


def test_front_serves_viewer_and_dicomweb_on_one_published_origin(config: Rendered) -> None:
    front = config.service("front")
    [mount] = front["volumes"]
    assert Path(mount["source"]) == NGINX_CONF
    assert mount["target"] == "/etc/nginx/conf.d/default.conf"
    assert [int(p["target"]) for p in front["ports"]] == [8080]
    for service in ("viewer", "sidecar", "orthanc"):
        assert front["depends_on"][service]["condition"] == "service_healthy"
    text = NGINX_CONF.read_text()
    for upstream in ("orthanc:8042", "sidecar:3006", "viewer:80"):
        assert f"server {upstream};" in text


def test_sidecar_links_to_the_front_and_leaves_serving_to_it(config: Rendered) -> None:
    env = config.environment("sidecar")
    assert env["VIEWER_ENABLED"] == "false"
    assert env["PUBLIC_VIEWER_URL"] == "http://localhost:8080"


def test_orthanc_answers_viewer_metadata_as_the_local_configuration_does(
    config: Rendered,
) -> None:
    env = config.environment("orthanc")
    local = json.loads((VIEWER_PACKAGE_DIR.parent / "orthanc" / "orthanc.json").read_text())
    dicomweb = local["DicomWeb"]
    assert env["ORTHANC__DICOM_WEB__SERIES_METADATA"] == dicomweb["SeriesMetadata"]
    assert env["ORTHANC__DICOM_WEB__STUDIES_METADATA"] == dicomweb["StudiesMetadata"]
    tags = json.loads(env["ORTHANC__DICOM_WEB__SERIES_METADATA_EXTRAPOLATED_TAGS"] or "[]")
    assert tags == dicomweb["SeriesMetadataExtrapolatedTags"]


# --- nginx running the front's configuration ---------------------------------------------------


@pytest.fixture
def front(stack: Stack, tmp_path: Path) -> Iterator[NginxFront]:
    running = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    yield running
    running.stop()


@pytest.fixture
def stored(stack: Stack, tmp_path: Path) -> GeneratedStudy:
    generated = make_study(tmp_path / "dicom", series_count=1, instances_per_series=1)
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    stack.wait_for_study(generated.study_instance_uid, instances=1)
    return generated


@pytest.mark.orthanc
def test_nginx_front_checks_sessions_with_the_sidecar_and_serves_dicomweb(
    stack: Stack, front: NginxFront, stored: GeneratedStudy
) -> None:
    uid = stored.study_instance_uid
    query = {"StudyInstanceUID": uid, "PatientName": "SECRET^NAME"}
    assert httpx.get(f"{front.url}/dicom-web/studies", params=query).status_code == 401
    link = f"{front.url}/viewer?StudyInstanceUIDs={uid}"
    page = httpx.get(link, headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert '<form method="post" action="/login"' in page.text

    with httpx.Client(base_url=front.url) as browser:
        logged_in = browser.post(
            "/login", data={"username": "admin", "password": STACK_ADMIN_PASSWORD, "next": "/"}
        )
        assert logged_in.status_code == 303
        assert SESSION_COOKIE in browser.cookies
        studies = browser.get("/dicom-web/studies", params={"StudyInstanceUID": uid})
        assert studies.status_code == 200
        # Built by Orthanc from the Host and Forwarded headers nginx passed on.
        assert studies.json()[0]["00081190"]["Value"] == [f"{front.url}/dicom-web/studies/{uid}"]
        # A client's own Forwarded header is replaced by the front's, never passed on.
        forged = browser.get(
            "/dicom-web/studies",
            params={"StudyInstanceUID": uid},
            headers={"Forwarded": "proto=https;host=evil.example"},
        )
        assert forged.json()[0]["00081190"]["Value"] == [f"{front.url}/dicom-web/studies/{uid}"]
        series = browser.get(f"/dicom-web/studies/{uid}/series")
        assert series.status_code == 200
        assert browser.get(link).status_code == 200
        # STOW-RS goes to the sidecar, which refuses what is not a STOW-RS body
        # (tests/viewer/test_viewer_stow.py); any other POST stays refused by nginx.
        assert browser.post("/dicom-web/studies", content=b"x").status_code == 415
        assert browser.post(f"/dicom-web/studies/{uid}/series", content=b"x").status_code == 403
        assert browser.get("/dicom-web/studies", params=query).status_code == 200

    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert [(e["actor"], e["entityType"]) for e in audit] == [("admin", "study")]
    logged = wait_for(lambda: front.access_log.read_text(), timeout=5, what="access log")
    assert '"GET /dicom-web/*" 200' in logged
    for leaked in ("SECRET", "PatientName", uid):
        assert leaked not in logged, leaked
    assert not re.search(r"\?", logged)


@pytest.mark.orthanc
def test_nginx_front_serves_signed_image_and_archive_links_without_a_session(
    stack: Stack, front: NginxFront, stored: GeneratedStudy
) -> None:
    """The API routes the front passes to the sidecar: a signed link's file or archive, GET
    only, never logged with its query (the signature)."""
    study = stack.wait_for_study(stored.study_instance_uid, instances=1)
    images = stack.api("GET", f"/api/studies/{study['id']}/images").json()["items"]
    image_id = images[0]["id"]
    made = stack.api("GET", f"/api/images/{image_id}/url")
    assert made.status_code == 200, made.text
    parts = urlsplit(made.json()["url"])
    target = f"{front.url}{parts.path}?{parts.query}"

    answer = httpx.get(target)  # no session, no token
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom"
    assert answer.headers["cache-control"] == "private, no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    parsed = pydicom.dcmread(io.BytesIO(answer.content))
    assert parsed.SOPInstanceUID == stored.instances[0].sop_instance_uid

    signature = parse_qs(parts.query)["signature"][0]
    tampered = target.replace(signature, ("A" if signature[0] != "A" else "B") + signature[1:])
    refused = httpx.get(tampered)
    assert refused.status_code == 403
    assert "signature does not match" in refused.json()["error"]["message"]
    assert httpx.post(target).status_code == 403  # GET only
    assert httpx.get(f"{front.url}/api/images/{image_id}/file").status_code == 403

    # A de-identified copy's archive link, the same way; the plugin's notice of the copy and
    # the change log reach the sync, which files the copy under no patient.
    copy = stack.api(
        "POST", f"/api/studies/{study['id']}/deidentify", json={"purpose": "teaching file"}
    )
    assert copy.status_code == 201, copy.text
    parts = urlsplit(copy.json()["archiveUrl"])
    archive = httpx.get(f"{front.url}{parts.path}?{parts.query}")
    assert archive.status_code == 200, archive.text
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as files:
        [name] = files.namelist()
        copied = pydicom.dcmread(io.BytesIO(files.read(name)))
    assert copied.PatientID == copy.json()["pseudonym"] != stored.patient_id
    assert httpx.post(f"{front.url}{parts.path}?{parts.query}").status_code == 403
    archive_signature = parse_qs(parts.query)["signature"][0]
    copy_id = copy.json()["orthancId"]
    wait_for(
        lambda: stack.orthanc_get(f"/studies/{copy_id}")["IsStable"], timeout=30, what="stable"
    )
    stack.wait_until_synced()
    assert [s["studyInstanceUID"] for s in stack.studies()] == [stored.study_instance_uid]

    logged = wait_for(lambda: front.access_log.read_text(), timeout=5, what="access log")
    assert '"GET /api/images/*/file" 200' in logged
    assert '"GET /api/deidentified/*/archive" 200' in logged
    assert signature not in logged
    assert archive_signature not in logged
    assert "signature" not in logged


@pytest.mark.orthanc
def test_nginx_front_answers_502_without_logging_the_request_when_orthanc_is_down(
    stack: Stack, front: NginxFront
) -> None:
    with httpx.Client(base_url=front.url) as browser:
        logged_in = browser.post(
            "/login", data={"username": "admin", "password": STACK_ADMIN_PASSWORD, "next": "/"}
        )
        assert logged_in.status_code == 303
        stack.orthanc.stop()
        answer = browser.get("/dicom-web/studies", params={"PatientName": "SECRET^NAME"})
    assert answer.status_code == 502
    error_log = front.access_log.with_name("error.log")
    assert "SECRET" not in (error_log.read_text() if error_log.exists() else "")
    assert "SECRET" not in front.access_log.read_text()


@pytest.mark.orthanc
def test_nginx_front_refuses_a_disabled_account_once_its_kept_session_check_expires(
    stack: Stack, front: NginxFront, stored: GeneratedStudy
) -> None:
    """Session checks are kept 10 s and renewed in the background (no request waits for the
    sidecar); a renewal that refuses must end the session, not leave the old answer in use."""
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr.leaving", "password": "leaving-password-1", "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    studies = f"/dicom-web/studies/{stored.study_instance_uid}/series"
    with httpx.Client(base_url=front.url) as browser:
        logged_in = browser.post(
            "/login", data={"username": "dr.leaving", "password": "leaving-password-1"}
        )
        assert logged_in.status_code == 303
        assert browser.get(studies).status_code == 200

        disabled = stack.api("POST", f"/api/users/{created.json()['id']}/disable")
        assert disabled.status_code == 200
        # The sidecar keeps account checks a few seconds too; this test is about nginx's.
        assert stack.sidecar is not None
        service_of(stack.sidecar.app, ViewerFront).access._accounts.clear()

        def refused() -> bool:
            return browser.get(studies).status_code == 401

        wait_for(refused, timeout=30, interval=0.25, what="the disabled account refused")
        # And it stays refused: the refusal replaced the kept permission.
        assert [browser.get(studies).status_code for _ in range(5)] == [401] * 5


@pytest.mark.orthanc
@pytest.mark.parametrize("which", ["nginx", "sidecar"])
def test_both_fronts_send_the_security_headers_with_every_answer(
    stack: Stack, stored: GeneratedStudy, tmp_path: Path, which: str
) -> None:
    """The index page, a DICOMweb answer from Orthanc, a 401, a 404, a 400 and a 502: each
    with one copy of each header (nginx drops the sidecar's own copies under `make run`).
    Strict-Transport-Security only for a request that came over https (nginx: its TLS proxy
    says so in X-Forwarded-Proto; the sidecar: PUBLIC_VIEWER_URL, http here)."""
    assert stack.sidecar is not None
    nginx = (
        start_nginx_front(
            tmp_path / "nginx",
            orthanc=f"127.0.0.1:{stack.layout.http_port}",
            sidecar=f"127.0.0.1:{stack.sidecar_port}",
        )
        if which == "nginx"
        else None
    )
    url = nginx.url if nginx is not None else stack.sidecar.url
    uid = stored.study_instance_uid
    try:
        with httpx.Client(base_url=url) as browser:
            answers = {
                "401": browser.get("/dicom-web/studies"),
                "404": browser.get("/dicom-web/servers"),
                "400": browser.get("/dicom-web/%2e%2e/studies"),
            }
            logged_in = browser.post(
                "/login", data={"username": "admin", "password": STACK_ADMIN_PASSWORD}
            )
            assert logged_in.status_code == 303
            answers["index"] = browser.get("/")
            answers["dicomweb"] = browser.get(f"/dicom-web/studies/{uid}/series")
            forwarded_https = browser.get("/", headers={"X-Forwarded-Proto": "https"})
            stack.orthanc.stop()
            answers["502"] = browser.get(f"/dicom-web/studies/{uid}/series")
    finally:
        if nginx is not None:
            nginx.stop()
    assert {what: a.status_code for what, a in answers.items()} == {
        "401": 401,
        "404": 404,
        "400": 400,
        "index": 200,
        "dicomweb": 200,
        "502": 502,
    }
    hsts, hsts_value = STRICT_TRANSPORT_SECURITY
    for what, answer in answers.items():
        for name, value in COMMON_HEADERS:
            assert answer.headers.get_list(name) == [value], (what, name)
        assert answer.headers.get_list(hsts) == [], what
    expected = [hsts_value] if which == "nginx" else []
    assert forwarded_https.headers.get_list(hsts) == expected


# --- what reaches Orthanc through nginx --------------------------------------------------------


@pytest.mark.orthanc
def test_nginx_front_refuses_hostile_requests_and_orthanc_keeps_its_data(
    stack: Stack, front: NginxFront, tmp_path: Path
) -> None:
    """The shared hostile list (tests/support/hostile_paths.py) against nginx, with an admin's, a
    physician's, a technologist's and no token; then what the viewer asks for."""
    stored = store_study(stack, tmp_path / "canary")
    credentials = viewer_credentials(stack, stored)
    assert refusals_that_failed(front.url, stack.orthanc.url, stored, credentials) == []
    assert answers_that_failed(front.url, stored, credentials) == []
    # Refused before the session check: the sidecar audited the allowed requests only.
    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert sorted(e["actor"] for e in audit) == ["admin", "dr.physician", "dr.technologist"]
    logged = wait_for(lambda: front.access_log.read_text(), timeout=5, what="access log")
    assert '"GET refused" 400' in logged
    assert '"GET refused" 404' in logged
    for leaked in ("%2e", "_method", "patients", stored.study_uid, stored.orthanc_id):
        assert leaked not in logged, leaked


@pytest.mark.orthanc
def test_the_sidecar_behind_nginxs_catch_all_refuses_them_by_itself(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `make run` the catch-all's upstream is the sidecar: without nginx's checks before
    location matching, /dicom-web/%2e%2e/studies/{id} normalises into `location /` and reaches
    the sidecar with its raw path, which must refuse it as well."""
    render = sidecar.launcher.nginx.render_server

    def without_server_checks(layout: sidecar.launcher.nginx.FrontLayout) -> str:
        conf = render(layout)
        checks = re.compile(
            r"^    if \(\$dicomweb_verdict = 40[04]\) \{\n.*?\n    \}\n", re.M | re.S
        )
        unguarded, removed = checks.subn("", conf)
        assert removed == 2
        return unguarded

    monkeypatch.setattr(sidecar.launcher.nginx, "render_server", without_server_checks)
    unguarded = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    try:
        stored = store_study(stack, tmp_path / "canary")
        credentials = viewer_credentials(stack, stored)
        failures = refusals_that_failed(
            unguarded.url, stack.orthanc.url, stored, credentials, exact=False
        )
        assert failures == []
        logged = unguarded.access_log.read_text()
    finally:
        unguarded.stop()
    # Some of them did go to the catch-all, hence to the sidecar.
    assert '"GET /*" 400' in logged


@pytest.mark.orthanc
def test_nginx_front_sends_orthanc_exactly_the_target_it_checked(
    stack: Stack, tmp_path: Path
) -> None:
    """Path and query as the client sent them (nginx passes $request_uri, not the path it
    decoded), and none of the client's other headers."""
    assert stack.sidecar is not None
    token = httpx.post(
        f"{stack.sidecar.url}/api/auth/login",
        json={"username": "admin", "password": STACK_ADMIN_PASSWORD},
    ).json()["accessToken"]
    headers = {"Authorization": f"Bearer {token}", **KEPT_FROM_ORTHANC}
    with RecordingOrthanc() as orthanc:
        nginx = start_nginx_front(
            tmp_path / "nginx", orthanc=orthanc.address, sidecar=f"127.0.0.1:{stack.sidecar_port}"
        )
        try:
            check_exact_forwarding(nginx.url, headers, orthanc)
        finally:
            nginx.stop()


def test_nginx_conf_decides_with_the_sidecars_rules() -> None:
    """The full check is tests/viewer/test_dicomweb_paths.py; this one keeps the deployment's
    file."""
    assert nginx_maps() in NGINX_CONF.read_text()

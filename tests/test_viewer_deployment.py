"""The viewer in docker-compose.yml: the services as Compose reads them, and the front's nginx
configuration run for real (Debian's nginx) against a real Orthanc and sidecar on loopback, with
the compose service names pointed at them. No Docker engine needed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.viewer_access import SESSION_COOKIE
from sidecar.viewer_front import APP_CONFIG, VIEWER_PACKAGE_DIR

from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from nginx_front import NGINX_CONF, NginxFront, start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack, wait_for
from test_deployment import Rendered
from test_deployment import config as config
from test_deployment import render as render

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
    local = json.loads((VIEWER_PACKAGE_DIR.parents[1] / "orthanc" / "orthanc.json").read_text())
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
        assert browser.post("/dicom-web/studies", content=b"x").status_code == 403
        assert browser.get("/dicom-web/studies", params=query).status_code == 200

    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert [(e["actor"], e["entityType"]) for e in audit] == [("admin", "study")]
    logged = wait_for(lambda: front.access_log.read_text(), timeout=5, what="access log")
    assert '"GET /dicom-web/*" 200' in logged
    for leaked in ("SECRET", "PatientName", uid):
        assert leaked not in logged, leaked
    assert not re.search(r"\?", logged)


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
        stack.sidecar.app.state.viewer.access._accounts.clear()

        def refused() -> bool:
            return browser.get(studies).status_code == 401

        wait_for(refused, timeout=30, interval=0.25, what="the disabled account refused")
        # And it stays refused: the refusal replaced the kept permission.
        assert [browser.get(studies).status_code for _ in range(5)] == [401] * 5

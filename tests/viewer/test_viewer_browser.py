"""The radiologist's path, end to end in headless Chromium: a study stored in the real Orthanc,
its viewerUrl from the sidecar's API, the login page, the image drawn in the viewport (pixel
statistics of a screenshot, not a black canvas) and the study in OHIF's study list.

Runs on both databases: the database only holds the study row and the user here, so the second
run costs about ten seconds and shows nothing differs. Never skipped: a missing browser fails
(make test installs it, `make test-deps`)."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sidecar.viewer.bundle import DEFAULT_DIST

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from nginx_front import NginxFront, start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack
from viewer_browser import open_study

# What the browser shows does not depend on the sidecar's database: the SQLite run has it.
pytestmark = [pytest.mark.orthanc, pytest.mark.one_database]


@pytest.mark.parametrize("front", ["nginx", "sidecar"])
def test_a_study_opens_from_its_viewer_link_and_shows_its_image(
    stack: Stack, tmp_path: Path, front: str
) -> None:
    """Through either front `make run` may serve: nginx (sidecar.launcher.nginx) when installed,
    else the sidecar's own."""
    assert (DEFAULT_DIST / "index.html").is_file(), "the viewer is not installed: make viewer"
    generated = make_study(
        tmp_path / "dicom", series_count=1, instances_per_series=3, rows=256, columns=256
    )
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(generated.study_instance_uid, instances=3)
    link = stack.api("GET", f"/api/studies/{study['id']}").json()["viewerUrl"]
    assert stack.sidecar is not None
    assert link.startswith(f"{stack.sidecar.url}/viewer?")
    assert parse_qs(urlsplit(link).query) == {"StudyInstanceUIDs": [generated.study_instance_uid]}
    nginx: NginxFront | None = None
    if front == "nginx":
        nginx = start_nginx_front(
            tmp_path / "nginx",
            orthanc=f"127.0.0.1:{stack.layout.http_port}",
            sidecar=f"127.0.0.1:{stack.sidecar_port}",
        )
        # The link as the launcher makes it (PUBLIC_VIEWER_URL set to the front).
        link = link.replace(stack.sidecar.url, nginx.url, 1)

    screenshot = tmp_path / "viewer.png"
    try:
        report = open_study(
            {
                "viewerUrl": link,
                "username": "admin",
                "password": STACK_ADMIN_PASSWORD,
                "studyListText": generated.accession_number,
                "screenshot": str(screenshot),
                "timeoutMs": 60_000,
            }
        )
    finally:
        if nginx is not None:
            nginx.stop()

    assert report["ok"], report
    assert report["loginPageStatus"] == 401 and report["loginFormShown"]
    assert report["viewerPath"] == "/viewer"
    # The phantom (a disc with a gradient on dark air) fills a good part of the viewport; a
    # black or uniform canvas has a tiny spread and almost no lit pixels.
    viewport = report["viewport"]
    assert viewport["std"] > 10, viewport
    assert viewport["nonBlackFraction"] > 0.05, viewport
    assert report["studyListShowsStudy"] is True
    # Nothing the viewer asked for was refused or missing once logged in.
    assert report["httpFailures"] == [], report["httpFailures"]
    # And it all ran under the fronts' Content-Security-Policy (sidecar.viewer.headers).
    assert report["cspViolations"] == [], report["cspViolations"]


def test_a_radiologist_saves_a_measurement_that_comes_back_as_an_sr(
    stack: Stack, tmp_path: Path
) -> None:
    """OHIF's "Create SR" through nginx's front (docker-compose's): STOW-RS to the sidecar's
    checks, then Orthanc; the report is a series of the study, in Orthanc and in the sidecar."""
    generated = make_study(
        tmp_path / "dicom", series_count=1, instances_per_series=3, rows=256, columns=256
    )
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    uid = generated.study_instance_uid
    study = stack.wait_for_study(uid, instances=3)
    password = f"radiologist-{secrets.token_hex(6)}"
    user = {"username": "dr.measures", "password": password, "role": "radiologist"}
    assert stack.api("POST", "/api/users", json=user).status_code == 201
    assert stack.sidecar is not None
    nginx = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    link = stack.api("GET", f"/api/studies/{study['id']}").json()["viewerUrl"]
    try:
        report = open_study(
            {
                "viewerUrl": link.replace(stack.sidecar.url, nginx.url, 1),
                "username": "dr.measures",
                "password": password,
                "saveMeasurement": "Lesion length",
                "screenshot": str(tmp_path / "viewer.png"),
                "timeoutMs": 60_000,
            }
        )
    finally:
        nginx.stop()

    assert report["ok"], report
    assert report["stowStatus"] == 200 and report["reportShown"] is True, report
    assert report["httpFailures"] == [], report["httpFailures"]
    # Orthanc holds the report: a Comprehensive/Enhanced SR in a series of the study.
    orthanc = stack.orthanc.url
    series = httpx.get(f"{orthanc}/dicom-web/studies/{uid}/series", timeout=10).json()
    [sr_series] = [s for s in series if s["00080060"]["Value"] == ["SR"]]
    sr_uid = sr_series["0020000E"]["Value"][0]
    [sr] = httpx.get(
        f"{orthanc}/dicom-web/studies/{uid}/series/{sr_uid}/instances", timeout=10
    ).json()
    assert sr["00080016"]["Value"][0].startswith("1.2.840.10008.5.1.4.1.1.88.")
    # The sidecar lists it, and the trail says who stored it.
    stack.wait_for_study(uid, instances=4)
    events = stack.api(
        "GET", "/api/audit", params={"action": "study.instances_stored_via_stow"}
    ).json()["items"]
    assert [(e["actor"], e["entityId"], e["detail"]["count"]) for e in events] == [
        ("dr.measures", str(study["id"]), 1)
    ]

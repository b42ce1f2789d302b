"""STOW-RS requests the fronts refuse before Orthanc is asked anything: the app alone (its
Orthanc is not running, so an instance that got through would answer 502, not what is
asserted). tests/viewer/test_viewer_stow.py stores for real, through both fronts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.studies.upload_body import MAX_FILES
from sidecar.viewer.stow import NOT_AUTHORIZED

from stow_requests import BOUNDARY, STOW_TYPE, body, failures, make_sr

ROUTES = ("/dicom-web/studies", "/api/viewer/stow/studies")


@pytest.fixture
def radiologist_headers(headers_for: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return {**headers_for(Role.RADIOLOGIST), "Content-Type": STOW_TYPE}


@pytest.mark.parametrize("route", ROUTES)
def test_what_is_not_a_stow_request_is_refused_before_orthanc(
    client: TestClient, app: FastAPI, radiologist_headers: dict[str, str], route: str
) -> None:
    headers = radiologist_headers
    _, sr = make_sr(str(generate_uid()), "P1")

    def post(content: bytes, target: str = route, **extra: str) -> int:
        status: int = client.post(target, content=content, headers={**headers, **extra}).status_code
        return status

    # Media types: the body's, and each part's.
    assert post(sr, **{"Content-Type": "application/dicom"}) == 415
    assert post(body(sr), **{"Content-Type": f"multipart/related; boundary={BOUNDARY}"}) == 415
    assert post(body(sr), **{"Content-Type": 'multipart/related; type="application/dicom"'}) == 400
    png = f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\n".encode() + sr
    assert post(png + f"\r\n--{BOUNDARY}--\r\n".encode()) == 415
    # Not a multipart body, no part, an empty part, a part that is not DICOM, a broken UID.
    assert post(b"\x00garbage") == 400
    assert post(f"--{BOUNDARY}--\r\n".encode()) == 400
    assert post(body(b"")) == 400
    answer = client.post(route, content=body(sr, b"not dicom"), headers=headers)
    assert answer.status_code == 400 and "part 1" in answer.json()["error"]["message"]
    _, broken = make_sr("1.2.abc", "P1")
    assert post(body(broken)) == 400
    # Too many parts.
    assert post(body(*[b"x"] * (MAX_FILES + 1))) == 413
    # A query, a method override, another target.
    assert post(body(sr), f"{route}?x=1") == 400
    assert post(body(sr), **{"X-HTTP-Method-Override": "DELETE"}) == 400
    assert post(body(sr), f"{route}/1.2.3/series") in (404, 405)
    assert post(body(sr), f"{route}/1.2.x") == 404
    # Past UPLOAD_MAX_MB.
    app.state.services.get(Settings).upload_max_mb = 1
    assert post(body(b"\0" * (1024 * 1024 + 1))) == 413
    # A study the sidecar does not know: refused as not authorised, nothing sent to Orthanc.
    sop, unknown = make_sr(str(generate_uid()), "P1")
    answer = client.post(route, content=body(unknown), headers=headers)
    assert answer.status_code == 403, answer.text
    assert failures(answer) == {sop: NOT_AUTHORIZED}


def test_only_radiologists_and_administrators_store(
    client: TestClient, headers_for: Callable[[Role], dict[str, str]]
) -> None:
    _, sr = make_sr(str(generate_uid()), "P1")
    for role, status in (
        (Role.TECHNOLOGIST, 403),
        (Role.PHYSICIAN, 403),
        (Role.INTEGRATION, 403),
        (Role.ADMIN, 403),  # let in: the unknown study is what is refused
    ):
        for route in ROUTES:
            headers = {**headers_for(role), "Content-Type": STOW_TYPE}
            answer = client.post(route, content=body(sr), headers=headers)
            assert answer.status_code == status, (role, route)
            assert ("00081198" in answer.json()) is (role == Role.ADMIN), (role, answer.text)
    for route in ROUTES:
        answer = client.post(route, content=body(sr), headers={"Content-Type": STOW_TYPE})
        assert answer.status_code == 401

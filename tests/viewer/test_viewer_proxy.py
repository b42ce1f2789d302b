"""/dicom-web and /wado through the sidecar's viewer front: against the real Orthanc (refused
without a session, identical answers with one, URLs that point back at the front, frames), and
against a deliberately slow upstream to show the answer is streamed, not buffered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from sidecar.core.settings import Settings
from sidecar.viewer.access import SESSION_COOKIE

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
from stack import STACK_ADMIN_PASSWORD, LiveSidecar, Stack, free_port

# What the viewer's front checks (sessions, paths, headers, streaming) does not depend on the
# database: SQLite pass only.
pytestmark = pytest.mark.one_database

RETRIEVE_URL = "00081190"


@pytest.fixture
def stored(stack: Stack, tmp_path: Path) -> GeneratedStudy:
    generated = make_study(tmp_path / "dicom", series_count=1, instances_per_series=2)
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    stack.wait_for_study(generated.study_instance_uid, instances=2)
    return generated


def bearer(stack: Stack) -> dict[str, str]:
    assert stack.sidecar is not None
    token = httpx.post(
        f"{stack.sidecar.url}/api/auth/login",
        json={"username": "admin", "password": STACK_ADMIN_PASSWORD},
    ).json()["accessToken"]
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.orthanc
def test_dicomweb_needs_a_session_and_then_answers_as_orthanc_does(
    stack: Stack, stored: GeneratedStudy
) -> None:
    assert stack.sidecar is not None
    front = stack.sidecar.url
    query = {"StudyInstanceUID": stored.study_instance_uid}
    refused = httpx.get(f"{front}/dicom-web/studies", params=query)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    wado = {"requestType": "WADO", "studyUID": stored.study_instance_uid}
    assert httpx.get(f"{front}/wado", params=wado).status_code == 401
    forged = httpx.get(f"{front}/dicom-web/studies", cookies={SESSION_COOKIE: "forged"})
    assert forged.status_code == 401

    with_token = httpx.get(f"{front}/dicom-web/studies", params=query, headers=bearer(stack))
    direct = httpx.get(f"{stack.orthanc.url}/dicom-web/studies", params=query)
    assert with_token.status_code == direct.status_code == 200
    assert _without_urls(with_token.json()) == _without_urls(direct.json())
    assert len(with_token.json()) == 1

    with httpx.Client(base_url=front) as browser:
        logged_in = browser.post(
            "/login",
            data={"username": "admin", "password": STACK_ADMIN_PASSWORD, "next": "/"},
        )
        assert logged_in.status_code == 303
        with_cookie = browser.get("/dicom-web/studies", params=query)
    assert with_cookie.status_code == 200
    assert _without_urls(with_cookie.json()) == _without_urls(direct.json())


@pytest.mark.orthanc
def test_dicomweb_urls_point_at_the_host_the_browser_used(
    stack: Stack, stored: GeneratedStudy
) -> None:
    assert stack.sidecar is not None
    uid = stored.study_instance_uid
    series_uid = stored.series[0].series_instance_uid
    headers = bearer(stack)
    study = httpx.get(f"{stack.sidecar.url}/dicom-web/studies/{uid}/series", headers=headers)
    assert study.status_code == 200
    [series] = study.json()
    expected = f"{stack.sidecar.url}/dicom-web/studies/{uid}/series/{series_uid}"
    assert series[RETRIEVE_URL]["Value"] == [expected]
    # Orthanc's own port never leaks to the browser.
    assert f":{stack.layout.http_port}" not in study.text

    renamed = httpx.get(
        f"{stack.sidecar.url}/dicom-web/studies",
        params={"StudyInstanceUID": uid},
        headers={**headers, "Host": "viewer.hospital.test:8443"},
    )
    assert renamed.json()[0][RETRIEVE_URL]["Value"] == [
        f"http://viewer.hospital.test:8443/dicom-web/studies/{uid}"
    ]
    # A Host that would smuggle a second Forwarded element is refused, not passed on.
    smuggled = httpx.get(
        f"{stack.sidecar.url}/dicom-web/studies",
        headers={**headers, "Host": "a.test;proto=https"},
    )
    assert smuggled.status_code == 400


@pytest.mark.orthanc
def test_metadata_and_frames_come_through_and_the_view_is_audited_once(
    stack: Stack, stored: GeneratedStudy
) -> None:
    assert stack.sidecar is not None
    uid = stored.study_instance_uid
    series = stored.series[0]
    instance = series.instances[0]
    headers = bearer(stack)
    base = f"{stack.sidecar.url}/dicom-web/studies/{uid}/series/{series.series_instance_uid}"

    for _ in range(2):
        metadata = httpx.get(f"{base}/metadata", headers=headers)
        assert metadata.status_code == 200
    by_instance = {item["00080018"]["Value"][0]: item for item in metadata.json()}
    # The extrapolated tags OHIF needs to draw (orthanc/orthanc.json).
    assert by_instance[instance.sop_instance_uid]["00280010"]["Value"] == [instance.rows]
    assert by_instance[instance.sop_instance_uid]["00080016"]["Value"] == [instance.sop_class_uid]

    frame = httpx.get(
        f"{base}/instances/{instance.sop_instance_uid}/frames/1",
        headers={
            **headers,
            "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        },
    )
    assert frame.status_code == 200
    assert frame.headers["content-type"].startswith("multipart/related")
    assert dcmread(instance.path).PixelData in frame.content

    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    study_id = stack.study_by_uid(uid)["id"]  # type: ignore[index]
    assert [(e["actor"], e["entityType"], e["entityId"]) for e in audit] == [
        ("admin", "study", str(study_id))
    ]


@pytest.mark.orthanc
def test_hostile_requests_are_refused_and_orthanc_keeps_its_data(
    stack: Stack, tmp_path: Path
) -> None:
    """The shared hostile list (tests/support/hostile_paths.py) against the sidecar's front, with an
    admin's, a physician's, a technologist's and no token; then what the viewer asks for."""
    assert stack.sidecar is not None
    stored = store_study(stack, tmp_path / "dicom")
    credentials = viewer_credentials(stack, stored)
    assert refusals_that_failed(stack.sidecar.url, stack.orthanc.url, stored, credentials) == []
    assert answers_that_failed(stack.sidecar.url, stored, credentials) == []
    # Refused before the session was asked: only the allowed requests were audited.
    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert sorted(e["actor"] for e in audit) == ["admin", "dr.physician", "dr.technologist"]


def test_the_proxy_sends_orthanc_exactly_the_target_it_checked(
    tmp_path: Path, database_url: str
) -> None:
    """Path and query as the client sent them (no decoding, no re-encoding), and none of the
    client's other headers."""
    with RecordingOrthanc() as orthanc:
        sidecar = LiveSidecar(_settings(tmp_path, database_url, f"http://{orthanc.address}"))
        sidecar.start()
        try:
            check_exact_forwarding(
                sidecar.url, {**_bearer_of(sidecar), **KEPT_FROM_ORTHANC}, orthanc
            )
        finally:
            sidecar.stop()


def _settings(tmp_path: Path, database_url: str, orthanc_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        jwt_secret="proxy-test-secret-" + "s" * 40,
        admin_password=STACK_ADMIN_PASSWORD,
        sidecar_port=free_port(),
        orthanc_url=orthanc_url,
        reconcile_enabled=False,
        mllp_enabled=False,
        mpps_enabled=False,
        worklist_enabled=False,
    )


def _bearer_of(sidecar: LiveSidecar) -> dict[str, str]:
    token = httpx.post(
        f"{sidecar.url}/api/auth/login",
        json={"username": "admin", "password": STACK_ADMIN_PASSWORD},
    ).json()["accessToken"]
    return {"Authorization": f"Bearer {token}"}


def _without_urls(answer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != RETRIEVE_URL} for item in answer]


# --- streaming -----------------------------------------------------------------------------


class _SlowSeries(BaseHTTPRequestHandler):
    """Sends the first part of an answer, then holds the rest until the test releases it."""

    protocol_version = "HTTP/1.1"
    release: threading.Event
    finished: threading.Event
    first_part = b"--part\r\nContent-Type: application/octet-stream\r\n\r\nfirst frame\r\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/related; boundary=part")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(self.first_part)
        self.release.wait(30)
        self._chunk(b"--part\r\n\r\nsecond frame\r\n--part--\r\n")
        self._chunk(b"")
        self.finished.set()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_orthanc() -> Iterator[tuple[str, threading.Event, threading.Event]]:
    release, finished = threading.Event(), threading.Event()
    handler = type("Handler", (_SlowSeries,), {"release": release, "finished": finished})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", release, finished
    release.set()
    server.shutdown()
    server.server_close()


def test_answers_are_streamed_not_buffered(
    slow_orthanc: tuple[str, threading.Event, threading.Event], tmp_path: Path, database_url: str
) -> None:
    upstream, release, finished = slow_orthanc
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        jwt_secret="stream-test-secret-" + "s" * 40,
        admin_password=STACK_ADMIN_PASSWORD,
        sidecar_port=free_port(),
        orthanc_url=upstream,
        reconcile_enabled=False,
        mllp_enabled=False,
        mpps_enabled=False,
        worklist_enabled=False,
    )
    sidecar = LiveSidecar(settings)
    sidecar.start()
    try:
        token = httpx.post(
            f"{sidecar.url}/api/auth/login",
            json={"username": "admin", "password": STACK_ADMIN_PASSWORD},
        ).json()["accessToken"]
        url = f"{sidecar.url}/dicom-web/studies/1.2/series/3.4/instances"
        headers = {"Authorization": f"Bearer {token}"}
        # A buffering proxy would send nothing until the upstream finished, which it does
        # only once released: the read times out instead of hanging.
        with httpx.stream("GET", url, headers=headers, timeout=10) as answer:
            assert answer.status_code == 200
            chunks = answer.iter_raw()
            received = b""
            while _SlowSeries.first_part not in received:
                received += next(chunks)
            assert not finished.is_set(), "the upstream had already sent everything"
            release.set()
            received += b"".join(chunks)
        assert received.endswith(b"second frame\r\n--part--\r\n")
    finally:
        sidecar.stop()

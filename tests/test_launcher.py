"""`make run`'s launcher (sidecar.launcher): which viewer front it starts, and the whole service
started and stopped as `make run` does, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar import launcher
from sidecar.nginx_front import COMPOSE_UPSTREAMS, FrontLayout, render_main, render_server
from sidecar.settings import Settings
from sidecar.viewer_front import DEFAULT_DIST

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
LAUNCHER_ADMIN_PASSWORD = "launcher-admin-password"


def launcher_settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(data_dir=tmp_path / "var", **changes)  # type: ignore[arg-type]


def installed_viewer(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html></html>")
    return dist


# --- choosing the front -----------------------------------------------------------------------


def test_nginx_fronts_the_viewer_when_installed(tmp_path: Path) -> None:
    settings = launcher_settings(
        tmp_path, viewer_dist=installed_viewer(tmp_path), sidecar_port=3100, viewer_port=8100
    )
    front = launcher.viewer_front(settings)
    assert front is not None
    assert front.url == "http://127.0.0.1:8100"
    layout = front.layout
    assert layout.sidecar == layout.viewer == "127.0.0.1:3100"
    assert layout.orthanc == f"127.0.0.1:{settings.orthanc_http_port}"
    assert layout.work_dir == (tmp_path / "var" / "front").resolve()


@pytest.mark.parametrize(
    "changes",
    [{"viewer_front": "sidecar"}, {"viewer_enabled": False}],
    ids=["asked-for-the-sidecar", "viewer-disabled"],
)
def test_the_sidecar_alone_when_asked_or_without_a_viewer(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    settings = launcher_settings(tmp_path, viewer_dist=installed_viewer(tmp_path), **changes)
    assert launcher.viewer_front(settings) is None


def test_no_front_without_a_viewer_to_put_behind_it(tmp_path: Path) -> None:
    empty = tmp_path / "not-installed"
    empty.mkdir()
    assert launcher.viewer_front(launcher_settings(tmp_path, viewer_dist=empty)) is None


def test_without_nginx_auto_falls_back_and_nginx_asked_for_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "nginx_binary", lambda: None)
    dist = installed_viewer(tmp_path)
    assert launcher.viewer_front(launcher_settings(tmp_path, viewer_dist=dist)) is None
    with pytest.raises(SystemExit, match="nginx is not installed"):
        launcher.viewer_front(launcher_settings(tmp_path, viewer_dist=dist, viewer_front="nginx"))


def test_the_front_runs_the_compose_configuration_with_local_addresses(tmp_path: Path) -> None:
    layout = FrontLayout(
        work_dir=tmp_path / "front",
        host="0.0.0.0",  # noqa: S104
        port=8100,
        orthanc="127.0.0.1:8042",
        sidecar="127.0.0.1:3006",
        viewer="127.0.0.1:3006",
    )
    server = render_server(layout)
    assert "listen 0.0.0.0:8100;" in server
    assert "server 127.0.0.1:8042;" in server
    assert server.count("server 127.0.0.1:3006;") == 2
    for service in COMPOSE_UPSTREAMS:
        assert f"server {service};" not in server
    # Logs, the session cache (Orthanc's credential) and temporary files stay in the front's
    # own folder, never in the system's.
    main = render_main(layout)
    assert "/var/" not in server.replace(str(tmp_path), "")
    assert "/var/" not in main.replace(str(tmp_path), "")
    assert str(layout.work_dir / "viewer-sessions") in server
    assert "daemon off;" in main
    assert layout.url == "http://127.0.0.1:8100"


# --- the whole service, as `make run` starts it ------------------------------------------------


class Launched:
    def __init__(self, process: subprocess.Popen[bytes], ports: dict[str, int], log: Path) -> None:
        self.process = process
        self.ports = ports
        self.log = log

    @property
    def sidecar(self) -> str:
        return f"http://127.0.0.1:{self.ports['SIDECAR_PORT']}"

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['VIEWER_PORT']}"


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def launched(tmp_path: Path, database_url: str) -> Iterator[Launched]:
    if not (DEFAULT_DIST / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run `make viewer`")
    ports = {
        name: free_port()
        for name in ("SIDECAR_PORT", "ORTHANC_HTTP_PORT", "ORTHANC_DICOM_PORT", "MLLP_PORT")
    }
    ports["VIEWER_PORT"] = free_port()
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        "DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url,
        "ADMIN_PASSWORD": LAUNCHER_ADMIN_PASSWORD,
        "STABLE_AGE": "1",
        "PUBLIC_VIEWER_URL": "",
        "VIEWER_FRONT": "auto",
    }
    log = tmp_path / "launcher.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar.launcher"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
    running = Launched(process, ports, log)

    def healthy() -> bool:
        assert process.poll() is None, f"the launcher exited:\n{log.read_text()}"
        try:
            return httpx.get(f"{running.sidecar}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=90, what="the launched service's /health")
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.orthanc
def test_make_run_serves_the_viewer_through_nginx_and_stops_everything_on_ctrl_c(
    launched: Launched, tmp_path: Path
) -> None:
    # A study stored over DICOM carries a viewer link on the nginx front.
    study = make_study(tmp_path / "dicom", series_count=1, instances_per_series=1)
    dicom_port = launched.ports["ORTHANC_DICOM_PORT"]
    assert storescu_dcmtk(study.files, "127.0.0.1", dicom_port, "ORTHANC").all_success
    token = httpx.post(
        f"{launched.sidecar}/api/auth/login",
        json={"username": "admin", "password": LAUNCHER_ADMIN_PASSWORD},
    ).json()["accessToken"]
    bearer = {"Authorization": f"Bearer {token}"}

    def listed() -> dict[str, object] | None:
        items = httpx.get(f"{launched.sidecar}/api/studies", headers=bearer).json()["items"]
        return next((s for s in items if s["studyInstanceUID"] == study.study_instance_uid), None)

    record = wait_for(listed, timeout=30, what="the stored study")
    assert record["viewerUrl"] == (
        f"{launched.front}/viewer?StudyInstanceUIDs={study.study_instance_uid}"
    )

    # The link asks for a login; DICOMweb through the front answers a signed-in user only.
    link = httpx.get(str(record["viewerUrl"]))
    assert link.status_code == 401
    assert "<form" in link.text
    qido = f"{launched.front}/dicom-web/studies"
    assert httpx.get(qido).status_code == 401
    answer = httpx.get(qido, headers=bearer)
    assert answer.status_code == 200
    assert study.study_instance_uid in answer.text

    # Ctrl-C, which a terminal sends to the whole process group: the sidecar, nginx, Orthanc
    # and the worklist writer all stop, and nothing prints a traceback.
    os.killpg(launched.process.pid, signal.SIGINT)
    assert launched.process.wait(60) == 0, launched.log.read_text()
    for name, port in launched.ports.items():
        assert not listening(port), f"{name} {port} still listening after Ctrl-C"
    assert "Traceback" not in launched.log.read_text()

"""A real stack on loopback for integration tests and the benchmark: Orthanc (Debian package,
with the plugin and DICOMweb) on ephemeral ports, and the sidecar served by uvicorn in a thread.

Either side can be stopped and started again on the same ports and storage, to test outages.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from sidecar.core.settings import Settings
from sidecar.events.serving import Server
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess
from sidecar.main import create_app

T = TypeVar("T")

STACK_ADMIN_PASSWORD = "stack-admin-password"
STACK_PLUGIN_TOKEN = "stack-plugin-token-" + "z" * 30
STACK_JWT_SECRET = "stack-jwt-secret-" + "w" * 40


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_handed_out: set[int] = set()
_random = random.Random()


def free_port() -> int:
    """A loopback TCP port that nothing listens on, for a server a test starts later.

    Chosen below the kernel's ephemeral range: a port the kernel handed out for a probe's
    bind(0) may be given next to an outgoing connection (a database client, say) before the
    server binds it, which failed a CI run with EADDRINUSE. Ports below the range are never
    picked by the kernel, so the only contenders are our own, and those are not repeated.
    """
    low = 10000
    high = _ephemeral_range()[0] - 1
    for _ in range(1000):
        port = _random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {low} and {high}")


def wait_for(
    condition: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Polls until `condition` returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}: {last!r}")


class LiveSidecar:
    """The sidecar app served over a real socket, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._server = Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=settings.sidecar_port,
                access_log=False,
                log_config=None,
                lifespan="on",
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="live-sidecar", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.sidecar_port}"

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=timeout, what="sidecar start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(20)


class Stack:
    def __init__(
        self,
        work_dir: Path,
        database_url: str,
        *,
        stable_age: int = 1,
        reconcile_interval: float = 0.5,
        with_plugin: bool = True,
        modalities: tuple[Any, ...] = (),
    ) -> None:
        self.work_dir = work_dir
        self.sidecar_port = free_port()
        self.mllp_port = free_port()
        self.mpps_port = free_port()
        worklist_dir = work_dir / "worklist"
        self.layout = OrthancLayout(
            work_dir=work_dir / "orthanc",
            http_port=free_port(),
            dicom_port=free_port(),
            aet="ORTHANC",
            stable_age=stable_age,
            sidecar_url=f"http://127.0.0.1:{self.sidecar_port}",
            plugin_token=STACK_PLUGIN_TOKEN,
            with_plugin=with_plugin,
            modalities=modalities,
            worklist_dir=worklist_dir if with_plugin else None,
        )
        self.settings = Settings(
            environment="development",
            data_dir=work_dir / "var",
            database_url=database_url,
            jwt_secret=STACK_JWT_SECRET,
            admin_password=STACK_ADMIN_PASSWORD,
            sidecar_plugin_token=STACK_PLUGIN_TOKEN,
            sidecar_port=self.sidecar_port,
            orthanc_url=f"http://127.0.0.1:{self.layout.http_port}",
            orthanc_timeout=5.0,
            reconcile_interval=reconcile_interval,
            stable_age=stable_age,  # as its Orthanc: how long a study may still be changing
            mllp_port=self.mllp_port,
            mpps_port=self.mpps_port,
            worklist_dir=worklist_dir,
            timezone="Europe/Brussels",
        )
        self.orthanc = OrthancProcess(self.layout)
        self.sidecar: LiveSidecar | None = None
        self._token: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start_orthanc(self, **changes: Any) -> None:
        if changes:
            import dataclasses

            self.layout = dataclasses.replace(self.layout, **changes)
            self.orthanc = OrthancProcess(self.layout)
        self.orthanc.start()

    def start_sidecar(self) -> None:
        self.sidecar = LiveSidecar(self.settings)
        self.sidecar.start()

    def stop_sidecar(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop()
            self.sidecar = None

    def close(self) -> None:
        self.stop_sidecar()
        self.orthanc.stop()

    # -- talking to the parts ------------------------------------------------------------------

    @property
    def dicom_address(self) -> tuple[str, int, str]:
        return ("127.0.0.1", self.layout.dicom_port, self.layout.aet)

    def orthanc_get(self, path: str) -> Any:
        response = httpx.get(f"{self.orthanc.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def login(self, username: str = "admin", password: str = STACK_ADMIN_PASSWORD) -> str:
        """An access token of that account."""
        assert self.sidecar is not None, "the sidecar is not running"
        login = httpx.post(
            f"{self.sidecar.url}/api/auth/login",
            json={"username": username, "password": password},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        token: str = login.json()["accessToken"]
        return token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self.sidecar is not None, "the sidecar is not running"
        if self._token is None:
            self._token = self.login()
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.sidecar.url}{path}", headers=headers, timeout=10, **kwargs
        )

    def studies(self, **params: Any) -> list[dict[str, Any]]:
        response = self.api("GET", "/api/studies", params={"limit": 1000, **params})
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def study_by_uid(self, study_instance_uid: str) -> dict[str, Any] | None:
        matches = [s for s in self.studies() if s["studyInstanceUID"] == study_instance_uid]
        assert len(matches) <= 1, f"duplicate study rows: {matches}"
        return matches[0] if matches else None

    def wait_for_study(
        self, study_instance_uid: str, *, instances: int, timeout: float = 30.0
    ) -> dict[str, Any]:
        def registered() -> dict[str, Any] | None:
            study = self.study_by_uid(study_instance_uid)
            return study if study and study["instanceCount"] == instances else None

        return wait_for(registered, timeout=timeout, what=f"study with {instances} instances")

    def wait_until_synced(self, timeout: float = 30.0) -> dict[str, Any]:
        """Until the sidecar has read Orthanc's whole change log and its queue is empty."""

        def synced() -> dict[str, Any] | None:
            assert self.sidecar is not None
            last = self.orthanc_get("/changes?limit=0")["Last"]
            health = httpx.get(f"{self.sidecar.url}/health", timeout=10).json()["sync"]
            done = health["changesCursor"] >= last and health["pendingStudies"] == 0
            return health if done and health["lastPollAt"] else None

        return wait_for(synced, timeout=timeout, what="sidecar caught up with /changes")

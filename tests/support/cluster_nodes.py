"""Nodes of one cluster on this machine, each what `make run` starts (`python -m sidecar.launcher`:
Orthanc with the plugin, the sidecar with its MLLP listener and MPPS SCP, the nginx viewer front),
for the cluster tests.

A node runs in a process group of its own, on its own ports and DATA_DIR; the nodes of a cluster
share the sidecar's database (DATABASE_URL), Orthanc's index (ORTHANC_INDEX_URL) and Orthanc's
storage (ORTHANC_STORAGE_DIR), and the secrets. `kill()` is a crash: SIGKILL of the launcher
alone, whose Orthanc, nginx and worklist writer then end on their own
(sidecar.launcher.processes), as they would on a real machine; `restart()` starts it again on the
same DATA_DIR and ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.launcher import processes as child_process
from sidecar.launcher.processes import ProcessInfo

from stack import STACK_ADMIN_PASSWORD, STACK_JWT_SECRET, STACK_PLUGIN_TOKEN, free_port, wait_for
from testapp import admin_execute, fresh_database, with_database

REPO = Path(__file__).resolve().parents[2]

# The launcher's ports, each a variable of its own (README, "Configuration").
PORTS = (
    "SIDECAR_PORT",
    "ORTHANC_HTTP_PORT",
    "ORTHANC_DICOM_PORT",
    "MLLP_PORT",
    "MPPS_PORT",
    "VIEWER_PORT",
)
# Variables of the developer's shell that would make a node something else than the test says.
_NOT_INHERITED = (
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "ORTHANC_INDEX_URL",
    "ORTHANC_INDEX_URL_FILE",
    "ORTHANC_STORAGE_DIR",
    "JWT_SECRET_FILE",
    "ADMIN_PASSWORD_FILE",
    "SIDECAR_PLUGIN_TOKEN_FILE",
    "WORKLIST_DIR",
    "DICOM_MODALITIES",
    "ORTHANC_USERNAME",
    "ORTHANC_PASSWORD",
)
START_TIMEOUT = 120.0  # two cores, shared: Orthanc, nginx and the sidecar start one after another
STOP_TIMEOUT = 60.0


class NodeStartError(AssertionError):
    pass


class ClusterNode:
    """One node: `python -m sidecar.launcher` with its environment, its log, its process tree."""

    def __init__(
        self, name: str, work_dir: Path, shared: Mapping[str, str], *, ports: Mapping[str, int]
    ) -> None:
        """`shared` is what every node of the cluster gets alike (databases, storage, secrets,
        the HIS and the notification service); `ports` the node's own."""
        self.name = name
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(ports)
        base = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
        self.env: dict[str, str] = {
            **base,
            "ENVIRONMENT": "development",
            "DATA_DIR": str(self.data_dir),
            "NODE_NAME": name,
            "SIDECAR_HOST": "127.0.0.1",
            "VIEWER_FRONT": "nginx",
            "PUBLIC_VIEWER_URL": "",
            "WORKLIST_ENABLED": "true",
            "MLLP_ENABLED": "true",
            "MPPS_ENABLED": "true",
            "LOG_LEVEL": "INFO",
            **{key: str(port) for key, port in self.ports.items()},
            **shared,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._tree: list[ProcessInfo] = []
        self._starts = 0
        self._token: str | None = None

    @classmethod
    def on_free_ports(cls, name: str, work_dir: Path, shared: Mapping[str, str]) -> ClusterNode:
        return cls(name, work_dir, shared, ports={key: free_port() for key in PORTS})

    # --- where it is --------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "var"

    @property
    def log_path(self) -> Path:
        """The launcher's output of its latest start (the sidecar's log lines among it)."""
        return self.work_dir / f"launcher-{max(self._starts, 1)}.log"

    @property
    def orthanc_log_path(self) -> Path:
        return self.data_dir / "orthanc" / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['SIDECAR_PORT']}"

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['VIEWER_PORT']}"

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ORTHANC_HTTP_PORT']}"

    @property
    def dicom_address(self) -> tuple[str, int, str]:
        return (
            "127.0.0.1",
            self.ports["ORTHANC_DICOM_PORT"],
            self.env.get("ORTHANC_AET", "ORTHANC"),
        )

    @property
    def mllp_port(self) -> int:
        return self.ports["MLLP_PORT"]

    # --- up and down --------------------------------------------------------------------------

    def start(self) -> ClusterNode:
        """Starts the launcher; returns at once (`wait_ready` waits)."""
        assert not self.running(), f"node {self.name} is already running"
        self._starts += 1
        self._token = None
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar.launcher"],
                cwd=REPO,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a process group of its own, as in a terminal
            )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ClusterNode:
        """Until its /health answers 200 and its front its login page; fails with the log's tail
        if the launcher exits first or `timeout` seconds pass."""
        assert self.process is not None

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise NodeStartError(
                    f"node {self.name} exited ({self.process.returncode}) during start-up:\n"
                    + self.log_tail()
                )
            try:
                return (
                    httpx.get(f"{self.url}/health", timeout=2).status_code == 200
                    and httpx.get(f"{self.front}/login", timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                return False

        try:
            wait_for(ready, timeout=timeout, interval=0.2, what=f"node {self.name} ready")
        except AssertionError as failure:
            if isinstance(failure, NodeStartError):
                raise
            raise NodeStartError(f"{failure}\n{self.log_tail()}") from None
        self._tree = self._descendants()
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL of the launcher alone, as a crash; returns once everything it had started
        (Orthanc, nginx, the worklist writer) has ended too."""
        assert self.process is not None and self.running(), f"node {self.name} is not running"
        tree = self._descendants() or self._tree
        self.process.kill()
        self.process.wait(10)
        if not child_process.wait_ended(tree, STOP_TIMEOUT):
            left = [p.argv for p in tree if child_process.running(p)]
            raise AssertionError(f"node {self.name}: outlived its killed launcher: {left}")

    def restart(self, timeout: float = START_TIMEOUT) -> ClusterNode:
        if self.running():
            self.stop()
        return self.start().wait_ready(timeout)

    def stop(self) -> None:
        """Ctrl-C in its terminal (SIGINT to its process group); whatever is left after
        STOP_TIMEOUT is killed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        self.kill_group()

    def kill_group(self) -> None:
        """Kills whatever is left of its process group (the end of a test run)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        tree = [p for p in self._tree if child_process.running(p)]
        for process in tree:  # children that left the group: none should, but never leave them
            child_process.send_signal(process, signal.SIGKILL)
        child_process.wait_ended(tree, 10)

    def _descendants(self) -> list[ProcessInfo]:
        if self.process is None:
            return []
        table = list(child_process.processes())
        root = next((p for p in table if p.pid == self.process.pid), None)
        return child_process.descendants(root, table) if root is not None else []

    # --- what it says -------------------------------------------------------------------------

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        parts = []
        for label, path in (("launcher", self.log_path), ("Orthanc", self.orthanc_log_path)):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            parts.append(f"--- node {self.name}, {label} ({path}):\n" + "\n".join(tail))
        return "\n".join(parts)

    def health(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/health", timeout=10)
        answer.raise_for_status()
        health: dict[str, Any] = answer.json()
        return health

    # --- its API, as the admin account -------------------------------------------------------

    def login(self, username: str = "admin", password: str = STACK_ADMIN_PASSWORD) -> str:
        answer = httpx.post(
            f"{self.url}/api/auth/login",
            json={"username": username, "password": password},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["accessToken"]
        return token

    def headers_of(self, username: str, password: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.login(username, password)}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._token is None:
            self._token = self.login()
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=15, **kwargs)

    def studies(self, **params: Any) -> list[dict[str, Any]]:
        answer = self.api("GET", "/api/studies", params={"limit": 1000, **params})
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


def cluster_environment(
    *,
    database_url: str,
    orthanc_index_url: str,
    storage_dir: Path,
    lease_seconds: float,
    his_port: int,
    notification_url: str,
    **extra: str,
) -> dict[str, str]:
    """What every node of one cluster gets alike: the shared databases and storage, the same
    secrets and admin password, StableAge 1 s, a quick /changes poll, the HIS and the
    notification service on loopback; `extra` adds variables (README names)."""
    return {
        "DATABASE_URL": database_url,
        "ORTHANC_INDEX_URL": orthanc_index_url,
        "ORTHANC_STORAGE_DIR": str(storage_dir),
        "CLUSTER_LEASE_SECONDS": str(lease_seconds),
        "JWT_SECRET": STACK_JWT_SECRET,
        "SIDECAR_PLUGIN_TOKEN": STACK_PLUGIN_TOKEN,
        "ADMIN_PASSWORD": STACK_ADMIN_PASSWORD,
        "STABLE_AGE": "1",
        "RECONCILE_INTERVAL": "0.5",
        "HIS_MLLP_HOST": "127.0.0.1",
        "HIS_MLLP_PORT": str(his_port),
        "NOTIFICATION_SERVICE_URL": notification_url,
        "TIMEZONE": "Europe/Brussels",
        **extra,
    }


@contextlib.contextmanager
def one_node(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
    *,
    label: str,
    **extra: str,
) -> Iterator[ClusterNode]:
    """One node (Orthanc with the plugin, the sidecar, nginx: `make run`'s launcher) on a
    database of its own of the run's kind, started and ready; killed with its process group and
    the database dropped after. The stack's secrets, StableAge 1 s, a quick /changes poll;
    `extra`: more variables (README names). Its DATABASE_URL is in `node.env`."""
    work = tmp_path_factory.mktemp(label)
    kind = request.config.getoption("--database")
    with fresh_database(
        kind, request.config.getoption("--postgres-url"), database_template, work
    ) as url:
        environment = {
            "DATABASE_URL": url,
            "JWT_SECRET": STACK_JWT_SECRET,
            "SIDECAR_PLUGIN_TOKEN": STACK_PLUGIN_TOKEN,
            "ADMIN_PASSWORD": STACK_ADMIN_PASSWORD,
            "STABLE_AGE": "1",
            "RECONCILE_INTERVAL": "0.5",
            "TIMEZONE": "Europe/Brussels",
            **extra,
        }
        node = ClusterNode.on_free_ports(label, work / "node", environment)
        try:
            yield node.start().wait_ready()
        finally:
            node.kill_group()


@contextlib.contextmanager
def two_nodes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
    *,
    label: str,
    lease_seconds: float,
    his_port: int,
    notification_url: str,
    **extra: str,
) -> Iterator[tuple[ClusterNode, ClusterNode]]:
    """Node A started, then node B (one after the other: both would create Orthanc's index
    schema at once), on a sidecar database and an Orthanc index of their own, dropped after;
    skips unless the run is on PostgreSQL. `extra`: more variables for both (README names)."""
    kind = request.config.getoption("--database")
    if kind != "postgresql":
        pytest.skip("a cluster shares PostgreSQL: run with --database postgresql")
    server = request.config.getoption("--postgres-url")
    work = tmp_path_factory.mktemp(label)
    index = f"radtest_orthanc_{uuid.uuid4().hex[:12]}"
    admin_execute(server, f'CREATE DATABASE "{index}"')
    started: list[ClusterNode] = []
    try:
        with fresh_database(kind, server, database_template, work) as database_url:
            shared = cluster_environment(
                database_url=database_url,
                # libpq's form: postgresql://, no driver.
                orthanc_index_url=with_database(server, index).replace(
                    "postgresql+psycopg://", "postgresql://", 1
                ),
                storage_dir=work / "storage",
                lease_seconds=lease_seconds,
                his_port=his_port,
                notification_url=notification_url,
                **extra,
            )
            for name in ("node-a", "node-b"):
                node = ClusterNode.on_free_ports(name, work / name, shared)
                started.append(node)
                node.start().wait_ready()
            yield started[0], started[1]
            for node in started:
                node.stop()
    finally:
        for node in started:
            node.kill_group()
        admin_execute(server, f'DROP DATABASE IF EXISTS "{index}" WITH (FORCE)')

"""`make run`'s launcher (sidecar.launcher.run): which viewer front it starts, and the whole service
started and stopped as `make run` does, on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.core.settings import Settings
from sidecar.launcher import processes as child_process
from sidecar.launcher import run as launcher
from sidecar.launcher.nginx import (
    COMPOSE_UPSTREAMS,
    NGINX_CONF,
    FrontLayout,
    FrontStartError,
    NginxFront,
    is_front_command,
    render_main,
    render_server,
)
from sidecar.launcher.orthanc import OrthancProcess, is_orthanc_command
from sidecar.launcher.processes import ProcessInfo
from sidecar.viewer.bundle import DEFAULT_DIST

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
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
    # One node here: the compose file's other nodes are left out of every upstream.
    assert "server orthanc-2:8042;" in NGINX_CONF.read_text()
    assert re.findall(r"(?m)^\s*server (\S+);", server) == [
        "127.0.0.1:8042",
        "127.0.0.1:3006",
        "127.0.0.1:3006",
    ]
    # Logs, the session cache (Orthanc's credential) and temporary files stay in the front's
    # own folder, never in the system's.
    main = render_main(layout)
    assert "/var/" not in server.replace(str(tmp_path), "")
    assert "/var/" not in main.replace(str(tmp_path), "")
    assert str(layout.work_dir / "viewer-sessions") in server
    assert "daemon off;" in main
    assert layout.url == "http://127.0.0.1:8100"


def test_the_front_s_paths_are_quoted_in_its_configuration(tmp_path: Path) -> None:
    work = tmp_path / 'my "front"; \\x'
    layout = FrontLayout(
        work_dir=work, host="127.0.0.1", port=8100, orthanc="a:1", sidecar="b:2", viewer="b:2"
    )
    quoted = '"' + str(work).replace("\\", "\\\\").replace('"', '\\"')
    assert f'pid {quoted}/nginx.pid";' in render_main(layout)
    assert f'include {quoted}/front.conf";' in render_main(layout)
    assert f'access_log {quoted}/access.log" viewer_front;' in render_server(layout)
    assert str(work) not in render_main(layout) + render_server(layout)
    # nginx reads "$" in a log's path as a variable, quoted or not.
    dollar = dataclasses.replace(layout, work_dir=tmp_path / "$front")
    with pytest.raises(FrontStartError, match="nginx cannot take"):
        render_server(dollar)


# --- the whole service, as `make run` starts it ------------------------------------------------

SERVICE_PORTS = (
    "SIDECAR_PORT",
    "ORTHANC_HTTP_PORT",
    "ORTHANC_DICOM_PORT",
    "MLLP_PORT",
    "MPPS_PORT",
    "VIEWER_PORT",
)


class Launched:
    """One `make run`: the launcher in a process group of its own, as in a terminal."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar.launcher"],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(self.env[name]) for name in SERVICE_PORTS}

    @property
    def sidecar(self) -> str:
        return f"http://127.0.0.1:{self.ports['SIDECAR_PORT']}"

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.ports['VIEWER_PORT']}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["DATA_DIR"])

    def output(self) -> str:
        return self.log.read_text()

    def wait_healthy(self, timeout: float = 90) -> None:
        def healthy() -> bool:
            assert self.process.poll() is None, f"the launcher exited:\n{self.output()}"
            try:
                return httpx.get(f"{self.sidecar}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=timeout, what="the launched service's /health")

    def kill_group(self) -> None:
        """Kills the launcher and whatever of its process group is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def service_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """`make run`'s environment: free ports, a DATA_DIR, the nginx front and the worklist."""
    if not (DEFAULT_DIST / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run `make viewer`")
    return {
        **os.environ,
        **{name: str(free_port()) for name in SERVICE_PORTS},
        "DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url,
        "ADMIN_PASSWORD": LAUNCHER_ADMIN_PASSWORD,
        "STABLE_AGE": "1",
        "PUBLIC_VIEWER_URL": "",
        "VIEWER_FRONT": "auto",
        "WORKLIST_ENABLED": "true",
    }


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Launched]]:
    """Starts launchers; kills what is left of each at the end."""
    started: list[Launched] = []

    def start(env: dict[str, str]) -> Launched:
        started.append(Launched(env, tmp_path / f"launcher-{len(started) + 1}.log"))
        return started[-1]

    yield start
    for running in started:
        running.kill_group()


@pytest.fixture
def launched(launch: Callable[[dict[str, str]], Launched], service_env: dict[str, str]) -> Launched:
    running = launch(service_env)
    running.wait_healthy()
    return running


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a launcher started with `env` runs on (what names its files and ports)."""
    return Settings(
        data_dir=Path(env["DATA_DIR"]),
        sidecar_port=int(env["SIDECAR_PORT"]),
        orthanc_http_port=int(env["ORTHANC_HTTP_PORT"]),
        orthanc_dicom_port=int(env["ORTHANC_DICOM_PORT"]),
        viewer_port=int(env["VIEWER_PORT"]),
    )


def admin_headers(launched: Launched) -> dict[str, str]:
    token = httpx.post(
        f"{launched.sidecar}/api/auth/login",
        json={"username": "admin", "password": LAUNCHER_ADMIN_PASSWORD},
    ).json()["accessToken"]
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.orthanc
def test_make_run_serves_the_viewer_through_nginx_and_stops_everything_on_ctrl_c(
    launched: Launched, tmp_path: Path
) -> None:
    # A study stored over DICOM carries a viewer link on the nginx front.
    study = make_study(tmp_path / "dicom", series_count=1, instances_per_series=1)
    dicom_port = launched.ports["ORTHANC_DICOM_PORT"]
    assert storescu_dcmtk(study.files, "127.0.0.1", dicom_port, "ORTHANC").all_success
    bearer = admin_headers(launched)

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


# --- killed outright: nothing it started outlives it -------------------------------------------


def process_tree(root: int) -> list[ProcessInfo]:
    """Every descendant of the process `root`, from /proc."""
    table = list(child_process.processes())
    return child_process.descendants(next(p for p in table if p.pid == root), table)


def started_by_the_launcher(launched: Launched) -> dict[str, list[ProcessInfo]]:
    """The launcher's Orthanc, nginx (master and workers) and worklist writer (the child of the
    multiprocessing forkserver), once all are there."""

    def found() -> dict[str, list[ProcessInfo]] | None:
        tree = process_tree(launched.process.pid)
        forkservers = {p.pid for p in tree if "multiprocessing.forkserver" in " ".join(p.argv)}
        kinds = {
            "Orthanc": [p for p in tree if Path(p.argv[0]).name == "Orthanc"],
            "nginx": [p for p in tree if p.argv[0].startswith("nginx")],
            "worklist writer": [p for p in tree if p.parent in forkservers],
        }
        return kinds if all(kinds.values()) else None

    return wait_for(found, timeout=30, what="Orthanc, nginx and the worklist writer")


def survivors(processes: list[ProcessInfo]) -> list[tuple[str, ...]]:
    return [p.argv for p in processes if child_process.running(p)]


@pytest.mark.orthanc
def test_kill_9_of_the_launcher_ends_what_it_started_and_make_run_starts_again(
    launched: Launched, launch: Callable[[dict[str, str]], Launched]
) -> None:
    started = started_by_the_launcher(launched)
    everything = process_tree(launched.process.pid)

    launched.process.kill()  # the launcher alone, not its process group
    launched.process.wait(10)

    for kind, processes in started.items():
        assert child_process.wait_ended(processes, 60), f"{kind} outlived the launcher"
    # The forkserver and multiprocessing's resource tracker too: nothing is left.
    assert child_process.wait_ended(everything, 30), survivors(everything)
    for name, port in launched.ports.items():
        assert not listening(port), f"{name} {port} still listening"

    again = launch(launched.env)  # the same DATA_DIR and ports
    again.wait_healthy()
    assert httpx.get(f"{again.front}/login").status_code == 200
    assert "left running" not in again.output()  # nothing was left for it to stop


# --- one launcher per DATA_DIR; leftovers of a dead one are stopped ----------------------------


# Which processes run on a DATA_DIR does not depend on the database: SQLite pass only.
@pytest.mark.one_database
@pytest.mark.orthanc
def test_a_second_launcher_on_the_same_data_dir_exits_and_leaves_the_first_alone(
    launched: Launched, launch: Callable[[dict[str, str]], Launched]
) -> None:
    # Other ports: only the DATA_DIR is shared.
    second = launch({**launched.env, **{name: str(free_port()) for name in SERVICE_PORTS}})
    assert second.process.wait(60) != 0
    assert (
        f"another launcher (pid {launched.process.pid}) is running on DATA_DIR "
        f"{launched.data_dir}" in second.output()
    )
    assert "Traceback" not in second.output()
    assert launched.process.poll() is None
    assert httpx.get(f"{launched.sidecar}/health").status_code == 200
    assert httpx.get(f"{launched.front}/login").status_code == 200


# Which processes run on a DATA_DIR does not depend on the database: SQLite pass only.
@pytest.mark.one_database
@pytest.mark.orthanc
def test_orthanc_and_nginx_left_by_a_dead_launcher_are_stopped_at_the_next_start(
    service_env: dict[str, str], launch: Callable[[dict[str, str]], Launched]
) -> None:
    # What a launcher killed with -9 left behind before its children died with it: an Orthanc
    # on DATA_DIR's storage and the nginx front, holding their ports.
    settings = settings_of(service_env)
    orthanc = OrthancProcess(launcher.orthanc_layout(settings))
    front = launcher.viewer_front(settings)
    assert front is not None
    orthanc.start()
    try:
        front.start()
        left = {
            "Orthanc": [
                p.pid
                for p in child_process.processes()
                if is_orthanc_command(p.argv, orthanc.config_path)
            ],
            "the viewer front (nginx)": [int(front.pid_path.read_text())],
        }

        running = launch(service_env)
        running.wait_healthy()

        assert not orthanc.running()
        assert not front.running()
        for what, pids in left.items():
            assert len(pids) == 1
            assert f"stopping {what} (pid {pids[0]})" in running.output()
        assert httpx.get(f"{running.front}/login").status_code == 200
    finally:
        front.stop()
        orthanc.stop()


def python_sleeping(*arguments: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *arguments])


def test_only_processes_proven_to_be_the_data_dir_s_own_are_stopped(tmp_path: Path) -> None:
    settings = launcher_settings(tmp_path)
    config = OrthancProcess(launcher.orthanc_layout(settings)).config_path
    front_dir = launcher.front_dir(settings)
    # A stale pid file naming a process that is not nginx, and programs whose command lines
    # name the DATA_DIR's Orthanc configuration or front folder without being Orthanc or nginx.
    bystanders = [
        python_sleeping(),
        python_sleeping(str(config)),
        python_sleeping("-p", str(front_dir)),
    ]
    front_dir.mkdir(parents=True)
    (front_dir / "nginx.pid").write_text(f"{bystanders[0].pid}\n")
    try:
        assert launcher.stop_leftovers(settings) == []
        assert [process.poll() for process in bystanders] == [None, None, None]
    finally:
        for process in bystanders:
            process.kill()
            process.wait(10)


def test_leftovers_are_found_in_a_data_dir_with_spaces(tmp_path: Path) -> None:
    # The command lines are argument vectors (/proc/<pid>/cmdline), not strings to split on
    # spaces: nginx's master and an Orthanc (Python under that name, running a script at the
    # configuration's path) left in "my data/var" are found and stopped.
    settings = Settings(data_dir=tmp_path / "my data" / "var")
    config = OrthancProcess(launcher.orthanc_layout(settings)).config_path
    config.parent.mkdir(parents=True)
    config.write_text("import time\ntime.sleep(600)\n")
    binary = tmp_path / "bin" / "Orthanc"
    binary.parent.mkdir()
    binary.symlink_to(sys.executable)
    orthanc = subprocess.Popen([str(binary), str(config)])
    front = NginxFront(
        FrontLayout(
            work_dir=launcher.front_dir(settings),
            host="127.0.0.1",
            port=free_port(),
            orthanc=f"127.0.0.1:{free_port()}",
            sidecar=f"127.0.0.1:{free_port()}",
            viewer=f"127.0.0.1:{free_port()}",
        )
    )
    try:
        wait_for(
            lambda: is_orthanc_command(info(orthanc.pid).argv, config),
            timeout=10,
            what="the stand-in Orthanc",
        )
        front.start()
        master = int(front.pid_path.read_text())
        assert " " in str(front.layout.work_dir)

        assert launcher.stop_leftovers(settings) == [orthanc.pid, master]
        assert orthanc.wait(10) == -signal.SIGTERM
        wait_for(lambda: not front.running(), timeout=10, what="nginx stopped")
    finally:
        front.stop()
        orthanc.kill()
        orthanc.wait(10)


def info(pid: int) -> ProcessInfo:
    found = child_process.process_info(pid)
    assert found is not None
    return found


@pytest.mark.parametrize("folder", ["var", "my data/var"])
def test_orthanc_and_nginx_are_recognised_by_their_command_lines(
    tmp_path: Path, folder: str
) -> None:
    config = tmp_path / folder / "orthanc" / "orthanc.json"
    assert is_orthanc_command(["/usr/sbin/Orthanc", str(config)], config)
    assert not is_orthanc_command(["/usr/sbin/Orthanc", str(config) + ".old"], config)
    assert not is_orthanc_command(["/usr/sbin/Orthanc", "--verbose", str(config)], config)
    if " " in folder:  # the words of the path are no argument vector of Orthanc's
        assert not is_orthanc_command(["/usr/sbin/Orthanc", *str(config).split(" ")], config)
    assert not is_orthanc_command(["/usr/bin/less", str(config)], config)
    assert not is_orthanc_command([], config)

    front = tmp_path / folder / "front"

    def started(work: Path, binary: str = "/usr/sbin/nginx") -> list[str]:
        return [binary, "-p", str(work), "-e", f"{work}/error.log", "-c", f"{work}/nginx.conf"]

    def titled(argv: list[str]) -> list[str]:
        # Once running, the master's command line is one string: nginx rewrites it.
        return [f"nginx: master process {' '.join(argv)}"]

    assert is_front_command(started(front), front)
    assert is_front_command(started(front, "/opt/my nginx/sbin/nginx"), front)
    assert is_front_command(titled(started(front)), front)
    assert is_front_command(titled(started(front, "/opt/my nginx/sbin/nginx")), front)
    assert not is_front_command(["nginx: worker process"], front)
    # Other folders: one that starts with this one's name, up to a space or not.
    for other in (Path(f"{front}-other"), Path(f"{front} other"), tmp_path / "my" / "front"):
        assert not is_front_command(started(other), front)
        assert not is_front_command(titled(started(other)), front)
    assert not is_front_command(["/usr/sbin/nginx", "-p", str(front)], front)
    assert not is_front_command(["/usr/bin/python3", *started(front)[1:]], front)
    assert not is_front_command(titled(["/usr/bin/python3", *started(front)[1:]]), front)
    assert not is_front_command([" ".join(started(front))], front)
    assert not is_front_command([], front)


# --- files for this user only -------------------------------------------------------------------


def modes_under(root: Path) -> dict[Path, int]:
    return {path: stat.S_IMODE(path.lstat().st_mode) for path in [root, *root.rglob("*")]}


@pytest.mark.orthanc
def test_the_service_s_files_are_this_user_s_only(
    launched: Launched, tmp_path: Path, database_url: str
) -> None:
    # An image stored, and a scheduled order on the worklist.
    study = make_study(tmp_path / "dicom", series_count=1, instances_per_series=1)
    dicom_port = launched.ports["ORTHANC_DICOM_PORT"]
    assert storescu_dcmtk(study.files, "127.0.0.1", dicom_port, "ORTHANC").all_success
    order = httpx.post(
        f"{launched.sidecar}/api/imaging-orders",
        headers=admin_headers(launched),
        json={
            "patientId": "MRN-1001",
            "issuerOfPatientId": "HOSP",
            "patientName": "DOE^JANE",
            "patientBirthDate": "1970-02-03",
            "patientSex": "F",
            "modality": "CT",
            "procedureCode": "CTCHEST",
            "procedureDescription": "CT chest with contrast",
            "priority": "ROUTINE",
            "scheduledAt": "2030-11-24T09:30:00+01:00",
        },
    )
    assert order.status_code == 201, order.text
    worklist_item = launched.data_dir / "worklist" / f"{order.json()['id']}.wl"
    wait_for(worklist_item.exists, timeout=30, what="the order's worklist file")

    modes = modes_under(launched.data_dir)
    if database_url.startswith("sqlite"):
        database = Path(database_url.removeprefix("sqlite:///"))
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            modes[path] = stat.S_IMODE(path.stat().st_mode)
    storage = launched.data_dir / "orthanc" / "storage"
    stored = [path for path in storage.rglob("*") if path.is_file() and path.name != "index"]
    assert stored, "no image in Orthanc's storage"
    assert worklist_item in modes
    assert launched.data_dir / "launcher.lock" in modes
    wrong = {
        str(path): oct(mode)
        for path, mode in modes.items()
        if mode != (0o700 if path.is_dir() else 0o600)
    }
    assert wrong == {}

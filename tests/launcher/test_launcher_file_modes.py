"""Files for this user only: what the service writes (the SQLite database, the worklist, Orthanc's
folder) is created 0600, its folders 0700, whatever the umask it was started with; and both entry
points start with umask 077, which Orthanc and nginx inherit. The service `make run` starts is
checked whole in test_launcher.py."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sidecar.core.database import make_engine
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess
from sidecar.worklist.directory import WorklistDirectory
from sidecar.worklist.items import WorklistItem

from stack import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def make_item(key: str) -> WorklistItem:
    return WorklistItem(
        key=key,
        accession_number=f"ACC{key}",
        requested_procedure_id=f"RP{key}",
        requested_procedure_description="CT thorax",
        study_instance_uid=f"1.2.826.0.1.3680043.10.1.{key}",
        patient_id=f"PAT{key}",
        issuer_of_patient_id="HOSPITAL",
        patient_name="DOE^JANE",
        patient_birth_date=date(1961, 7, 4),
        patient_sex="F",
        referring_physician="HOUSE^GREGORY",
        modality="CT",
        scheduled_station_aet="CT01",
        scheduled_start=datetime(2030, 3, 30, 9, 30, tzinfo=UTC),
        step_description="Thorax",
        step_id=f"SPS{key}",
        priority="ROUTINE",
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): mode(path) for path in [root, *root.rglob("*")]}


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Anything created without an explicit mode would be world-writable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_worklist_files_and_their_folder_are_private(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path / "worklist", UTC)
    directory.replace_all([make_item("1"), make_item("2")])
    directory.update(publish=[make_item("3")], withdraw=["2"])

    modes = modes_under(tmp_path / "worklist")
    assert {"1.wl", "3.wl", ".lock", "generation"} <= modes.keys()
    assert any(name.startswith("journal-") for name in modes)
    assert modes == {name: 0o700 if name == "." else 0o600 for name in modes}


@pytest.mark.usefixtures("permissive_umask")
def test_the_sqlite_database_and_its_folder_are_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "sidecar.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            connection.execute(sa.text("INSERT INTO t VALUES (1)"))
        # SQLite gives its write-ahead log and shared-memory index the database file's mode.
        assert modes_under(database.parent) == {
            ".": 0o700,
            "sidecar.db": 0o600,
            "sidecar.db-wal": 0o600,
            "sidecar.db-shm": 0o600,
        }
    finally:
        engine.dispose()


def test_an_in_memory_database_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a file named after the URL would appear
    for url in ("sqlite://", "sqlite:///:memory:"):
        make_engine(url).dispose()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("permissive_umask")
def test_orthanc_s_folder_is_private_even_when_it_was_not(tmp_path: Path) -> None:
    work = tmp_path / "orthanc"
    work.mkdir(mode=0o755)  # left by an earlier version
    orthanc = OrthancProcess(
        OrthancLayout(
            work_dir=work, http_port=8042, dicom_port=4242, worklist_dir=tmp_path / "worklist"
        )
    )
    orthanc.write_configuration()
    assert mode(work) == 0o700
    assert mode(orthanc.layout.storage_dir) == 0o700
    assert mode(orthanc.config_path) == 0o600
    assert mode(tmp_path / "worklist") == 0o700


def umask_of(pid: int) -> int:
    """The process's umask, as Linux shows it in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/<pid>/status")


def test_the_sidecar_alone_runs_with_umask_077(tmp_path: Path) -> None:
    # `python -m sidecar`, as in the container, started from a shell with umask 022.
    port = free_port()
    data = tmp_path / "var"
    env = {
        **os.environ,
        "DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite:///{data / 'sidecar.db'}",
        "SIDECAR_PORT": str(port),
        "ORTHANC_URL": f"http://127.0.0.1:{free_port()}",
        "MLLP_ENABLED": "false",
        "RECONCILE_ENABLED": "false",
        "WORKLIST_ENABLED": "true",
    }
    previous = os.umask(0o022)
    try:
        process = subprocess.Popen([sys.executable, "-m", "sidecar"], cwd=REPO, env=env)
    finally:
        os.umask(previous)
    try:

        def answers() -> bool:
            assert process.poll() is None, "the sidecar exited"
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                return True
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=60, what="the sidecar's /health")
        assert umask_of(process.pid) == 0o077
        modes = modes_under(data)
        assert {"sidecar.db", "worklist", "worklist/generation"} <= modes.keys()
        assert modes == {name: 0o700 if (data / name).is_dir() else 0o600 for name in modes}, modes
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)

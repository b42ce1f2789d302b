"""The local Orthanc of a cluster node as `make run` configures it: its files in
ORTHANC_STORAGE_DIR (the folder the nodes share), its SQLite index where it always was, and, on a
PostgreSQL index the nodes share, its own name there (NODE_NAME) and no saved jobs.

Then two real Orthanc servers so configured, on one PostgreSQL index and one storage folder: what
one stores, the other serves."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.core.settings import Settings
from sidecar.launcher import run as launcher
from sidecar.launcher.orthanc import (
    ORTHANC_DIR,
    OrthancLayout,
    OrthancProcess,
    render_configuration,
)

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port
from testapp import admin_execute, with_database

INDEX_URL = "postgresql://orthanc:secret@db.example:5433/orthanc_index"


def node_settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(data_dir=tmp_path / "var", **changes)  # type: ignore[arg-type]


def configuration_of(settings: Settings) -> dict[str, Any]:
    return render_configuration(launcher.orthanc_layout(settings))


def test_by_default_files_and_index_stay_in_data_dir_as_before(tmp_path: Path) -> None:
    config = configuration_of(node_settings(tmp_path))
    where = str((tmp_path / "var" / "orthanc" / "storage").resolve())
    assert config["StorageDirectory"] == config["IndexDirectory"] == where


def test_the_files_go_to_orthanc_storage_dir_and_the_index_stays(tmp_path: Path) -> None:
    shared = tmp_path / "nas" / "orthanc-storage"
    config = configuration_of(node_settings(tmp_path, orthanc_storage_dir=shared))
    assert config["StorageDirectory"] == str(shared.resolve())
    # An existing install's SQLite index is found where it was.
    assert config["IndexDirectory"] == str((tmp_path / "var" / "orthanc" / "storage").resolve())


def test_a_relative_storage_dir_is_the_launcher_s_not_orthanc_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = configuration_of(node_settings(tmp_path, orthanc_storage_dir=Path("shared/files")))
    assert config["StorageDirectory"] == str((tmp_path / "shared" / "files").resolve())


def test_the_variables_make_run_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORTHANC_STORAGE_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("ORTHANC_INDEX_URL", INDEX_URL)
    monkeypatch.setenv("NODE_NAME", "reading-room-2")
    config = configuration_of(node_settings(tmp_path))
    assert config["StorageDirectory"] == str((tmp_path / "shared").resolve())
    assert config["DatabaseServerIdentifier"] == "reading-room-2"


def test_on_a_shared_index_each_orthanc_has_the_node_s_name_and_saves_no_jobs(
    tmp_path: Path,
) -> None:
    config = configuration_of(
        node_settings(tmp_path, orthanc_index_url=INDEX_URL, node_name="node-a")
    )
    assert config["DatabaseServerIdentifier"] == "node-a"
    assert config["SaveJobs"] is False
    index = config["PostgreSQL"]
    assert index["EnableIndex"] is True and index["Lock"] is False
    where = (index["Host"], index["Port"], index["Database"])
    assert where == ("db.example", 5433, "orthanc_index")
    assert any(plugin.endswith("libOrthancPostgreSQLIndex.so") for plugin in config["Plugins"])


def test_the_node_s_name_defaults_to_the_host_name(tmp_path: Path) -> None:
    config = configuration_of(node_settings(tmp_path, orthanc_index_url=INDEX_URL))
    assert config["DatabaseServerIdentifier"] == socket.gethostname()


def test_on_sqlite_orthanc_keeps_its_jobs_and_needs_no_name(tmp_path: Path) -> None:
    # Shared storage with a SQLite index is one node keeping its files on a NAS: allowed.
    settings = node_settings(tmp_path, node_name="node-a", orthanc_storage_dir=tmp_path / "nas")
    config = configuration_of(settings)
    assert "DatabaseServerIdentifier" not in config
    assert "PostgreSQL" not in config
    assert config["SaveJobs"] is True  # as orthanc/orthanc.json has it
    assert (ORTHANC_DIR / "orthanc.json").read_text().count('"SaveJobs": true') == 1


# --- the folders on disk -----------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_a_missing_storage_dir_is_created_this_user_s_only(tmp_path: Path) -> None:
    shared = tmp_path / "mnt" / "orthanc-storage"
    settings = node_settings(tmp_path, orthanc_storage_dir=shared)
    orthanc = OrthancProcess(launcher.orthanc_layout(settings))
    orthanc.write_configuration()
    assert mode(shared) == 0o700
    assert mode(orthanc.layout.index_dir) == 0o700
    assert orthanc.layout.index_dir != orthanc.layout.storage_dir


@pytest.mark.usefixtures("permissive_umask")
def test_an_existing_storage_dir_of_this_user_is_made_private(tmp_path: Path) -> None:
    shared = tmp_path / "orthanc-storage"
    shared.mkdir(mode=0o755)
    (shared / "ab").mkdir()  # Orthanc's files already there are left as they are
    settings = node_settings(tmp_path, orthanc_storage_dir=shared)
    OrthancProcess(launcher.orthanc_layout(settings)).write_configuration()
    assert mode(shared) == 0o700
    assert (shared / "ab").is_dir()


# --- two Orthanc servers, one index, one storage ----------------------------------------------


@pytest.fixture
def shared_index(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty PostgreSQL database for Orthanc's index, on the test run's server."""
    server = request.config.getoption("--postgres-url")
    name = f"orthanc_index_{uuid.uuid4().hex[:12]}"
    admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name).replace("postgresql+psycopg://", "postgresql://", 1)
    finally:
        admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.orthanc
def test_two_orthancs_on_one_index_and_one_storage_serve_each_other_s_studies(
    tmp_path: Path, shared_index: str
) -> None:
    storage = tmp_path / "shared-storage"
    first = OrthancLayout(
        work_dir=tmp_path / "a" / "orthanc",
        http_port=free_port(),
        dicom_port=free_port(),
        with_plugin=False,
        index_database_url=shared_index,
        storage=storage,
        node_name="node-a",
    )
    second = dataclasses.replace(
        first,
        work_dir=tmp_path / "b" / "orthanc",
        http_port=free_port(),
        dicom_port=free_port(),
        node_name="node-b",
    )
    # One at a time: each creates the index's schema if missing.
    nodes = [OrthancProcess(first), OrthancProcess(second)]
    try:
        for node in nodes:
            node.start()
            # Orthanc 1.10 does not show it in /system; it keys the server's own properties in
            # the shared index (its saved jobs, were SaveJobs on).
            written = json.loads(node.config_path.read_text())
            assert written["DatabaseServerIdentifier"] == node.layout.node_name

        studies = [make_study(tmp_path / f"study-{i}", instances_per_series=2) for i in (0, 1)]
        for study, node in zip(studies, nodes, strict=True):
            sent = storescu_dcmtk(study.files, "127.0.0.1", node.layout.dicom_port, "ORTHANC")
            assert sent.all_success
        for node in nodes:
            found = httpx.post(
                f"{node.url}/tools/find",
                json={"Level": "Study", "Query": {}, "Expand": True},
            ).json()
            uids = {s["MainDicomTags"]["StudyInstanceUID"] for s in found}
            assert uids == {s.study_instance_uid for s in studies}
            # Every file, whichever node stored it, read from the one storage folder.
            for instance in httpx.get(f"{node.url}/instances").json():
                assert httpx.get(f"{node.url}/instances/{instance}/file").status_code == 200
        assert any(storage.iterdir())
        assert not any(p.is_file() for p in first.index_dir.rglob("*"))  # no SQLite index
    finally:
        for node in nodes:
            node.stop()

"""Backup and restore against the real parts: a backup taken by `python -m sidecar backup` while
C-STORE and ORM^O01 over MLLP run against a real Orthanc and sidecar, restored by `python -m
sidecar restore` into a fresh DATA_DIR and fresh databases, and the restored node started: it
lists every study, order and report the backup holds, Orthanc serves every instance, and a
report signed after the backup is not there. On SQLite (sidecar database and Orthanc index) or,
with --database postgresql, on PostgreSQL (both).

One node and one backup per module: the tests after the first reuse them (the CI budget)."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.operations.backup import ServiceFiles
from sidecar.operations.backup_manifest import MANIFEST, STORAGE

from backup_traffic import (
    Traffic,
    new_order,
    new_study,
    node_environment,
    node_shaped,
    radiologist_of,
    sidecar_command,
    signed_report,
)
from stack import Stack
from testapp import admin_execute, fresh_database, with_database

pytestmark = pytest.mark.orthanc


@dataclass
class Source:
    stack: Stack
    backup: Path
    manifest: dict[str, Any]
    before: dict[str, set[Any]]  # what existed before the traffic began: all must come back
    signed_after: int  # a report signed after the backup


@contextlib.contextmanager
def empty_database(kind: str, server: str, label: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (the driver's URL form), dropped after; on SQLite,
    nothing ("")."""
    if kind != "postgresql":
        yield ""
        return
    name = f"radtest_{label}_{uuid.uuid4().hex[:12]}"
    admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq(url: str) -> str:
    """Orthanc's index URL: libpq's form, no driver."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def listed(stack: Stack, path: str) -> list[dict[str, Any]]:
    answer = stack.api("GET", path, params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["total"] == len(body["items"]), "more than one page"
    items: list[dict[str, Any]] = body["items"]
    return items


def inventory(stack: Stack) -> dict[str, set[Any]]:
    return {
        "studies": {s["studyInstanceUID"] for s in stack.studies()},
        "orders": {o["accessionNumber"] for o in listed(stack, "/api/imaging-orders")},
        "reports": {r["id"] for r in listed(stack, "/api/reports")},
        "instances": set(stack.orthanc_get("/instances")),
    }


@pytest.fixture(scope="module")
def source(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[Source]:
    kind = request.config.getoption("--database")
    server = request.config.getoption("--postgres-url")
    work = tmp_path_factory.mktemp("backup-source")
    with (
        fresh_database(kind, server, database_template, work) as database_url,
        empty_database(kind, server, "index") as index_url,
    ):
        stack = node_shaped(Stack(work, database_url), libpq(index_url))
        stack.start_orthanc(index_database_url=libpq(index_url))
        try:
            stack.start_sidecar()
            radiologist = radiologist_of(stack)
            for _ in range(3):
                new_order(stack)
                new_study(stack, work / "dicom")
            stack.wait_until_synced()
            for study in stack.studies()[:2]:
                signed_report(stack, radiologist, study["id"])
            before = inventory(stack)
            assert len(before["studies"]) == 3 and len(before["reports"]) == 2

            with Traffic(stack, work / "dicom").running() as traffic:
                taken = sidecar_command(node_environment(stack), "backup", str(work / "backups"))
                # More traffic after the backup, then the traffic stops.
                sent = len(traffic.studies)
                while len(traffic.studies) <= sent + 1 and not traffic.errors:
                    new_order(stack)
            assert taken.returncode == 0, taken.stderr
            backup = Path(taken.stdout.strip().splitlines()[-1])
            stack.wait_until_synced()
            unreported = stack.study_by_uid(traffic.studies[-1])
            assert unreported is not None
            signed_after = signed_report(stack, radiologist, unreported["id"])
            manifest = json.loads((backup / MANIFEST).read_text())
            yield Source(stack, backup, manifest, before, signed_after)
        finally:
            stack.close()


def restored_node(
    source: Source, work: Path, database_url: str, index_url: str, *extra: str
) -> tuple[Stack, Any]:
    """A stack on `work` (not started) and the result of restoring the source's backup into it."""
    stack = node_shaped(Stack(work, database_url), libpq(index_url))
    return stack, sidecar_command(node_environment(stack), "restore", str(source.backup), *extra)


def test_a_backup_taken_under_traffic_restores_into_a_working_node(
    source: Source, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    kind = request.config.getoption("--database")
    server = request.config.getoption("--postgres-url")
    counts = source.manifest["counts"]
    assert source.backup.parent == source.stack.work_dir / "backups"
    assert source.manifest["databases"] == {"sidecar": kind, "orthancIndex": kind}
    assert source.manifest["alembicRevision"]
    # The traffic had stored a study before the backup began (Traffic.running).
    assert counts["orthanc"]["studies"] >= 4
    assert counts["orthanc"]["attachments"] == counts["orthanc"]["instances"]
    # Every file the index copy names, and only those (none lacking: the backup would fail).
    stored = [name for name in source.manifest["files"] if name.startswith(f"{STORAGE}/")]
    assert len(stored) == counts["orthanc"]["attachments"]
    assert "missingAttachments" not in source.manifest
    assert not list((source.stack.work_dir / "backups").glob(".*")), "a partial folder left"

    target = tmp_path / "restored"
    with (
        empty_database(kind, server, "restored") as database_url,
        empty_database(kind, server, "restored_index") as index_url,
    ):
        stack, restored = restored_node(
            source, target, database_url or f"sqlite:///{target / 'sidecar.db'}", index_url
        )
        assert restored.returncode == 0, restored.stderr
        stack.start_orthanc(index_database_url=libpq(index_url))
        try:
            stack.start_sidecar()
            stack.wait_until_synced()
            now = inventory(stack)
            # Everything the backup's sidecar database held, and what existed before the traffic.
            assert len(now["orders"]) == counts["sidecar"]["orders"]
            assert len(now["reports"]) == counts["sidecar"]["reports"]
            # Studies Orthanc's index knew past the sidecar's copy are registered on start.
            assert len(now["studies"]) >= counts["sidecar"]["studies"]
            assert len(now["studies"]) == counts["orthanc"]["studies"]
            for what in ("studies", "orders", "reports", "instances"):
                assert source.before[what] <= now[what], what
            assert source.signed_after not in now["reports"]
            missing = stack.api("GET", f"/api/reports/{source.signed_after}")
            assert missing.status_code == 404
            # Orthanc serves every instance of the backup, from its restored storage.
            assert len(now["instances"]) == counts["orthanc"]["instances"]
            for instance in now["instances"]:
                answer = httpx.get(f"{stack.orthanc.url}/instances/{instance}/file", timeout=10)
                assert answer.status_code == 200 and answer.content[128:132] == b"DICM"
        finally:
            stack.close()


def test_verify_backup_finds_a_changed_file_and_a_missing_one(
    source: Source, tmp_path: Path
) -> None:
    env = node_environment(source.stack)
    intact = sidecar_command(env, "verify-backup", str(source.backup))
    assert intact.returncode == 0, intact.stderr

    copy = tmp_path / "copy"
    shutil.copytree(source.backup, copy)
    stored = sorted(name for name in source.manifest["files"] if name.startswith(STORAGE))
    changed, gone = stored[0], stored[1]
    with (copy / changed).open("r+b") as image:
        image.seek(200)
        image.write(b"\x00tampered\x00")
    (copy / gone).unlink()
    checked = sidecar_command(env, "verify-backup", str(copy))
    assert checked.returncode == 1
    assert f"checksum differs: {changed}" in checked.stderr
    assert f"missing: {gone}" in checked.stderr

    # A file removed together with its manifest line: the index copy still names it.
    dropped = tmp_path / "dropped"
    shutil.copytree(source.backup, dropped)
    manifest = json.loads((dropped / MANIFEST).read_text())
    del manifest["files"][gone]
    (dropped / gone).unlink()
    (dropped / MANIFEST).write_text(json.dumps(manifest))
    lacking = sidecar_command(env, "verify-backup", str(dropped))
    assert lacking.returncode == 1
    assert (
        f"1 file(s) orthanc-index.sqlite names are not in the backup: {gone}" in lacking.stderr
        if source.manifest["databases"]["orthancIndex"] == "sqlite"
        else "storage files, and Orthanc's index named" in lacking.stderr
    ), lacking.stderr

    # A restore checks first, and restores nothing from a damaged backup.
    target = tmp_path / "target"
    stack = node_shaped(Stack(target, f"sqlite:///{target / 'sidecar.db'}"))
    refused = sidecar_command(node_environment(stack), "restore", str(copy))
    assert refused.returncode == 1
    assert "checksum differs" in refused.stderr
    assert not target.exists()


def test_restore_refuses_a_node_in_use_and_existing_data_without_force(
    source: Source, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    kind = request.config.getoption("--database")
    server = request.config.getoption("--postgres-url")
    # The source node is running: refused, even with --force.
    running = sidecar_command(
        node_environment(source.stack), "restore", str(source.backup), "--force"
    )
    assert running.returncode == 1
    assert "the service is running" in running.stderr
    assert len(running.stderr.strip().splitlines()) == 1

    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("an operator's file")
    with (
        empty_database(kind, server, "occupied") as database_url,
        empty_database(kind, server, "occupied_index") as index_url,
    ):
        url = database_url or f"sqlite:///{target / 'sidecar.db'}"
        _, refused = restored_node(source, target, url, index_url)
        assert refused.returncode == 1
        assert "not restoring over existing data" in refused.stderr
        assert f"DATA_DIR {target} is not empty" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]

        _, forced = restored_node(source, target, url, index_url, "--force")
        assert forced.returncode == 0, forced.stderr
        files = ServiceFiles.from_settings(
            node_shaped(Stack(target, url), libpq(index_url)).settings
        )
        stored = [n for n in source.manifest["files"] if n.startswith(STORAGE)]
        assert all((files.storage_dir / n.removeprefix(f"{STORAGE}/")).is_file() for n in stored)
        # Restored once, the target is no longer empty.
        _, again = restored_node(source, target, url, index_url)
        assert again.returncode == 1 and "not restoring over existing data" in again.stderr
        if kind == "postgresql":
            assert "the database of DATABASE_URL has tables" in again.stderr
        # --force over a restored node: its databases emptied first, then restored again.
        _, twice = restored_node(source, target, url, index_url, "--force")
        assert twice.returncode == 0, twice.stderr


def test_each_backup_is_a_new_folder(source: Source) -> None:
    env = node_environment(source.stack)
    first = sidecar_command(env, "backup", str(source.stack.work_dir / "backups"))
    second = sidecar_command(env, "backup", str(source.stack.work_dir / "backups"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    paths = {Path(r.stdout.strip().splitlines()[-1]) for r in (first, second)}
    assert len(paths | {source.backup}) == 3
    assert all((path / MANIFEST).is_file() for path in paths)

"""Operations under attack and mishap: a crafted backup manifest, a backup of a storage that is
not mounted, the database password and ps, a hostile HL7 sender growing metric labels, a dead
network mount under Orthanc's storage, counts of work rolled back."""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import Session

from hl7.adt import ADT_EVENTS
from hl7.orders import SUPPORTED_MESSAGES
from sidecar.core.settings import Settings
from sidecar.operations import backup as backup_module
from sidecar.operations import backup_databases, commands
from sidecar.operations.alarms import DiskUsage, DiskWatch
from sidecar.operations.backup import (
    ServiceFiles,
    StorageIncomplete,
    attachment_path,
    take_backup,
)
from sidecar.operations.backup_manifest import MANIFEST, BackupInvalid, verify
from sidecar.operations.metrics import HL7_RECEIVED, message_type_label, metered_hl7
from sidecar.operations.restore import restore_backup
from sidecar.operations.sqlite_snapshot import snapshot_sqlite
from sidecar.studies.registry import register_study

from builders import orthanc_study

# Orthanc's SQLite index as a backup reads it (reduced), and the sidecar tables it counts.
ORTHANC_INDEX_SCHEMA = (
    "CREATE TABLE Resources(internalId INTEGER PRIMARY KEY AUTOINCREMENT, resourceType INTEGER,"
    " publicId TEXT, parentId INTEGER)",
    "CREATE TABLE AttachedFiles(id INTEGER, fileType INTEGER, uuid TEXT, compressedSize INTEGER,"
    " uncompressedSize INTEGER, compressionType INTEGER, uncompressedMD5 TEXT,"
    " compressedMD5 TEXT, PRIMARY KEY(id, fileType))",
)
SIDECAR_SCHEMA = (
    "CREATE TABLE alembic_version(version_num TEXT)",
    "INSERT INTO alembic_version VALUES ('review17')",
    "CREATE TABLE study(id INTEGER)",
    "CREATE TABLE imaging_order(id INTEGER)",
    "CREATE TABLE radiology_report(id INTEGER)",
)
UUIDS = [
    "0a1b2c3d-0000-0000-0000-000000000001",
    "9f8e7d6c-0000-0000-0000-000000000002",
]


def stopped_node(work: Path, *, write_files: bool = True, missing: int = 0) -> ServiceFiles:
    """A stopped node on SQLite: a sidecar database, an Orthanc index naming UUIDS and (unless
    `write_files` is false) their files but the last `missing`. Needs neither Orthanc nor the
    test database."""
    files = ServiceFiles(
        data_dir=work,
        database_url=f"sqlite:///{work / 'sidecar.db'}",
        index_dir=work / "orthanc" / "storage",
        index_url="",
        storage_dir=work / "orthanc" / "storage",
        node="node-a",
    )
    files.index_dir.mkdir(parents=True)
    sidecar = sqlite3.connect(work / "sidecar.db")
    for statement in SIDECAR_SCHEMA:
        sidecar.execute(statement)
    sidecar.commit()
    sidecar.close()
    index = sqlite3.connect(files.index_file)
    for statement in ORTHANC_INDEX_SCHEMA:
        index.execute(statement)
    for number, uuid in enumerate(UUIDS, start=1):
        index.execute("INSERT INTO Resources VALUES (?, 4, ?, NULL)", (number, f"i{number}"))
        index.execute(
            "INSERT INTO AttachedFiles (id, fileType, uuid) VALUES (?, 1, ?)", (number, uuid)
        )
        if write_files and number <= len(UUIDS) - missing:
            path = files.storage_dir / attachment_path(uuid)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(uuid.encode() * 100)
    index.commit()
    index.close()
    return files


def test_a_crafted_manifest_cannot_make_restore_write_outside_the_storage(tmp_path: Path) -> None:
    folder = take_backup(stopped_node(tmp_path / "node"), tmp_path / "backups")
    victim = tmp_path / "elsewhere" / "authorized_keys"  # e.g. ~/.ssh/authorized_keys
    planted = folder / "storage" / victim.relative_to("/")
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"ssh-ed25519 AAAA attacker\n")
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = {"size": planted.stat().st_size, "sha256": _sha256(planted)}
    # The file listed under its own name (so verify finds nothing unlisted) and under a name
    # with a double slash, which restore joins onto the storage folder as an absolute path.
    manifest["files"][f"storage/{victim.relative_to('/')}"] = entry
    manifest["files"][f"storage/{victim}"] = entry
    (folder / MANIFEST).write_text(json.dumps(manifest))

    target = ServiceFiles.from_settings(Settings(data_dir=tmp_path / "restored"))
    try:
        verify(folder)
        restore_backup(folder, target)
    except BackupInvalid:
        pass  # refused: what a fix does
    assert not victim.exists(), f"restore wrote {victim}, outside {target.storage_dir}"
    with pytest.raises(BackupInvalid) as refused:
        verify(folder)
    assert f"not a path inside the backup: 'storage/{victim}'" in refused.value.problems


def test_a_backup_without_any_of_the_images_the_index_names_is_not_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = stopped_node(tmp_path / "node", write_files=False)  # the index names 2 files: none there
    monkeypatch.setattr(ServiceFiles, "from_settings", classmethod(lambda cls, _: node))
    code = commands.backup(
        Settings(data_dir=tmp_path / "node"), tmp_path / "backups", index_timeout=5
    )
    printed = capsys.readouterr()
    assert code != 0, f"exit 0, stdout: {printed.out!r}"
    assert printed.err.strip() == (
        f"sidecar backup: 2 of the 2 files Orthanc's index names are not in the storage folder"
        f" {node.storage_dir} (ORTHANC_STORAGE_DIR; is it mounted?): no backup written"
    )
    assert list((tmp_path / "backups").iterdir()) == []  # no folder, complete or partial


def test_an_hl7_sender_cannot_grow_the_message_type_labels_without_bound() -> None:
    async def refuse(raw: bytes, peer: object) -> bytes:
        return b"MSH|^~\\&|S|F|R|F|20240101||ACK|1|P|2.5\rMSA|AR|1"

    metered = metered_hl7(refuse)
    before = _message_types()

    async def send_all() -> None:
        for number in range(200):
            kind = "Z" + chr(65 + number % 26) + chr(65 + number // 26)
            raw = f"MSH|^~\\&|A|B|C|D|20240101||{kind}^Z01|CTRL{number}|P|2.5\rPID|||1".encode()
            await metered(raw, None)

    asyncio.run(send_all())
    invented = _message_types() - before
    assert invented <= {"other"}, f"{len(invented)} new message_type label values"
    # What the intake takes still has its own label.
    handled = [*SUPPORTED_MESSAGES, *(("ADT", trigger) for trigger in ADT_EVENTS)]
    assert {message_type_label(*code) for code in handled} == {f"{t}^{e}" for t, e in handled}


def test_a_storage_that_cannot_be_measured_is_not_reported_up(tmp_path: Path) -> None:
    def dead_mount(path: Path) -> DiskUsage:
        if path.name == "storage":
            raise OSError(errno.ESTALE, "Stale file handle")
        return DiskUsage(100, 10, 90)

    watch = DiskWatch(
        {"orthancStorage": tmp_path / "storage", "dataDirectory": tmp_path}, 10.0, dead_mount
    )
    body, reasons = watch.check()
    assert body["orthancStorage"] == {"status": "unknown", "error": "ESTALE"}
    assert body["status"] == "down"
    assert reasons == ["disk: orthancStorage cannot be measured (ESTALE)"]


def test_a_registration_rolled_back_then_retried_counts_one_study(engine: Engine) -> None:
    study = orthanc_study("1.2.826.0.1.3680043.9.7.17.1")

    def registered() -> float:
        return REGISTRY.get_sample_value("sidecar_studies_registered_total") or 0.0

    before = registered()
    with Session(engine) as session:
        register_study(session, study.record())
        session.rollback()  # the commit failed: nothing was registered
        register_study(session, study.record())  # retried, in the same session
        assert registered() == before  # not committed yet
    # That session closed without a commit: the next round registers it.
    with Session(engine) as session:
        register_study(session, study.record())
        session.commit()
    assert registered() - before == 1


def test_verify_refuses_a_backup_lacking_files_its_index_names(tmp_path: Path) -> None:
    folder = take_backup(stopped_node(tmp_path / "node"), tmp_path / "backups")
    manifest = json.loads((folder / MANIFEST).read_text())
    dropped = f"storage/{attachment_path(UUIDS[0])}"
    del manifest["files"][dropped]
    (folder / dropped).unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupInvalid):
        verify(folder)


def test_pg_dump_gets_no_password_on_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands_run: list[list[str]] = []
    passwords: list[str | None] = []

    def run(command: list[str], env: dict[str, str]) -> None:
        commands_run.append(list(command))
        passwords.append(env.get("PGPASSWORD"))

    monkeypatch.setattr(backup_databases, "pg_tool", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(backup_databases, "_run", run)
    for url in (
        "postgresql+psycopg://sidecar:s3cret-pw@db.example:5432/sidecar",
        "postgresql+psycopg://sidecar@db.example:5432/sidecar?password=s3cret-pw&sslmode=require",
    ):
        backup_databases.pg_dump(url, "00000003-1", tmp_path / "dump")
        backup_databases.pg_restore(url, tmp_path / "dump")
    arguments = [argument for command in commands_run for argument in command]
    assert len(commands_run) == 4
    assert not [argument for argument in arguments if "s3cret-pw" in argument], arguments
    assert "--dbname=postgresql://sidecar@db.example:5432/sidecar?sslmode=require" in arguments
    assert passwords == ["s3cret-pw"] * 4  # the password travels in the environment


def test_a_restored_index_names_no_file_the_restored_storage_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file the index copy names but the storage lacks, for good: no backup at all.
    with pytest.raises(StorageIncomplete, match="1 of the 2 files"):
        take_backup(stopped_node(tmp_path / "broken", missing=1), tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []

    # An instance deleted in Orthanc after the index was copied (Orthanc removes its index row,
    # then its file): the next copy of the index no longer names it, and the backup holds
    # neither.
    node = stopped_node(tmp_path / "node")
    deleted = UUIDS[-1]
    snapshots = []

    def then_delete(database: Path, destination: Path, **options: float) -> tuple[int, float]:
        taken = snapshot_sqlite(database, destination, **options)
        snapshots.append(destination)
        if len(snapshots) == 1:
            index = sqlite3.connect(database)
            index.execute("DELETE FROM AttachedFiles WHERE uuid = ?", (deleted,))
            index.commit()
            index.close()
            (node.storage_dir / attachment_path(deleted)).unlink()
        return taken

    monkeypatch.setattr(backup_module, "snapshot_sqlite", then_delete)
    folder = take_backup(node, tmp_path / "backups")
    manifest = verify(folder)
    assert len(snapshots) == 2 and manifest.timings["orthancIndexPasses"] == 2
    assert manifest.counts["orthanc"]["attachments"] == 1
    assert "missingAttachments" not in json.loads((folder / MANIFEST).read_text())
    target = ServiceFiles.from_settings(Settings(data_dir=tmp_path / "restored"))
    restore_backup(folder, target)
    index = sqlite3.connect(target.index_file)
    named = [row[0] for row in index.execute("SELECT uuid FROM AttachedFiles")]
    index.close()
    assert named == UUIDS[:-1]
    absent = [u for u in named if not (target.storage_dir / attachment_path(u)).is_file()]
    assert absent == []


def test_verify_backup_reports_a_damaged_manifest_entry_in_its_own_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = take_backup(stopped_node(tmp_path / "node"), tmp_path / "backups")
    intact = json.loads((folder / MANIFEST).read_text())
    manifest = json.loads(json.dumps(intact))
    del manifest["files"]["sidecar.sqlite"]["size"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert commands.verify_backup(folder) == 1
    assert "does not match its manifest" in capsys.readouterr().err
    # Other damage: an entry that is not an object, counts that are not numbers, no object.
    entry = json.loads(json.dumps(intact))
    entry["files"]["orthanc-index.sqlite"] = "ok"
    counts = json.loads(json.dumps(intact))
    counts["counts"] = ["orthanc"]
    for damaged in (entry, counts, [intact]):
        (folder / MANIFEST).write_text(json.dumps(damaged))
        assert commands.verify_backup(folder) == 1
        assert "does not match its manifest" in capsys.readouterr().err
        with pytest.raises(BackupInvalid):
            restore_backup(folder, ServiceFiles.from_settings(Settings(data_dir=tmp_path / "r")))


def _message_types() -> set[str]:
    return {
        sample.labels["message_type"]
        for family in HL7_RECEIVED.collect()
        for sample in family.samples
        if "message_type" in sample.labels
    }


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()

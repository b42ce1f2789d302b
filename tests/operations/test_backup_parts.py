"""The parts of a backup, without Orthanc running: the quiet-instant copy of an exclusively
locked SQLite index, where a node's files are, a backup that fails midway leaving nothing
that looks complete, and a hostile backup refused. (tests/operations/test_backup_restore.py
runs the whole against a real node.)"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.core.settings import Settings
from sidecar.launcher.run import orthanc_layout
from sidecar.operations import backup as backup_module
from sidecar.operations import backup_databases, sqlite_snapshot
from sidecar.operations.backup import ServiceFiles, attachment_path, take_backup
from sidecar.operations.backup_databases import DatabaseToolError
from sidecar.operations.backup_manifest import MANIFEST, BackupInvalid, verify
from sidecar.operations.restore import RestoreRefused, restore_backup

from backup_traffic import REPO, sidecar_command

# The tables of Orthanc's SQLite index a backup reads (Orthanc 1.10's, reduced).
ORTHANC_INDEX_SCHEMA = (
    "CREATE TABLE Resources(internalId INTEGER PRIMARY KEY AUTOINCREMENT, resourceType INTEGER,"
    " publicId TEXT, parentId INTEGER)",
    "CREATE TABLE AttachedFiles(id INTEGER, fileType INTEGER, uuid TEXT, compressedSize INTEGER,"
    " uncompressedSize INTEGER, compressionType INTEGER, uncompressedMD5 TEXT,"
    " compressedMD5 TEXT, PRIMARY KEY(id, fileType))",
)


def held_exclusively(path: Path) -> sqlite3.Connection:
    """A database opened as Orthanc opens its index: WAL, exclusive locking."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
    connection.execute("CREATE TABLE pairs(a INTEGER, b INTEGER)")
    connection.execute("INSERT INTO pairs VALUES (1, 1)")
    return connection


def test_an_exclusively_held_database_is_copied_again_when_written_during_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "index"
    holder = held_exclusively(source)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # why the backup API cannot
        sqlite3.connect(source, timeout=0).execute("SELECT * FROM pairs").fetchall()

    copies = []
    real_copy = shutil.copyfile

    def copy_then_write(src: Path, dst: Path) -> Path:
        copied = real_copy(src, dst)
        copies.append(Path(src).name)
        if len(copies) == 1:  # the first read is overtaken by a transaction
            holder.execute("INSERT INTO pairs VALUES (2, 2)")
        return Path(copied)

    monkeypatch.setattr(shutil, "copyfile", copy_then_write)
    attempts, _ = sqlite_snapshot.snapshot_sqlite(source, tmp_path / "copy.sqlite", timeout=10)
    holder.close()

    assert attempts == 2
    assert copies[:2] == ["index-wal", "index"] and len(copies) == 4
    copy = sqlite3.connect(tmp_path / "copy.sqlite")
    assert copy.execute("SELECT a, b FROM pairs ORDER BY a").fetchall() == [(1, 1), (2, 2)]
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not (tmp_path / "copy.sqlite-wal").exists()


def test_a_node_s_files_are_where_the_launcher_puts_them(tmp_path: Path) -> None:
    for storage in (None, tmp_path / "nfs" / "storage"):
        settings = Settings(data_dir=tmp_path / "var", orthanc_storage_dir=storage)
        files = ServiceFiles.from_settings(settings)
        layout = orthanc_layout(settings)
        assert files.index_dir == layout.index_dir
        assert files.storage_dir == layout.storage_dir
        assert files.database_url == f"sqlite:///{(tmp_path / 'var' / 'sidecar.db').resolve()}"


def fake_node(work: Path, database_url: str, uuids: list[str]) -> ServiceFiles:
    """A stopped node: the test's sidecar database, an Orthanc index naming `uuids`, and their
    files."""
    files = ServiceFiles(
        data_dir=work,
        database_url=database_url,
        index_dir=work / "orthanc" / "storage",
        index_url="",
        storage_dir=work / "orthanc" / "storage",
        node="node-a",
    )
    files.index_dir.mkdir(parents=True)
    index = sqlite3.connect(files.index_file)
    for statement in ORTHANC_INDEX_SCHEMA:
        index.execute(statement)
    for number, uuid in enumerate(uuids, start=1):
        index.execute("INSERT INTO Resources VALUES (?, 4, ?, NULL)", (number, f"i{number}"))
        index.execute(
            "INSERT INTO AttachedFiles (id, fileType, uuid) VALUES (?, 1, ?)", (number, uuid)
        )
        path = files.storage_dir / attachment_path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(uuid.encode() * 100)
    index.commit()
    index.close()
    return files


UUIDS = [
    "0a1b2c3d-0000-0000-0000-000000000001",
    "9f8e7d6c-0000-0000-0000-000000000002",
    "5555aaaa-0000-0000-0000-000000000003",
]


def test_a_backup_holds_every_file_its_index_names_and_restores_into_empty_places(
    tmp_path: Path, database_url: str
) -> None:
    source = fake_node(tmp_path / "node", database_url, UUIDS)
    folder = take_backup(source, tmp_path / "backups")
    manifest = verify(folder)
    assert manifest.counts["orthanc"] == {"studies": 0, "instances": 3, "attachments": 3}
    assert sorted(n for n in manifest.files if n.startswith("storage/")) == sorted(
        f"storage/{attachment_path(uuid)}" for uuid in UUIDS
    )
    assert manifest.timings["orthancIndexPasses"] == 1
    assert manifest.node == "node-a" and manifest.alembic_revision

    if source.sidecar_kind == "sqlite":
        target = tmp_path / "restored"
        files = ServiceFiles.from_settings(Settings(data_dir=target))
        restore_backup(folder, files)
        for uuid in UUIDS:
            assert (files.storage_dir / attachment_path(uuid)).read_bytes() == uuid.encode() * 100
        restored = sqlite3.connect(files.index_file)
        assert restored.execute("SELECT count(*) FROM AttachedFiles").fetchone() == (3,)
        with pytest.raises(RestoreRefused, match="not restoring over existing data"):
            restore_backup(folder, files)


def test_a_backup_that_fails_midway_leaves_no_folder_that_looks_complete(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fake_node(tmp_path / "node", database_url, UUIDS)

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup_module, "copy_with_digest", disk_full)
    with pytest.raises(OSError, match="No space"):
        take_backup(source, tmp_path / "backups")
    assert list((tmp_path / "backups").iterdir()) == []

    unfinished = tmp_path / "backups" / "backup-unfinished"
    unfinished.mkdir()
    with pytest.raises(BackupInvalid, match=f"no {MANIFEST}"):
        verify(unfinished)


def test_a_backup_of_a_node_that_is_not_there_fails_in_one_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ORTHANC_"))}
    env.update(DATA_DIR=str(tmp_path / "nothing"), PYTHONPATH=str(REPO))
    failed = sidecar_command(env, "backup", str(tmp_path / "backups"))
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        f"sidecar backup: no sidecar database at {tmp_path / 'nothing' / 'sidecar.db'}"
        " (DATABASE_URL, DATA_DIR)"
    )
    assert list((tmp_path / "backups").iterdir()) == []


def test_a_manifest_naming_a_file_outside_the_backup_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    folder = take_backup(fake_node(tmp_path / "node", database_url, UUIDS), tmp_path / "backups")
    (tmp_path / "backups" / "outside").write_bytes(b"x")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["storage/../../outside"] = manifest["files"].popitem()[1]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupInvalid) as refused:
        verify(folder)
    assert "not a path inside the backup: 'storage/../../outside'" in refused.value.problems


def test_a_backup_holding_a_symbolic_link_is_refused(tmp_path: Path, database_url: str) -> None:
    folder = take_backup(fake_node(tmp_path / "node", database_url, UUIDS), tmp_path / "backups")
    listed = folder / "storage" / attachment_path(UUIDS[0])
    secret = tmp_path / "secret"
    secret.write_bytes(listed.read_bytes())  # the same bytes: only the link can give it away
    listed.unlink()
    listed.symlink_to(secret)
    (folder / "storage" / "zz").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BackupInvalid) as refused:
        verify(folder)
    assert sorted(refused.value.problems) == [
        f"a symbolic link, which a backup never holds: storage/{attachment_path(UUIDS[0])}",
        "a symbolic link, which a backup never holds: storage/zz",
        f"missing: storage/{attachment_path(UUIDS[0])}",
    ]


def test_restore_writes_nothing_through_a_link_left_in_the_storage_folder(
    tmp_path: Path, database_url: str
) -> None:
    node = fake_node(tmp_path / "node", database_url, UUIDS)
    if node.sidecar_kind != "sqlite":
        pytest.skip("the restore's targets are SQLite here; the storage code is the same")
    folder = take_backup(node, tmp_path / "backups")
    target = ServiceFiles.from_settings(Settings(data_dir=tmp_path / "restored"))
    outside = tmp_path / "outside"
    outside.mkdir()
    target.storage_dir.mkdir(parents=True)
    (target.storage_dir / UUIDS[0][0:2]).symlink_to(outside, target_is_directory=True)
    with pytest.raises(RestoreRefused, match="outside the storage folder"):
        restore_backup(folder, target, force=True)
    assert list(outside.iterdir()) == []
    assert not target.index_file.exists()  # refused before anything was restored


def test_a_failed_pg_restore_quotes_no_row(tmp_path: Path) -> None:
    tool = tmp_path / "pg_restore"
    tool.write_text(
        "#!/bin/sh\n"
        'echo \'pg_restore: error: COPY failed for table "patient": ERROR:  invalid input'
        ' syntax for type date: "DOE^JANE 19700101"\' >&2\n'
        "echo 'CONTEXT:  COPY patient, line 1: \"7\tDOE^JANE\"' >&2\n"
        "exit 1\n"
    )
    tool.chmod(0o700)
    with pytest.raises(DatabaseToolError) as failed:
        backup_databases._run([str(tool), "--dbname=x"], dict(os.environ))
    assert str(failed.value) == (
        "pg_restore failed (exit 1); run it by hand to see why (its messages may quote rows,"
        " so they are not shown)"
    )
    tool.write_text(
        '#!/bin/sh\necho \'pg_restore: error: connection to server at "db" (10.0.0.5), port'
        ' 5432 failed: FATAL:  password authentication failed for user "sidecar"\' >&2\n'
        "exit 1\n"
    )
    with pytest.raises(DatabaseToolError, match=r"exit 1.*password authentication failed"):
        backup_databases._run([str(tool)], dict(os.environ))


def test_a_postgresql_index_is_dumped_again_once_files_it_named_are_deleted(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL index (--database postgresql)")
    # The index's two tables beside the sidecar's, in the test's database (the plugin's
    # resource types: instance 3).
    node = replace(fake_node(tmp_path / "node", database_url, UUIDS), index_url=database_url)
    with backup_databases.Libpq.of(database_url).connect() as index:
        index.execute("CREATE TABLE Resources(internalId BIGINT, resourceType INT)")
        index.execute("CREATE TABLE AttachedFiles(id BIGINT, fileType INT, uuid TEXT)")
        for number, uuid in enumerate(UUIDS, start=1):
            index.execute("INSERT INTO Resources VALUES (%s, 3)", (number,))
            index.execute("INSERT INTO AttachedFiles VALUES (%s, 1, %s)", (number, uuid))
    deleted = UUIDS[-1]
    read_facts = backup_databases.orthanc_facts
    passes = []

    def then_delete(read: backup_databases.Reader, kind: str) -> tuple[dict[str, int], list[str]]:
        facts = read_facts(read, kind)
        passes.append(facts[1])
        if len(passes) == 1:  # Orthanc deletes an instance once its index was read
            with backup_databases.Libpq.of(database_url).connect() as index:
                index.execute("DELETE FROM AttachedFiles WHERE uuid = %s", (deleted,))
            (node.storage_dir / attachment_path(deleted)).unlink()
        return facts

    monkeypatch.setattr(backup_databases, "orthanc_facts", then_delete)
    folder = take_backup(node, tmp_path / "backups")
    manifest = verify(folder)
    assert [len(uuids) for uuids in passes] == [3, 2]
    assert manifest.counts["orthanc"]["attachments"] == 2
    stored = sorted(name for name in manifest.files if name.startswith("storage/"))
    assert stored == sorted(f"storage/{attachment_path(uuid)}" for uuid in UUIDS[:2])

    # A file removed with its manifest line: fewer storage files than the dumped index named.
    written = json.loads((folder / MANIFEST).read_text())
    del written["files"][stored[0]]
    (folder / stored[0]).unlink()
    (folder / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(BackupInvalid, match="1 storage files, and Orthanc's index named 2"):
        verify(folder)

"""`python -m sidecar restore PATH [--force]`: a backup put back into the places the environment
names (DATA_DIR, DATABASE_URL, ORTHANC_INDEX_URL, ORTHANC_STORAGE_DIR), with the service stopped.

The backup is checked against its manifest first. The targets must be empty (a folder empty or
not there yet, a SQLite file not there, a PostgreSQL database without tables in its public
schema) unless --force: then the databases are emptied first and storage files are written over
those of the same name (other files are left; Orthanc ignores files its index does not name).
A node still running on the targets is refused, --force or not: a SQLite database held by a
sidecar, a DATA_DIR held by a launcher, an Orthanc SQLite index held by Orthanc, a PostgreSQL
database with other sessions connected.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sidecar.core.cluster_admission import lock_sqlite_node
from sidecar.core.cluster_models import NodeRefused
from sidecar.operations import backup_databases as db
from sidecar.operations.backup import ServiceFiles
from sidecar.operations.backup_manifest import (
    INDEX_DUMP,
    INDEX_SQLITE,
    SIDECAR_DUMP,
    SIDECAR_SQLITE,
    STORAGE,
    BackupInvalid,
    Manifest,
    is_backup_name,
    verify,
)

LAUNCHER_LOCK = "launcher.lock"  # sidecar.launcher.run.LOCK_NAME
# Files that say nothing about a folder's content: lock files a stopped service leaves.
_IGNORED = {LAUNCHER_LOCK}


class RestoreRefused(Exception):
    """The restore was not started; the message says why, in one line."""


def restore_backup(backup: Path, files: ServiceFiles, *, force: bool = False) -> Manifest:
    """Checks `backup`, then puts it in place; returns its manifest. BackupInvalid: the backup
    does not match its manifest; RestoreRefused: the targets are in use or not empty."""
    manifest = verify(backup)
    _check_kinds(manifest, files)
    with _service_stopped(files) as lock_node:
        occupied = _occupied(files)
        if occupied and not force:
            raise RestoreRefused(
                f"not restoring over existing data ({'; '.join(occupied)}): give an empty"
                " DATA_DIR, storage and databases, or restore --force to overwrite them"
            )
        lock_node()
        storage = _storage_targets(manifest, files.storage_dir)  # refused before any change
        if occupied:
            _empty_databases(files)
        _restore_sidecar_database(backup, files)
        _restore_index(backup, files)
        _restore_storage(backup, storage, files.storage_dir)
    return manifest


def _check_kinds(manifest: Manifest, files: ServiceFiles) -> None:
    for what, theirs, ours, variable in (
        ("sidecar database", manifest.sidecar_database, files.sidecar_kind, "DATABASE_URL"),
        ("Orthanc index", manifest.orthanc_index, files.index_kind, "ORTHANC_INDEX_URL"),
    ):
        if theirs != ours:
            raise RestoreRefused(
                f"the backup's {what} is {theirs} and {variable} here is {ours}: restore into"
                f" the same kind of database"
            )


def _entries(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        e.name for e in folder.iterdir() if e.name not in _IGNORED and not e.name.endswith(".lock")
    )


def _occupied(files: ServiceFiles) -> list[str]:
    """What already holds data among the targets, one phrase each."""
    found: list[str] = []
    if _entries(files.data_dir):
        found.append(f"DATA_DIR {files.data_dir} is not empty")
    if _entries(files.storage_dir):
        found.append(f"the storage folder {files.storage_dir} is not empty")
    for url, variable in (
        (files.database_url, "DATABASE_URL"),
        (files.index_url, "ORTHANC_INDEX_URL"),
    ):
        if url and db.is_postgresql(url) and db.pg_tables(url):
            found.append(f"the database of {variable} has tables")
    if files.sidecar_kind == "sqlite" and db.sqlite_tables(db.sqlite_path(files.database_url)):
        found.append(f"the SQLite database {db.sqlite_path(files.database_url)} exists")
    if files.index_kind == "sqlite" and files.index_file.exists():
        found.append(f"Orthanc's index {files.index_file} exists")
    return found


def _node_lock_file(files: ServiceFiles) -> Path | None:
    if files.sidecar_kind != "sqlite":
        return None
    path = db.sqlite_path(files.database_url).resolve()
    return path.with_name(path.name + ".node.lock")  # as lock_sqlite_node names it


@contextlib.contextmanager
def _service_stopped(files: ServiceFiles) -> Iterator[Callable[[], None]]:
    """Refuses a running node. Yields a function that takes the SQLite node lock (once the
    targets are known fit: the lock's file is not left behind by a refused restore); held, with
    DATA_DIR's launcher lock, during the restore, so neither a sidecar nor `make run` starts on
    a half-restored node."""
    held: list[IO[bytes]] = []

    def lock_node() -> None:
        if files.sidecar_kind == "sqlite" and not held:
            try:
                handle = lock_sqlite_node(files.database_url)
            except NodeRefused:
                raise RestoreRefused(_running("a sidecar uses its SQLite database")) from None
            if handle is not None:
                held.append(handle)

    try:
        lock_file = _node_lock_file(files)
        if lock_file is not None and lock_file.exists():
            lock_node()
        launcher = files.data_dir / LAUNCHER_LOCK
        if launcher.exists():
            launcher_handle: IO[bytes] = launcher.open("ab")
            held.append(launcher_handle)
            try:
                fcntl.flock(launcher_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                why = f"a launcher holds DATA_DIR {files.data_dir}"
                raise RestoreRefused(_running(why)) from None
        index = files.index_file
        if files.index_kind == "sqlite" and index.exists() and _sqlite_locked(index):
            raise RestoreRefused(_running(f"Orthanc holds its index {index}"))
        for url, variable in (
            (files.database_url, "DATABASE_URL"),
            (files.index_url, "ORTHANC_INDEX_URL"),
        ):
            if url and db.is_postgresql(url):
                sessions = _other_sessions(url)
                if sessions:
                    why = f"{sessions} other session(s) are connected to {variable}'s database"
                    raise RestoreRefused(_running(why))
        yield lock_node
    finally:
        for handle in held:
            handle.close()


def _running(why: str) -> str:
    return f"the service is running ({why}): stop it before restoring"


def _sqlite_locked(path: Path) -> bool:
    connection = sqlite3.connect(path, timeout=0)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    finally:
        connection.close()


def _other_sessions(url: str) -> int:
    with db.Libpq.of(url).connect(autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _empty_databases(files: ServiceFiles) -> None:
    """--force: the databases emptied (storage files are written over, not removed)."""
    if files.sidecar_kind == "postgresql":
        db.pg_empty_public_schema(files.database_url)
    else:
        _remove_sqlite(db.sqlite_path(files.database_url))
    if files.index_kind == "postgresql":
        db.pg_empty_public_schema(files.index_url)
    else:
        _remove_sqlite(files.index_file)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _put_file(source: Path, target: Path) -> None:
    """A whole file or none: written beside the target, then renamed onto it."""
    _private_folder(target.parent)
    partial = target.with_name(target.name + ".restoring")
    shutil.copyfile(source, partial)
    os.chmod(partial, 0o600)
    os.replace(partial, target)


def _restore_sidecar_database(backup: Path, files: ServiceFiles) -> None:
    _private_folder(files.data_dir)
    if files.sidecar_kind == "postgresql":
        db.pg_restore(files.database_url, backup / SIDECAR_DUMP)
    else:
        _put_file(backup / SIDECAR_SQLITE, db.sqlite_path(files.database_url))


def _restore_index(backup: Path, files: ServiceFiles) -> None:
    if files.index_kind == "postgresql":
        db.pg_restore(files.index_url, backup / INDEX_DUMP)
    else:
        _put_file(backup / INDEX_SQLITE, files.index_file)


def _storage_targets(manifest: Manifest, storage: Path) -> dict[str, Path]:
    """Where each storage file of the backup goes: its resolved path, inside the resolved
    storage folder. verify() checked the manifest's names; this also holds whatever the
    storage folder already contains (a symbolic link left in it, with --force)."""
    root = storage.resolve()
    prefix = f"{STORAGE}/"
    targets: dict[str, Path] = {}
    for relative in sorted(manifest.files):
        if not relative.startswith(prefix):
            continue
        if not is_backup_name(relative):
            raise BackupInvalid([f"not a path inside the backup: {relative!r}"])
        target = (root / relative[len(prefix) :]).resolve()
        if not target.is_relative_to(root):
            raise RestoreRefused(
                f"{relative} would be written to {target}, outside the storage folder {root}"
                " (a symbolic link in it?): nothing restored"
            )
        targets[relative] = target
    return targets


def _restore_storage(backup: Path, targets: dict[str, Path], storage: Path) -> None:
    _private_folder(storage)
    made: set[Path] = set()
    for relative, target in targets.items():
        if target.parent not in made:
            _private_folder(target.parent)
            made.add(target.parent)
        shutil.copyfile(backup / relative, target)

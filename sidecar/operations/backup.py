"""`python -m sidecar backup DIR`: a consistent copy of a running node, in a new folder of DIR.

In this order, each part consistent in itself:
1. the sidecar's database (SQLite's online backup API; pg_dump from an exported snapshot);
2. Orthanc's index (a quiet-instant copy of its SQLite file, sidecar.operations.sqlite_snapshot;
   pg_dump for PostgreSQL), which therefore knows every study the sidecar's copy knows: what
   arrived in between is in the index's change log past the sidecar's cursor, and is registered
   by the restored sidecar as any late study is;
3. Orthanc's storage: the files the index copy names, copied after it (files are immutable once
   written). A file the index copy names but the storage lacks was deleted in Orthanc since the
   copy (Orthanc removes the index rows, then the files), or the storage is not where the
   environment says: the index is copied again (still after the sidecar's database, so the
   order holds) and what the newer copy names is copied, up to INDEX_PASSES copies. A file
   deleted meanwhile is no longer named; if files are still lacking after the last copy, the
   backup fails: a restored index naming files its storage lacks serves errors for ever.
Then the manifest, every file and folder flushed to disk, and the folder renamed from its
temporary name: complete, or not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar import __version__
from sidecar.core.settings import Settings
from sidecar.operations import backup_databases as db
from sidecar.operations.backup_manifest import (
    DATABASE_FILES,
    INDEX_DUMP,
    INDEX_SQLITE,
    SIDECAR_DUMP,
    SIDECAR_SQLITE,
    STORAGE,
    Manifest,
)
from sidecar.operations.backup_manifest import attachment_path as attachment_path
from sidecar.operations.sqlite_snapshot import snapshot_sqlite, sqlite_online_copy

ORTHANC_SQLITE_INDEX = "index"  # the file Orthanc keeps in its IndexDirectory
INDEX_PASSES = 3  # copies of the index at most, while its copy names files the storage lacks
_CHUNK = 1024 * 1024


class StorageIncomplete(RuntimeError):
    """The storage lacks files Orthanc's index names, and no backup was written."""


@dataclass(frozen=True)
class ServiceFiles:
    """Where one node keeps what a backup holds."""

    data_dir: Path
    database_url: str
    # Orthanc's IndexDirectory (its SQLite index; unused with index_url).
    index_dir: Path
    index_url: str
    storage_dir: Path
    node: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceFiles:
        """As the launcher lays Orthanc out (sidecar.launcher.run.orthanc_layout): Orthanc's
        work folder DATA_DIR/orthanc, the SQLite index in its `storage` folder whatever
        ORTHANC_STORAGE_DIR says."""
        storage = settings.orthanc_storage_dir
        assert storage is not None  # derived by Settings
        return cls(
            data_dir=settings.data_dir.resolve(),
            database_url=settings.database_url,
            index_dir=(settings.data_dir / "orthanc" / "storage").resolve(),
            index_url=settings.orthanc_index_url,
            storage_dir=storage.resolve(),
            node=settings.node_name,
        )

    @property
    def sidecar_kind(self) -> str:
        return "postgresql" if db.is_postgresql(self.database_url) else "sqlite"

    @property
    def index_kind(self) -> str:
        return "postgresql" if self.index_url else "sqlite"

    @property
    def index_file(self) -> Path:
        return self.index_dir / ORTHANC_SQLITE_INDEX


def _now() -> datetime:
    return datetime.now(UTC)


def take_backup(files: ServiceFiles, into: Path, *, index_timeout: float = 300.0) -> Path:
    """Writes a new backup folder in `into` and returns its path."""
    into.mkdir(parents=True, exist_ok=True)
    started = _now()
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    work = into / f".backup-{stamp}-{secrets.token_hex(4)}.partial"
    work.mkdir(mode=0o700)
    try:
        manifest = _write_parts(files, work, started, index_timeout)
        manifest.completed_at = _now().isoformat()
        manifest.write(work)
        return _complete(work, into, f"backup-{stamp}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_parts(
    files: ServiceFiles, work: Path, started: datetime, index_timeout: float
) -> Manifest:
    timings: dict[str, float] = {}
    clock = time.monotonic()
    sidecar = _copy_sidecar_database(files, work)
    timings["sidecarDatabaseSeconds"] = round(time.monotonic() - clock, 3)
    stored: dict[str, dict[str, Any]] = {}  # storage files copied, by their backup name
    index_seconds = storage_seconds = 0.0
    for passes in range(1, INDEX_PASSES + 1):
        clock = time.monotonic()
        orthanc_counts, uuids = _copy_orthanc_index(
            files, work, index_timeout=index_timeout, timings=timings
        )
        index_seconds += time.monotonic() - clock
        timings["orthancIndexPasses"] = passes  # more than 1: files the index named were gone
        clock = time.monotonic()
        named = {f"{STORAGE}/{attachment_path(uuid)}" for uuid in uuids}
        lacking = _copy_storage(files.storage_dir, named, work, stored)
        storage_seconds += time.monotonic() - clock
        if not lacking:
            break
    else:
        raise StorageIncomplete(
            f"{len(lacking)} of the {len(named)} files Orthanc's index names are not in the"
            f" storage folder {files.storage_dir} (ORTHANC_STORAGE_DIR; is it mounted?):"
            " no backup written"
        )
    for name in sorted(set(stored) - named):  # deleted in Orthanc since an earlier pass
        (work / name).unlink()
        del stored[name]
    timings["orthancIndexSeconds"] = round(index_seconds, 3)
    timings["storageSeconds"] = round(storage_seconds, 3)
    manifest = Manifest(
        created_at=started.isoformat(),
        node=files.node,
        sidecar_version=__version__,
        alembic_revision=sidecar["alembicRevision"],
        sidecar_database=files.sidecar_kind,
        orthanc_index=files.index_kind,
        counts={"sidecar": sidecar["counts"], "orthanc": orthanc_counts},
        timings=timings,
    )
    for name in DATABASE_FILES:
        if (work / name).exists():
            manifest.add_file(work, name)
    manifest.files.update(sorted(stored.items()))
    return manifest


def _copy_sidecar_database(files: ServiceFiles, work: Path) -> dict[str, Any]:
    if files.sidecar_kind == "postgresql":
        with db.pg_snapshot(files.database_url) as (snapshot, read):
            facts = db.sidecar_facts(read)
            db.pg_dump(files.database_url, snapshot, work / SIDECAR_DUMP)
        return facts
    source = db.sqlite_path(files.database_url)
    if not source.is_file():
        raise FileNotFoundError(f"no sidecar database at {source} (DATABASE_URL, DATA_DIR)")
    sqlite_online_copy(source, work / SIDECAR_SQLITE)
    read, close = db.sqlite_reader(work / SIDECAR_SQLITE)
    try:
        return db.sidecar_facts(read)
    finally:
        close()


def _copy_orthanc_index(
    files: ServiceFiles, work: Path, *, index_timeout: float, timings: dict[str, float]
) -> tuple[dict[str, int], list[str]]:
    if files.index_kind == "postgresql":
        with db.pg_snapshot(files.index_url) as (snapshot, read):
            counts, uuids = db.orthanc_facts(read, "postgresql")
            db.pg_dump(files.index_url, snapshot, work / INDEX_DUMP)
        return counts, uuids
    attempts, _ = snapshot_sqlite(files.index_file, work / INDEX_SQLITE, timeout=index_timeout)
    timings["orthancIndexCopies"] = attempts  # more than 1: Orthanc wrote during a copy
    read, close = db.sqlite_reader(work / INDEX_SQLITE)
    try:
        return db.orthanc_facts(read, "sqlite")
    finally:
        close()


def copy_with_digest(source: Path, destination: Path) -> tuple[int, str]:
    """Copies a file, returning its size and SHA-256 (one read for both)."""
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy_storage(
    storage: Path, named: set[str], work: Path, stored: dict[str, dict[str, Any]]
) -> list[str]:
    """Copies the named files not copied yet into `stored`; returns those the storage lacks."""
    lacking: list[str] = []
    made: set[Path] = set()
    for name in sorted(named - set(stored)):
        destination = work / name
        if destination.parent not in made:
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        try:
            size, sha256 = copy_with_digest(storage / name.removeprefix(f"{STORAGE}/"), destination)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                destination.unlink()
            lacking.append(name)
            continue
        stored[name] = {"size": size, "sha256": sha256}
    return lacking


def _sync_tree(folder: Path) -> None:
    """Every file and folder of the backup on disk before the rename says it is complete (a
    power cut must not leave a complete-looking folder of empty files)."""
    for root, _, names in os.walk(folder, topdown=False):
        for name in names:
            descriptor = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(Path(root))


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # a filesystem without directory fsync
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _complete(work: Path, into: Path, name: str) -> Path:
    """Renames the finished folder to its final name, never onto an existing backup."""
    _sync_tree(work)
    for attempt in range(1, 1000):
        final = into / (name if attempt == 1 else f"{name}-{attempt}")
        if final.exists():
            continue
        os.rename(work, final)
        _sync_folder(into)  # the rename itself made durable
        return final
    raise FileExistsError(f"no free backup name for {name} in {into}")

"""`python -m sidecar backup DIR`: a consistent copy of a running node, in a new folder of DIR.

In this order, each part consistent in itself:
1. the sidecar's database (SQLite's online backup API; pg_dump from an exported snapshot);
2. Orthanc's index (a quiet-instant copy of its SQLite file, sidecar.operations.sqlite_snapshot;
   pg_dump for PostgreSQL), which therefore knows every study the sidecar's copy knows: what
   arrived in between is in the index's change log past the sidecar's cursor, and is registered
   by the restored sidecar as any late study is;
3. Orthanc's storage: the files the index copy names, copied after it, so each exists (files are
   immutable once written; one deleted in Orthanc meanwhile is recorded as missing).
Then the manifest, and the folder renamed from its temporary name: complete, or not there.
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
    INDEX_DUMP,
    INDEX_SQLITE,
    SIDECAR_DUMP,
    SIDECAR_SQLITE,
    STORAGE,
    Manifest,
)
from sidecar.operations.sqlite_snapshot import snapshot_sqlite, sqlite_online_copy

ORTHANC_SQLITE_INDEX = "index"  # the file Orthanc keeps in its IndexDirectory
_CHUNK = 1024 * 1024


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


def attachment_path(uuid: str) -> str:
    """Where Orthanc's filesystem storage keeps an attachment, relative to its folder."""
    return f"{uuid[0:2]}/{uuid[2:4]}/{uuid}"


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
    clock = time.monotonic()
    orthanc_counts, uuids = _copy_orthanc_index(
        files, work, index_timeout=index_timeout, timings=timings
    )
    timings["orthancIndexSeconds"] = round(time.monotonic() - clock, 3)
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
    for name in (SIDECAR_SQLITE, SIDECAR_DUMP, INDEX_SQLITE, INDEX_DUMP):
        if (work / name).exists():
            manifest.add_file(work, name)
    clock = time.monotonic()
    _copy_storage(files.storage_dir, uuids, work, manifest)
    timings["storageSeconds"] = round(time.monotonic() - clock, 3)
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


def _copy_storage(storage: Path, uuids: list[str], work: Path, manifest: Manifest) -> None:
    made: set[Path] = set()
    for uuid in sorted(uuids):
        relative = attachment_path(uuid)
        destination = work / STORAGE / relative
        if destination.parent not in made:
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        try:
            size, sha256 = copy_with_digest(storage / relative, destination)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                destination.unlink()
            manifest.missing_attachments.append(uuid)
            continue
        manifest.files[f"{STORAGE}/{relative}"] = {"size": size, "sha256": sha256}


def _complete(work: Path, into: Path, name: str) -> Path:
    """Renames the finished folder to its final name, never onto an existing backup."""
    for attempt in range(1, 1000):
        final = into / (name if attempt == 1 else f"{name}-{attempt}")
        if final.exists():
            continue
        os.rename(work, final)
        with contextlib.suppress(OSError):  # the rename itself made durable
            directory = os.open(into, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return final
    raise FileExistsError(f"no free backup name for {name} in {into}")

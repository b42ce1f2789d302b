"""A backup's manifest (manifest.json): what the backup holds, and the size and SHA-256 of each of
its files, which `verify-backup` and every restore check first.

A backup folder is complete when its manifest is there: the backup is written under a temporary
name and renamed once the manifest is written, so a crashed backup never looks complete.

A restore writes where the manifest says, so the manifest is read as hostile input: it names only
the backup's own files, in one canonical form (a database file, or `storage/xx/yy/<uuid>`); a
backup holds no symbolic link. The manifest is not signed: whoever can rewrite a backup can
rewrite its manifest too, which is why the backup store is kept as private as the service.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

FORMAT = "radiology-integration-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The backup's files, by what they are.
SIDECAR_SQLITE = "sidecar.sqlite"
SIDECAR_DUMP = "sidecar.pgdump"
INDEX_SQLITE = "orthanc-index.sqlite"
INDEX_DUMP = "orthanc-index.pgdump"
STORAGE = "storage"
DATABASE_FILES = (SIDECAR_SQLITE, SIDECAR_DUMP, INDEX_SQLITE, INDEX_DUMP)
_CHUNK = 1024 * 1024
# An attachment's name as Orthanc's filesystem storage writes it: a uuid (hex and dashes).
_UUID = re.compile(r"[0-9A-Za-z]{4}[0-9A-Za-z-]{0,60}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BackupInvalid(Exception):
    """The backup does not match its manifest; `problems` says how, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
        self.problems = problems


def attachment_path(uuid: str) -> str:
    """Where Orthanc's filesystem storage keeps an attachment, relative to its folder."""
    if not _UUID.fullmatch(uuid):
        raise ValueError(f"not an attachment uuid: {uuid!r}")
    return f"{uuid[0:2]}/{uuid[2:4]}/{uuid}"


def is_backup_name(relative: str) -> bool:
    """A name a manifest may hold: a database file, or an attachment under `storage/`, each in
    its one canonical spelling (no empty part, no `.` or `..`, not absolute)."""
    if relative in DATABASE_FILES:
        return True
    parts = relative.split("/")
    return (
        len(parts) == 4
        and parts[0] == STORAGE
        and PurePosixPath(relative).as_posix() == relative
        and bool(_UUID.fullmatch(parts[3]))
        and "/".join(parts[1:]) == attachment_path(parts[3])
    )


def file_digest(path: Path) -> tuple[int, str]:
    """The size and SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass
class Manifest:
    created_at: str
    node: str
    sidecar_version: str
    alembic_revision: str | None
    sidecar_database: str  # "sqlite" or "postgresql"
    orthanc_index: str  # "sqlite" or "postgresql"
    counts: dict[str, dict[str, int]]
    completed_at: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def add_file(self, root: Path, relative: str) -> None:
        size, sha256 = file_digest(root / relative)
        self.files[relative] = {"size": size, "sha256": sha256}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
            "node": self.node,
            "sidecarVersion": self.sidecar_version,
            "alembicRevision": self.alembic_revision,
            "databases": {"sidecar": self.sidecar_database, "orthancIndex": self.orthanc_index},
            "counts": self.counts,
            "timings": self.timings,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise BackupInvalid([f"{MANIFEST} is not a manifest of this service's backups"])
        if data.get("formatVersion") != FORMAT_VERSION:
            raise BackupInvalid(
                [f"backup format version {data.get('formatVersion')} (this sidecar reads"
                 f" {FORMAT_VERSION})"]
            )  # fmt: skip
        return cls(
            created_at=data["createdAt"],
            completed_at=data.get("completedAt", ""),
            node=data["node"],
            sidecar_version=data["sidecarVersion"],
            alembic_revision=data.get("alembicRevision"),
            sidecar_database=data["databases"]["sidecar"],
            orthanc_index=data["databases"]["orthancIndex"],
            counts=_checked_counts(data["counts"]),
            files=_checked_entries(data["files"]),
            timings=dict(data.get("timings", {})),
        )

    def write(self, folder: Path) -> None:
        """Written last, flushed to disk before the folder is renamed complete."""
        path = folder / MANIFEST
        with path.open("w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())


def _checked_counts(counts: Any) -> dict[str, dict[str, int]]:
    if not isinstance(counts, dict) or not all(
        isinstance(part, dict) and all(isinstance(n, int) for n in part.values())
        for part in counts.values()
    ):
        raise BackupInvalid([f"{MANIFEST}: 'counts' is not a set of numbers"])
    return counts


def _checked_entries(files: Any) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, each a size and a SHA-256: BackupInvalid names those that
    are not (a damaged manifest is a damaged backup, said in one line, not a traceback)."""
    if not isinstance(files, dict):
        raise BackupInvalid([f"{MANIFEST}: 'files' is not an object"])
    damaged = []
    for name, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not isinstance(sha256, str)
            or not _SHA256.fullmatch(sha256)
        ):
            damaged.append(f"{MANIFEST}: the entry of {name!r} is not a size and a SHA-256")
    if damaged:
        raise BackupInvalid(damaged)
    return files


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BackupInvalid([f"{folder} is not a folder"])
    if path.is_symlink():
        raise BackupInvalid([f"{MANIFEST} is a symbolic link: a backup holds none"])
    if not path.is_file():
        raise BackupInvalid([f"no {MANIFEST} in {folder}: not a backup, or an unfinished one"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupInvalid([f"{MANIFEST} cannot be read: {exc}"]) from None
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackupInvalid([f"{MANIFEST} lacks {exc}"]) from None


def verify(folder: Path) -> Manifest:
    """The manifest, once every file it lists has been found with its size and checksum, and
    every attachment the index copy names is among them; BackupInvalid lists every file
    missing, changed, unlisted or a symbolic link."""
    manifest = read_manifest(folder)
    problems: list[str] = []
    for relative, expected in sorted(manifest.files.items()):
        if not is_backup_name(relative):
            # A restore writes storage files where the manifest says: never outside the folder.
            problems.append(f"not a path inside the backup: {relative!r}")
            continue
        path = folder / relative
        if not _regular_file(path):
            problems.append(f"missing: {relative}")
            continue
        size, sha256 = file_digest(path)
        if size != expected["size"]:
            problems.append(f"size differs: {relative} ({size} bytes, manifest {expected['size']})")
        elif sha256 != expected["sha256"]:
            problems.append(f"checksum differs: {relative}")
    problems += _unlisted(folder, set(manifest.files) | {MANIFEST})
    expected_files = {
        "sidecar": (manifest.sidecar_database, SIDECAR_SQLITE, SIDECAR_DUMP),
        "Orthanc index": (manifest.orthanc_index, INDEX_SQLITE, INDEX_DUMP),
    }
    for what, (kind, sqlite_name, dump_name) in expected_files.items():
        name = sqlite_name if kind == "sqlite" else dump_name
        if name not in manifest.files:
            problems.append(f"the manifest lists no {name} for its {kind} {what} database")
    if not problems:
        problems += _attachments_lacking(folder, manifest)
    if problems:
        raise BackupInvalid(problems)
    return manifest


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Files the manifest does not list, and symbolic links (never followed: one would make a
    restore read, or write, outside the backup)."""
    problems = []
    for root, directories, names in os.walk(folder):
        for name in sorted(directories + names):
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"a symbolic link, which a backup never holds: {relative}")
            elif name in names and relative not in listed:
                problems.append(f"not in the manifest: {relative}")
    return problems


def _attachments_lacking(folder: Path, manifest: Manifest) -> list[str]:
    """The backup against its index copy: a file dropped with its manifest line is found.
    A SQLite copy is read (read-only) for the attachments it names; a PostgreSQL dump cannot be
    read without a server, so its count, recorded at backup time, is compared."""
    recorded = manifest.counts.get("orthanc", {}).get("attachments")
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        return ["the manifest records no count of the files Orthanc's index names"]
    stored = {name for name in manifest.files if name.startswith(f"{STORAGE}/")}
    if manifest.orthanc_index != "sqlite":
        if len(stored) != recorded:
            return [f"{len(stored)} storage files, and Orthanc's index named {recorded}"]
        return []
    try:
        uuids = index_attachments(folder / INDEX_SQLITE)
    except sqlite3.Error as exc:
        return [f"{INDEX_SQLITE} cannot be read: {exc}"]
    problems = []
    if len(uuids) != recorded:
        problems.append(f"{INDEX_SQLITE} names {len(uuids)} files, the manifest {recorded}")
    named = set()
    for uuid in uuids:
        try:
            named.add(f"{STORAGE}/{attachment_path(uuid)}")
        except ValueError:
            problems.append(f"{INDEX_SQLITE} names an attachment that is not a uuid: {uuid!r}")
    lacking = sorted(named - stored)
    if lacking:
        problems.append(
            f"{len(lacking)} file(s) {INDEX_SQLITE} names are not in the backup: {lacking[0]}"
            + (" ..." if len(lacking) > 1 else "")
        )
    extra = sorted(stored - named)
    if extra:
        problems.append(f"{len(extra)} storage file(s) {INDEX_SQLITE} does not name: {extra[0]}")
    return problems


def index_attachments(path: Path) -> list[str]:
    """The uuids of the attachments a SQLite copy of Orthanc's index names, read without
    writing anything beside it (immutable: no journal, no lock)."""
    connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
    try:
        return [str(row[0]) for row in connection.execute("SELECT uuid FROM AttachedFiles")]
    finally:
        connection.close()

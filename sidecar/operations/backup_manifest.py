"""A backup's manifest (manifest.json): what the backup holds, and the size and SHA-256 of each of
its files, which `verify-backup` and every restore check first.

A backup folder is complete when its manifest is there: the backup is written under a temporary
name and renamed once the manifest is written, so a crashed backup never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "radiology-integration-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The backup's files, by what they are.
SIDECAR_SQLITE = "sidecar.sqlite"
SIDECAR_DUMP = "sidecar.pgdump"
INDEX_SQLITE = "orthanc-index.sqlite"
INDEX_DUMP = "orthanc-index.pgdump"
STORAGE = "storage"
_CHUNK = 1024 * 1024


class BackupInvalid(Exception):
    """The backup does not match its manifest; `problems` says how, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
        self.problems = problems


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
    # Attachments the index names that were gone from the storage when it was copied: deleted
    # in Orthanc during the backup (their index rows go with them on the next deletion sweep).
    missing_attachments: list[str] = field(default_factory=list)
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
            "missingAttachments": self.missing_attachments,
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
            counts=data["counts"],
            files=data["files"],
            missing_attachments=list(data.get("missingAttachments", [])),
            timings=dict(data.get("timings", {})),
        )

    def write(self, folder: Path) -> None:
        """Written last, flushed to disk before the folder is renamed complete."""
        path = folder / MANIFEST
        with path.open("w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BackupInvalid([f"{folder} is not a folder"])
    if not path.is_file():
        raise BackupInvalid([f"no {MANIFEST} in {folder}: not a backup, or an unfinished one"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupInvalid([f"{MANIFEST} cannot be read: {exc}"]) from None
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError) as exc:
        raise BackupInvalid([f"{MANIFEST} lacks {exc}"]) from None


def _inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return (
        bool(relative)
        and not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in relative
    )


def verify(folder: Path) -> Manifest:
    """The manifest, once every file it lists has been found with its size and checksum;
    BackupInvalid lists every file missing, changed or unlisted."""
    manifest = read_manifest(folder)
    problems: list[str] = []
    for relative, expected in sorted(manifest.files.items()):
        if not _inside(relative):
            # A restore writes storage files where the manifest says: never outside the folder.
            problems.append(f"not a path inside the backup: {relative!r}")
            continue
        path = folder / relative
        if not path.is_file():
            problems.append(f"missing: {relative}")
            continue
        size, sha256 = file_digest(path)
        if size != expected["size"]:
            problems.append(f"size differs: {relative} ({size} bytes, manifest {expected['size']})")
        elif sha256 != expected["sha256"]:
            problems.append(f"checksum differs: {relative}")
    listed = set(manifest.files) | {MANIFEST}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() not in listed:
            problems.append(f"not in the manifest: {path.relative_to(folder).as_posix()}")
    expected = {
        "sidecar": (manifest.sidecar_database, SIDECAR_SQLITE, SIDECAR_DUMP),
        "Orthanc index": (manifest.orthanc_index, INDEX_SQLITE, INDEX_DUMP),
    }
    for what, (kind, sqlite_name, dump_name) in expected.items():
        name = sqlite_name if kind == "sqlite" else dump_name
        if name not in manifest.files:
            problems.append(f"the manifest lists no {name} for its {kind} {what} database")
    if problems:
        raise BackupInvalid(problems)
    return manifest

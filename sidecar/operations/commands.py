"""The operator's commands beside `serve`: backup, restore and verify-backup (`python -m sidecar
COMMAND`, `make backup`...). Each reads the service's own environment (Settings), says what it
did on stdout, why it failed on stderr in one line, and exits non-zero on failure."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import psycopg

from sidecar.core.settings import Settings
from sidecar.operations.backup import ServiceFiles, StorageIncomplete, take_backup
from sidecar.operations.backup_databases import DatabaseToolError
from sidecar.operations.backup_manifest import BackupInvalid, Manifest, verify
from sidecar.operations.restore import RestoreRefused, restore_backup
from sidecar.operations.sqlite_snapshot import SnapshotError

# What an operator can act on from one line (a database down, a disk full, a damaged backup).
_FAILURES = (
    BackupInvalid,
    StorageIncomplete,
    RestoreRefused,
    DatabaseToolError,
    SnapshotError,
    OSError,
    sqlite3.Error,
    psycopg.Error,
)


def _fail(command: str, exc: BaseException) -> int:
    message = "; ".join(exc.problems) if isinstance(exc, BackupInvalid) else str(exc)
    print(f"sidecar {command}: {message}", file=sys.stderr)
    return 1


def _describe(manifest: Manifest) -> str:
    sidecar = manifest.counts.get("sidecar", {})
    orthanc = manifest.counts.get("orthanc", {})
    return (
        f"{sidecar.get('studies', 0)} studies, {sidecar.get('orders', 0)} orders,"
        f" {sidecar.get('reports', 0)} reports; Orthanc: {orthanc.get('studies', 0)} studies,"
        f" {orthanc.get('instances', 0)} instances, {orthanc.get('attachments', 0)} files"
        f" (taken {manifest.created_at} on {manifest.node or 'unnamed node'})"
    )


def backup(settings: Settings, directory: Path, *, index_timeout: float) -> int:
    """Prints the new backup's path as its last line (scripts read it)."""
    try:
        folder = take_backup(
            ServiceFiles.from_settings(settings), directory, index_timeout=index_timeout
        )
        manifest = verify(folder)
    except _FAILURES as exc:
        return _fail("backup", exc)
    print(f"backup: {_describe(manifest)}")
    print(folder)
    return 0


def verify_backup(path: Path) -> int:
    try:
        manifest = verify(path)
    except BackupInvalid as exc:
        print(f"sidecar verify-backup: {path} does not match its manifest:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"verify-backup: {path} is complete: {len(manifest.files)} files, {_describe(manifest)}")
    return 0


def restore(settings: Settings, path: Path, *, force: bool) -> int:
    files = ServiceFiles.from_settings(settings)
    try:
        manifest = restore_backup(path, files, force=force)
    except _FAILURES as exc:
        return _fail("restore", exc)
    print(f"restore: {path} restored into DATA_DIR {files.data_dir}: {_describe(manifest)}")
    print("restore: start the service; studies stored after the backup are not there")
    return 0

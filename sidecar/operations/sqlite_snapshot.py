"""A consistent copy of a SQLite database that another process holds in exclusive locking mode:
Orthanc's index.

Orthanc opens its SQLite index with `PRAGMA LOCKING_MODE=EXCLUSIVE` in WAL mode (its wal-index
in Orthanc's memory, no -shm file): no other connection can read it while Orthanc runs, so the
online backup API answers "database is locked". What is left is the files themselves. The
database file and its WAL as they are at one instant are what a kill -9 at that instant would
leave, which SQLite recovers from by design (frames of an unfinished transaction are ignored).
A copy is such an instant when nothing was written to either file while it was read: inotify
reports every write to them (the kernel queues the event before write() returns), so the copy is
taken again until a read saw no write. The copy is then opened, its WAL folded in and checked.

Linux only (inotify), as the service is. A busy index is copied between two of Orthanc's
transactions: the copy of an index of a few hundred MB takes well under a second, a C-STORE
transaction a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

# <sys/inotify.h>
_IN_MODIFY = 0x00000002
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCHED = _IN_MODIFY | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class SnapshotError(RuntimeError):
    """No consistent copy could be taken (the database never held still, or the copy is bad)."""


class _Watch:
    """inotify on one directory: which of its entries were written to since the last drain."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise SnapshotError(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), _WATCHED) < 0:
            os.close(self._fd)
            raise SnapshotError(f"cannot watch {directory}: {os.strerror(ctypes.get_errno())}")

    def names(self) -> set[str]:
        """The entries changed since the last call (the queue is emptied)."""
        changed: set[str] = set()
        while True:
            try:
                buffer = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            except OSError as exc:  # an overflowed queue is a change like any other
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(buffer):
                _, _, _, length = _EVENT.unpack_from(buffer, offset)
                raw = buffer[offset + _EVENT.size : offset + _EVENT.size + length]
                changed.add(os.fsdecode(raw.rstrip(b"\0")) or "*")
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self._fd)


@contextlib.contextmanager
def _watching(directory: Path) -> Iterator[_Watch]:
    watch = _Watch(directory)
    try:
        yield watch
    finally:
        watch.close()


def _companions(database: Path) -> tuple[str, ...]:
    return (database.name, f"{database.name}-wal", f"{database.name}-journal", "*")


def snapshot_sqlite(
    database: Path, destination: Path, *, timeout: float = 300.0
) -> tuple[int, float]:
    """Copies `database` (and its WAL) at an instant nothing wrote to them, into `destination`
    as one self-contained SQLite file (WAL folded in, journal mode DELETE), integrity-checked.

    Returns how many attempts it took and the seconds spent. SnapshotError: no quiet instant
    within `timeout`, or the copy failed its check."""
    if not database.is_file():
        raise SnapshotError(f"no SQLite database at {database}")
    wal = database.with_name(database.name + "-wal")
    copied_wal = destination.with_name(destination.name + "-wal")
    watched = set(_companions(database))
    started = time.monotonic()
    attempts = 0
    pause = 0.002
    with _watching(database.parent) as watch:
        while True:
            attempts += 1
            watch.names()  # what happened before this attempt does not matter
            with contextlib.suppress(FileNotFoundError):
                copied_wal.unlink()
            try:
                # The WAL first: a checkpoint after it changes the database file, and is seen.
                if wal.exists():
                    shutil.copyfile(wal, copied_wal)
                shutil.copyfile(database, destination)
                disturbed = bool(watch.names() & watched)
            except FileNotFoundError:  # the WAL went away between exists() and the copy
                disturbed = True
            if not disturbed:
                break
            if time.monotonic() - started > timeout:
                raise SnapshotError(
                    f"{database} was written to during every copy for {timeout:.0f} s"
                    f" ({attempts} attempts): copy it while it is idle, or use a PostgreSQL"
                    " index (ORTHANC_INDEX_URL)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    _fold_wal(destination)
    return attempts, time.monotonic() - started


def _fold_wal(path: Path) -> None:
    """Recovers the copy (its WAL, as SQLite would after a crash), folds the WAL into the
    file and checks the result."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
        verdict = connection.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"the copy of the index is not a usable database: {exc}") from None
    finally:
        connection.close()
    if not verdict or verdict[0] != "ok":
        raise SnapshotError(f"the copy of the index failed its check: {verdict}")
    for leftover in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + leftover).unlink()


def sqlite_online_copy(source: Path, destination: Path, *, busy_timeout: float = 60.0) -> None:
    """SQLite's online backup API: a consistent copy of a database other connections may be
    writing (the sidecar's: WAL mode, normal locking), into a new file."""
    reader = sqlite3.connect(source, timeout=busy_timeout)
    writer = sqlite3.connect(destination)
    try:
        reader.backup(writer)
    finally:
        writer.close()
        reader.close()

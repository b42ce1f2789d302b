"""The DICOM Modality Worklist directory, sidecar side: one DICOM file per scheduled order
(sidecar.worklist.items), and the journal a reader follows.

Every SCHEDULED order becomes a worklist file ``<key>.wl`` in the worklist directory; a cancelled
or completed order's file is removed. The sidecar is the only writer; Orthanc answers C-FIND
from the directory without ever calling the sidecar, so the worklist keeps working while the
sidecar is down. Two readers can serve the same directory:

* the Python plugin's in-memory cache (``plugin/worklist_cache.py``, the mechanism in use): it
  follows the journal below and re-reads only the files that changed;
* Orthanc's ModalityWorklists plugin, which re-reads every ``*.wl`` file on each C-FIND (0.3-0.6 s
  per query at 10,000 items): the benchmark's baseline and a fallback that needs no Python.

Directory format, version 1 (``plugin/worklist_cache.py`` is the reader):

``<key>.wl``
    DICOM Part-10 file, Explicit VR Little Endian, one per scheduled order.
``journal-<epoch>.jsonl``
    One JSON object per line: ``{"op": "put", "key", "rev", "keys"}`` after a file was written,
    ``{"op": "del", "key", "rev"}`` before it is removed. ``keys`` holds the values the reader
    pre-filters on (see ``index_keys``), so the plugin never parses DICOM itself (Debian's
    embedded Python has no pydicom). A new epoch starts with a snapshot of the live items, at
    ``replace_all`` and when the journal has grown to a few times the number of items.
``generation``
    The marker, replaced after every change: ``{"format", "lineage", "epoch", "length",
    "generation"}``. A reader trusts the journal up to ``length`` bytes only. ``lineage`` is
    random per directory, so revisions are never compared across a re-created directory.
``.lock``
    ``flock`` between writers in several processes.

A change costs one small file, one journal line and the marker, whatever the number of items:
rewriting a whole index on every order would cost milliseconds per order at 10,000 items.
``update`` writes a batch of changes with one journal append and one marker write.

Every file goes to a temporary name first and is renamed, so a reader never sees half a file;
with ``durable`` (the default) data is fsync'ed before the rename and the directory after it,
so a power cut leaves the old or the new state. The sidecar calls ``replace_all`` at start-up
anyway, to reconcile the directory with the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from sidecar.worklist.items import KEY, WorklistItem, encode, index_keys

FORMAT_VERSION = 1
MARKER_NAME = "generation"
LOCK_NAME = ".lock"
FILE_SUFFIX = ".wl"
_TEMP_PREFIX = ".tmp-"
_JOURNAL = re.compile(r"journal-[0-9]+\.jsonl\Z")
# A journal that many lines longer than the item count is rewritten as a snapshot.
_COMPACT_SLACK = 256


class WorklistDirectoryError(RuntimeError):
    """The directory's marker or journal is unreadable; ``replace_all`` rebuilds them."""


@dataclass
class _State:
    lineage: str = ""
    epoch: int = 0
    length: int = 0  # committed journal bytes
    generation: int = 0
    lines: int = 0
    live: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)  # rev, keys
    marker: bytes = b""  # as last read or written: another writer changes it


class WorklistDirectory:
    """The worklist directory, written atomically; safe across threads and processes."""

    def __init__(self, path: Path, tz: tzinfo, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.tz = tz
        self._durable = durable
        self._mutex = threading.Lock()
        self._state = _State()

    @property
    def durable(self) -> bool:
        return self._durable

    @property
    def generation(self) -> int:
        with self._locked() as state:
            return state.generation

    def keys(self) -> frozenset[str]:
        with self._locked() as state:
            return frozenset(state.live)

    def publish(self, item: WorklistItem) -> None:
        """Adds or replaces the item; an unchanged item leaves the directory untouched."""
        self.update(publish=[item])

    def withdraw(self, key: str) -> bool:
        """Removes the item; False if there was none."""
        return key in self.update(withdraw=[key])

    def update(
        self, publish: Iterable[WorklistItem] = (), withdraw: Iterable[str] = ()
    ) -> set[str]:
        """Publishes and withdraws several items at once: one lock, one journal append and one
        marker write for the whole batch (a file per published item remains). Unchanged items
        are left untouched. Returns the withdrawn keys that were offered or had a file."""
        wanted: dict[str, tuple[bytes, dict[str, str]]] = {}
        for item in publish:
            if item.key in wanted:
                raise ValueError(f"two worklist items with key {item.key!r}")
            wanted[item.key] = (encode(item, self.tz), index_keys(item, self.tz))
        unwanted = set(withdraw)
        for key in unwanted:
            if not KEY.match(key):
                raise ValueError(f"worklist key {key!r}: 1-64 of A-Z a-z 0-9 . _ -")
            if key in wanted:
                raise ValueError(f"worklist key {key!r} both published and withdrawn")
        with self._locked() as state:
            records: list[dict[str, Any]] = []
            for key, (data, keys) in wanted.items():
                target = self._file(key)
                current = state.live.get(key)
                if current is not None and current[1] == keys and _read_or_none(target) == data:
                    continue
                self._write_atomic(target, data)
                records.append({"op": "put", "key": key, "keys": keys})
            # Journal first: readers stop offering the items before their files go away.
            records.extend({"op": "del", "key": key} for key in unwanted if key in state.live)
            if records:
                for record, rev in zip(records, self._commit(state, records), strict=True):
                    if record["op"] == "put":
                        state.live[record["key"]] = (rev, record["keys"])
                    else:
                        del state.live[record["key"]]
                self._compact_if_long(state)
            withdrawn = {record["key"] for record in records if record["op"] == "del"}
            for key in unwanted:
                with contextlib.suppress(FileNotFoundError):
                    self._file(key).unlink()
                    withdrawn.add(key)
            if records or withdrawn:
                self._sync_directory()
            return withdrawn

    def replace_all(self, items: Iterable[WorklistItem]) -> None:
        """Makes the directory hold exactly ``items`` (start-up reconciliation with the
        database). Unchanged files are not rewritten, so readers keep their cached copies; a
        broken marker or journal is replaced rather than reported."""
        wanted: dict[str, tuple[bytes, dict[str, str]]] = {}
        for item in items:
            if item.key in wanted:
                raise ValueError(f"two worklist items with key {item.key!r}")
            wanted[item.key] = (encode(item, self.tz), index_keys(item, self.tz))
        with self._locked(recover=True) as state:
            renames = [
                (self._write_temporary(self._file(key), data), key)
                for key, (data, _) in wanted.items()
                if _read_or_none(self._file(key)) != data
            ]
            if renames and self._durable:
                # One flush for every new file: an fsync per file costs ~1.5 ms here, 15 s for
                # 10,000 items.
                os.sync()
            for temporary, key in renames:
                os.replace(temporary, self._file(key))
            rewritten = {key for _, key in renames}
            rev = state.generation + 1  # the new epoch's number: above every earlier revision
            live = {}
            for key, (_, keys) in wanted.items():
                current = state.live.get(key)
                unchanged = current is not None and current[1] == keys and key not in rewritten
                live[key] = current if unchanged and current is not None else (rev, keys)
            self._start_epoch(state, live)
            # The journal no longer offers them: now the files can go, with any crash leftovers.
            for entry in os.scandir(self.path):
                stale_item = (
                    entry.name.endswith(FILE_SUFFIX) and entry.name[: -len(FILE_SUFFIX)] not in live
                )
                if stale_item or entry.name.startswith(_TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            self._sync_directory()

    # -- files -----------------------------------------------------------------------------

    def _file(self, key: str) -> Path:
        return self.path / f"{key}{FILE_SUFFIX}"

    def _journal(self, epoch: int) -> Path:
        return self.path / f"journal-{epoch}.jsonl"

    def _write_temporary(self, target: Path, data: bytes, *, sync: bool = False) -> Path:
        temporary = self.path / f"{_TEMP_PREFIX}{target.name}.{secrets.token_hex(4)}"
        with open(temporary, "wb", opener=_private) as stream:
            stream.write(data)
            if sync and self._durable:
                stream.flush()
                os.fsync(stream.fileno())
        return temporary

    def _write_atomic(self, target: Path, data: bytes) -> None:
        os.replace(self._write_temporary(target, data, sync=True), target)

    def _sync_directory(self) -> None:
        if self._durable:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    # -- journal and marker ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, recover: bool = False) -> Iterator[_State]:
        with self._mutex:
            # Patients' names, ids and birth dates: this user's only, whatever the umask.
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path / LOCK_NAME, "a+b", opener=_private) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
                try:
                    self._state = self._current_state(recover=recover)
                    yield self._state
                except BaseException:
                    self._state = _State()  # half-done in memory: read the disk again next time
                    raise

    def _current_state(self, *, recover: bool) -> _State:
        try:
            marker = (self.path / MARKER_NAME).read_bytes()
        except FileNotFoundError:
            return _State()
        if marker == self._state.marker:
            return self._state
        try:
            return self._load(marker)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if recover:
                return _State()
            raise WorklistDirectoryError(
                f"worklist directory {self.path} is damaged ({type(exc).__name__}: {exc}); "
                "replace_all rebuilds it"
            ) from exc

    def _load(self, marker: bytes) -> _State:
        fields: dict[str, Any] = json.loads(marker)
        if fields.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown worklist directory format {fields.get('format')!r}")
        state = _State(
            lineage=str(fields["lineage"]),
            epoch=int(fields["epoch"]),
            length=int(fields["length"]),
            generation=int(fields["generation"]),
            marker=marker,
        )
        with open(self._journal(state.epoch), "r+b") as journal:
            data = journal.read(state.length)
            if len(data) != state.length:
                raise ValueError("journal shorter than the marker says")
            # A writer that died between its append and its marker left lines nobody committed.
            journal.truncate(state.length)
        for line in data.splitlines():
            record = json.loads(line)
            state.lines += 1
            if record["op"] == "put":
                state.live[record["key"]] = (int(record["rev"]), dict(record["keys"]))
            else:
                state.live.pop(record["key"], None)
        return state

    def _commit(self, state: _State, records: list[dict[str, Any]]) -> list[int]:
        """Appends journal lines and publishes them through the marker; returns their revs."""
        if not state.lineage:
            self._start_epoch(state, {})
        revs = list(range(state.generation + 1, state.generation + 1 + len(records)))
        state.generation = revs[-1]
        lines = b"".join(
            _json_line({**record, "rev": rev}) for record, rev in zip(records, revs, strict=True)
        )
        with open(self._journal(state.epoch), "r+b") as journal:
            journal.seek(state.length)
            journal.write(lines)
            journal.truncate()
            journal.flush()
            if self._durable:
                os.fsync(journal.fileno())
        state.length += len(lines)
        state.lines += len(records)
        self._write_marker(state)
        return revs

    def _compact_if_long(self, state: _State) -> None:
        if state.lines > 2 * len(state.live) + _COMPACT_SLACK:
            self._start_epoch(state, state.live)

    def _start_epoch(self, state: _State, live: dict[str, tuple[int, dict[str, str]]]) -> None:
        """A new journal holding one put per live item, then the marker pointing at it."""
        if not state.lineage:
            state.lineage = secrets.token_hex(8)
        state.generation += 1
        snapshot = b"".join(
            _json_line({"op": "put", "key": key, "rev": rev, "keys": keys})
            for key, (rev, keys) in sorted(live.items())
        )
        self._write_atomic(self._journal(state.generation), snapshot)
        state.epoch, state.length, state.lines = state.generation, len(snapshot), len(live)
        state.live = dict(live)
        self._write_marker(state)
        for entry in os.scandir(self.path):
            if _JOURNAL.match(entry.name) and entry.name != self._journal(state.epoch).name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _write_marker(self, state: _State) -> None:
        marker = _json_line(
            {
                "format": FORMAT_VERSION,
                "lineage": state.lineage,
                "epoch": state.epoch,
                "length": state.length,
                "generation": state.generation,
            }
        )
        self._write_atomic(self.path / MARKER_NAME, marker)
        state.marker = marker


def _private(path: str, flags: int) -> int:
    """An `opener` for open(): a file it creates is readable and writable by this user only."""
    return os.open(path, flags, 0o600)


def _json_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None

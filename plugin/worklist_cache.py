"""Answering worklist C-FINDs from memory: a copy of the sidecar's worklist directory.

Pure logic, free of the ``orthanc`` module: the entry script (``sidecar_bridge.py``) passes in
the logger and the function that turns a query into Orthanc's "short" JSON. Runs on Orthanc's
embedded Python (Debian's 3.11): stdlib only, no syntax newer than 3.11, no pydicom.

Why a cache: Orthanc's ModalityWorklists plugin reads and parses every file on every C-FIND
(0.3-0.6 s per query at 10,000 items, bench/worklist.py). Here a C-FIND costs one read of the
small marker file when nothing changed; after a change, only the new journal lines and the files
they name are read. The marker is read, not stat()ed: the writer replaces it by rename, which can
reuse an inode, and file times tick coarsely, so (inode, mtime, size) can repeat across a change;
reading its hundred bytes costs about what a stat() does. No network call, so the worklist
answers while the sidecar is down, and after an Orthanc restart the directory is read again.

The directory (written by ``sidecar/worklist/directory.py``, which documents the format):
``<key>.wl`` DICOM files, ``journal-<epoch>.jsonl`` (put/del lines with each item's pre-filter
values), and the ``generation`` marker (lineage, epoch, committed journal length).

The pre-filter only narrows the candidates; Orthanc's ``WorklistIsMatch`` decides on each. It is
conservative by construction: it may keep an item Orthanc then rejects, never drop one Orthanc
would accept. It uses exact and list matching on AccessionNumber and PatientID, Modality and
ScheduledStationAETitle in the Scheduled Procedure Step, and date ranges on the step's start
date; wildcards and anything unusual are left to Orthanc.
"""

import bisect
import json
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
MARKER_NAME = "generation"
FILE_SUFFIX = ".wl"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DICOM_DATE = re.compile(r"[0-9]{8}\Z")

# Orthanc's "short" JSON names tags "gggg,eeee".
_TOP_LEVEL_KEYS = {"0008,0050": "AccessionNumber", "0010,0020": "PatientID"}
_STEP_SEQUENCE = "0040,0100"
_STEP_KEYS = {"0008,0060": "Modality", "0040,0001": "ScheduledStationAETitle"}
_STEP_START_DATE = "0040,0002"
START_DATE = "ScheduledProcedureStepStartDate"
INDEXED = ("AccessionNumber", "PatientID", "Modality", "ScheduledStationAETitle")
_ALL_KEYS = (*INDEXED, START_DATE)


def _exact_values(value: object) -> frozenset[str] | None:
    """Accepted values of a single-value or list key; None when Orthanc must decide alone."""
    if not isinstance(value, str) or not value.strip():
        return None  # absent, null or empty: universal matching
    if "*" in value or "?" in value:
        return None  # wildcard matching
    # Compared after strip() on both sides: equal strings stay equal, so nothing is dropped.
    return frozenset(part.strip() for part in value.split("\\"))


def _date_range(value: object) -> tuple[str, str] | None:
    """``(lower, upper)``, inclusive, "" for an open end; None when Orthanc must decide alone.

    Like Orthanc, splits at the first "-". The bounds must be plain YYYYMMDD: comparing
    anything else (a leading space, say) as Orthanc does would need its exact string rules.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    lower, _, upper = value.partition("-") if "-" in value else (value, "", value)
    if all(not bound or _DICOM_DATE.match(bound) for bound in (lower, upper)):
        return (lower, upper)
    return None


@dataclass(frozen=True)
class QueryFilter:
    """What the pre-filter takes from a query: accepted values per key, and a date range."""

    values: Mapping[str, frozenset[str]]
    date_range: tuple[str, str] | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "QueryFilter":
        """From the query in Orthanc's short JSON (``DicomBufferToJson``)."""
        values: dict[str, frozenset[str]] = {}
        for tag, keyword in _TOP_LEVEL_KEYS.items():
            accepted = _exact_values(query.get(tag))
            if accepted is not None:
                values[keyword] = accepted
        date_range = None
        steps = query.get(_STEP_SEQUENCE)
        # Orthanc matches a sequence on its single query item; an empty one matches anything.
        if isinstance(steps, list) and len(steps) == 1 and isinstance(steps[0], dict):
            for tag, keyword in _STEP_KEYS.items():
                accepted = _exact_values(steps[0].get(tag))
                if accepted is not None:
                    values[keyword] = accepted
            date_range = _date_range(steps[0].get(_STEP_START_DATE))
        return cls(values, date_range)

    def accepts(self, keys: Mapping[str, str]) -> bool:
        for keyword, accepted in self.values.items():
            if keys[keyword] not in accepted:
                return False
        if self.date_range is not None:
            lower, upper = self.date_range
            day = keys[START_DATE]
            if (lower and day < lower) or (upper and day > upper):
                return False
        return True


@dataclass(frozen=True)
class _Entry:
    rev: int
    keys: Mapping[str, str]  # stripped, as QueryFilter compares them
    dicom: bytes


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


class WorklistCache:
    """The directory's items in memory, indexed by the pre-filter keys.

    ``refresh`` never raises: on an unreadable directory it logs once and keeps serving what it
    had. ``read_file`` is injectable so tests can count the reads.
    """

    def __init__(
        self,
        directory: str,
        *,
        log: Callable[[str], None],
        read_file: Callable[[str], bytes] = _read_bytes,
    ) -> None:
        self.directory = directory
        self._log = log
        self._read = read_file
        # Orthanc runs C-FINDs on several DICOM threads, and SDK calls may release the GIL.
        self._lock = threading.Lock()
        self._marker: bytes | None = None  # None: never read, so a missing marker is reported
        self._lineage = ""
        self._epoch = -1
        self._offset = 0
        self._entries: dict[str, _Entry] = {}
        self._by_value: dict[str, dict[str, set[str]]] = {keyword: {} for keyword in INDEXED}
        self._by_date: list[tuple[str, str]] = []  # (date, key), sorted
        self._logged: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def refresh(self) -> bool:
        """Brings the cache up to date; True if anything was re-read."""
        with self._lock:
            try:
                marker = self._read(os.path.join(self.directory, MARKER_NAME))
            except FileNotFoundError:
                marker = b""
            except OSError as exc:
                self._log_once(f"worklist marker unreadable ({exc}); serving the previous items")
                return False
            if marker == self._marker:
                return False
            try:
                self._apply(marker)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._log_once(
                    f"worklist directory {self.directory} not reloaded "
                    f"({type(exc).__name__}: {exc}); serving the previous items"
                )
                return False
            return True

    def candidates(self, query: QueryFilter) -> list[bytes]:
        """The files of the items the query may match (Orthanc decides on each)."""
        with self._lock:
            pools: list[Collection[str]] = []
            for keyword, accepted in query.values.items():
                buckets = [self._by_value[keyword].get(value, ()) for value in accepted]
                pools.append(set().union(*buckets) if len(buckets) > 1 else buckets[0])
            if query.date_range is not None:
                lower, upper = query.date_range
                first = bisect.bisect_left(self._by_date, lower, key=_day) if lower else 0
                end = bisect.bisect_right(self._by_date, upper, key=_day) if upper else None
                pools.append([key for _, key in self._by_date[first:end]])
            pool = min(pools, key=len) if pools else self._entries
            entries = self._entries
            return [entries[key].dicom for key in pool if query.accepts(entries[key].keys)]

    # -- loading ---------------------------------------------------------------------------

    def _apply(self, marker: bytes) -> None:
        if not marker:
            self._rebuild({})
            self._marker, self._lineage, self._epoch, self._offset = b"", "", -1, 0
            self._log_once(f"worklist directory {self.directory} has no items published yet")
            return
        fields = json.loads(marker)
        if fields.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown worklist directory format {fields.get('format')!r}")
        lineage, epoch, length = str(fields["lineage"]), int(fields["epoch"]), int(fields["length"])
        same_journal = lineage == self._lineage and epoch == self._epoch and length >= self._offset
        start = self._offset if same_journal else 0
        latest: dict[str, Mapping[str, Any]] = {}  # last record per key wins
        for record in self._journal_records(epoch, start, length):
            latest[str(record["key"])] = record
        # Cached files are reused when the revision is the same; revisions are only
        # comparable within one lineage (a re-created directory starts again at 1).
        cached = self._entries if lineage == self._lineage else {}
        loaded = {  # every file is read before anything changes, so a failure changes nothing
            key: self._load_entry(key, record, cached.get(key))
            for key, record in latest.items()
            if record["op"] == "put"
        }
        if same_journal:
            for key in latest:
                if key in self._entries:
                    self._remove(key)
                entry = loaded.get(key)
                if entry is not None:
                    self._add(key, entry)
        else:
            self._rebuild({key: entry for key, entry in loaded.items() if entry is not None})
        self._marker, self._lineage, self._epoch, self._offset = marker, lineage, epoch, length

    def _journal_records(self, epoch: int, start: int, length: int) -> list[Mapping[str, Any]]:
        path = os.path.join(self.directory, f"journal-{epoch}.jsonl")
        with open(path, "rb") as journal:
            journal.seek(start)
            data = journal.read(length - start)
        if len(data) != length - start or (data and not data.endswith(b"\n")):
            raise ValueError(f"{path} is shorter than the marker says")
        records = [json.loads(line) for line in data.splitlines()]
        for record in records:
            if record["op"] not in ("put", "del") or not _KEY.match(str(record["key"])):
                raise ValueError(f"malformed journal line in {path}: {record!r}")
        return records

    def _load_entry(
        self, key: str, record: Mapping[str, Any], cached: _Entry | None
    ) -> _Entry | None:
        rev = int(record["rev"])
        keys = {keyword: str(record["keys"][keyword]).strip() for keyword in _ALL_KEYS}
        if cached is not None and cached.rev == rev:
            return _Entry(rev, keys, cached.dicom)
        try:
            dicom = self._read(os.path.join(self.directory, key + FILE_SUFFIX))
        except FileNotFoundError:
            # Withdrawn since the marker was read (the next marker says so), or lost.
            self._log_once(f"worklist item {key} (rev {rev}) has no file; not offered")
            return None
        return _Entry(rev, keys, dicom)

    def _add(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        for keyword in INDEXED:
            self._by_value[keyword].setdefault(entry.keys[keyword], set()).add(key)
        bisect.insort(self._by_date, (entry.keys[START_DATE], key))

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        for keyword in INDEXED:
            bucket = self._by_value[keyword][entry.keys[keyword]]
            bucket.discard(key)
            if not bucket:
                del self._by_value[keyword][entry.keys[keyword]]
        position = bisect.bisect_left(self._by_date, (entry.keys[START_DATE], key))
        del self._by_date[position]

    def _rebuild(self, entries: dict[str, _Entry]) -> None:
        self._entries = {}
        self._by_value = {keyword: {} for keyword in INDEXED}
        self._by_date = []
        for key, entry in entries.items():
            self._entries[key] = entry
            for keyword in INDEXED:
                self._by_value[keyword].setdefault(entry.keys[keyword], set()).add(key)
        # One sort instead of an insort per item (quadratic at 10,000 items).
        self._by_date = sorted((entry.keys[START_DATE], key) for key, entry in entries.items())

    def _log_once(self, message: str) -> None:
        # A broken directory would otherwise log on every C-FIND.
        if message not in self._logged:
            self._logged.add(message)
            self._log(message)


def _day(pair: tuple[str, str]) -> str:
    return pair[0]


class WorklistHandler:
    """The worklist callback: ``(answers, query, issuer_aet, called_aet)`` as Orthanc calls it.

    ``query_json`` turns Orthanc's query object into its short JSON (the entry script uses
    ``orthanc.DicomBufferToJson``). A query it cannot read is pre-filtered on nothing; an item
    Orthanc cannot parse is skipped and logged once, so one bad file never fails a C-FIND.
    """

    def __init__(
        self,
        cache: WorklistCache,
        *,
        query_json: Callable[[Any], Mapping[str, Any]],
        log: Callable[[str], None],
    ) -> None:
        self._cache = cache
        self._query_json = query_json
        self._log = log
        self._logged: set[str] = set()

    def __call__(self, answers: Any, query: Any, issuer_aet: str, called_aet: str) -> None:
        self._cache.refresh()
        try:
            query_filter = QueryFilter.from_query(self._query_json(query))
        except Exception as exc:  # a pre-filter is an optimisation: never fail the C-FIND on it
            self._log_once(f"worklist query not pre-filtered ({type(exc).__name__}: {exc})")
            query_filter = QueryFilter({})
        for dicom in self._cache.candidates(query_filter):
            try:
                matched = query.WorklistIsMatch(dicom)
            except Exception as exc:
                self._log_once(f"worklist item skipped: Orthanc cannot read it ({exc})")
                continue
            if matched:
                answers.WorklistAddAnswer(query, dicom)

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            self._log(message)

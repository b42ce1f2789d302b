"""DICOM senders for tests: C-STORE with DCMTK's storescu or pynetdicom, and C-ECHO.

Both C-STORE senders use one association for all files and report one DICOM status per input,
in input order, so tests can assert on each file.

Nagle: Debian's DCMTK disables Nagle's algorithm only when `TCP_NODELAY=1` is in the environment
(about 10 instances/s without it against 70-140/s with it). `storescu_dcmtk` always sets it for
the child; pynetdicom has no socket-option setting, so `store_pynetdicom` and `echo` set
TCP_NODELAY on the connected socket from an EVT_CONN_OPEN handler, which pynetdicom runs after
connect() and before the A-ASSOCIATE-RQ is sent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.events import EventHandlerType

__all__ = [
    "STORESCU",
    "SUCCESS",
    "EchoError",
    "FileStoreStatus",
    "StoreError",
    "StoreResult",
    "StorescuError",
    "echo",
    "is_success",
    "store_pynetdicom",
    "storescu_dcmtk",
]

STORESCU: Final = Path("/usr/bin/storescu")
_VERIFICATION: Final = "1.2.840.10008.1.1"
SUCCESS: Final = 0x0000
_MAX_CONTEXTS: Final = 128

_SENDING = re.compile(r"^I: Sending file: (?P<path>.*)$")
_STATUS = re.compile(r"^D: DIMSE Status\s*:\s*0x(?P<code>[0-9a-fA-F]{4})(?::\s*(?P<text>.*))?$")
_IGNORED = re.compile(r"^W: .* in file: (?P<path>.*), ignoring file$")
_ERROR = re.compile(r"^E: (?P<message>.*)$")


def is_success(status: int | None) -> bool:
    """True for 0x0000 only (warnings 0x0001, 0xB000-0xBFFF are not counted as success)."""
    return status == SUCCESS


class StoreError(RuntimeError):
    """A C-STORE session could not be run (association refused, aborted, bad input)."""


class EchoError(RuntimeError):
    """C-ECHO could not be run (no association)."""


@dataclass(frozen=True)
class FileStoreStatus:
    """The outcome for one input file.

    `status` is the DIMSE status of the C-STORE response, or None when storescu did not send
    the file (it skipped it as unreadable, or an earlier error ended the association); `message`
    holds storescu's error or warning lines for this file, if any.
    """

    path: Path
    status: int | None
    message: str = ""

    @property
    def ok(self) -> bool:
        return is_success(self.status)


@dataclass(frozen=True)
class StoreResult:
    """What `storescu_dcmtk` did: one `FileStoreStatus` per input, in input order."""

    files: tuple[FileStoreStatus, ...]
    returncode: int
    elapsed_s: float
    stdout: str
    stderr: str

    @property
    def statuses(self) -> list[int | None]:
        return [f.status for f in self.files]

    @property
    def all_success(self) -> bool:
        return bool(self.files) and all(f.ok for f in self.files)

    @property
    def failed(self) -> list[FileStoreStatus]:
        return [f for f in self.files if not f.ok]

    @property
    def instances_per_second(self) -> float:
        sent = sum(1 for f in self.files if f.status is not None)
        return sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class StorescuError(StoreError):
    """storescu exited with a non-zero code; `result` holds what could be parsed."""

    def __init__(self, result: StoreResult, command: Sequence[str]) -> None:
        self.result = result
        self.command = list(command)
        tail = "\n".join(result.stderr.strip().splitlines()[-40:])
        super().__init__(
            f"{STORESCU} exited with code {result.returncode} "
            f"({sum(f.status is not None for f in result.files)}/{len(result.files)} files "
            f"answered)\ncommand: {' '.join(self.command[:12])}"
            f"{' ...' if len(self.command) > 12 else ''}\nstderr (last lines):\n{tail}"
        )


# --- DCMTK storescu -------------------------------------------------------------------------


def storescu_dcmtk(
    files: Iterable[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "TESTSCU",
    timeout: float = 60,
    *,
    check: bool = True,
    halt_on_failure: bool = False,
) -> StoreResult:
    """Send `files` to `host:port` with `/usr/bin/storescu` in one association.

    Runs with `TCP_NODELAY=1`, proposes only the presentation contexts the files need (`-R`),
    and by default keeps going after a failed store (`-nh`), so every file gets a status.
    Per-file statuses are read from storescu's debug log ("DIMSE Status : 0x....").
    Files storescu cannot read (non-DICOM, no SOP Class/Instance UID) are skipped by it and get
    status None with its warning as `message`. Note that storescu's exit code is 0 even when the
    peer refuses a store under `-nh`: assert on the statuses.

    `timeout` bounds the whole run (and is passed as the ACSE/DIMSE/socket timeout). With
    `check` (default) a non-zero exit raises `StorescuError` carrying the parsed result.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("no files to send")
    seconds = max(1, int(timeout))
    command = [
        str(STORESCU),
        "-d",
        "-R",
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-to",
        str(seconds),
        "-ta",
        str(seconds),
        "-td",
        str(seconds),
        "-ts",
        str(seconds),
    ]
    if not halt_on_failure:
        command.append("-nh")
    command += [host, str(port)]
    command += [str(p) for p in paths]
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout + 10,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StoreError(f"{STORESCU} not found: install dcmtk") from exc
    except subprocess.TimeoutExpired as exc:
        raise StoreError(
            f"{STORESCU} did not finish within {timeout + 10:.0f} s sending {len(paths)} files"
        ) from exc
    elapsed = time.perf_counter() - started
    result = StoreResult(
        files=tuple(_parse_storescu_log(paths, proc.stderr + "\n" + proc.stdout)),
        returncode=proc.returncode,
        elapsed_s=elapsed,
        stdout=proc.stdout,
        stderr=proc.stderr,
    )
    if check and proc.returncode != 0:
        raise StorescuError(result, command)
    return result


def _parse_storescu_log(paths: list[Path], log: str) -> list[FileStoreStatus]:
    """Match storescu's log lines to the input files (it sends in command-line order)."""
    statuses: list[int | None] = [None] * len(paths)
    messages: list[list[str]] = [[] for _ in paths]
    names = [str(p) for p in paths]
    next_index = 0  # first input not yet matched to a "Sending file" line
    current: int | None = None
    for raw in log.splitlines():
        line = raw.rstrip("\r")
        if m := _SENDING.match(line):
            current = _find(names, m["path"], next_index)
            if current is not None:
                next_index = current + 1
            continue
        if m := _IGNORED.match(line):
            index = _find(names, m["path"], 0)
            if index is not None:
                messages[index].append(line[3:])
            continue
        if m := _STATUS.match(line):
            if current is not None and statuses[current] is None:
                statuses[current] = int(m["code"], 16)
            continue
        if (m := _ERROR.match(line)) and current is not None:
            messages[current].append(m["message"])
    return [
        FileStoreStatus(path=p, status=s, message="\n".join(msg))
        for p, s, msg in zip(paths, statuses, messages, strict=True)
    ]


def _find(names: list[str], name: str, start: int) -> int | None:
    for i in range(start, len(names)):
        if names[i] == name:
            return i
    return None


# --- pynetdicom -----------------------------------------------------------------------------

_CHUNKED_LOCK = threading.Lock()


def _set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _nodelay_handlers() -> list[EventHandlerType]:
    return [(evt.EVT_CONN_OPEN, _set_nodelay)]


@dataclass(frozen=True)
class _Item:
    source: Path | Dataset
    sop_class_uid: str
    transfer_syntax: str
    chunked: bool  # send a Path straight from its file meta (no full parse)


def _describe(item: Path | Dataset) -> _Item:
    if isinstance(item, Dataset):
        meta = getattr(item, "file_meta", None)
        ts = getattr(meta, "TransferSyntaxUID", None)
        if ts is None:
            raise ValueError(
                "a Dataset sent with pynetdicom needs file_meta.TransferSyntaxUID "
                "(pynetdicom picks the presentation context from it)"
            )
        sop_class = getattr(item, "SOPClassUID", None)
        if sop_class is None:
            raise ValueError("a Dataset sent with pynetdicom needs SOPClassUID")
        return _Item(item, str(sop_class), str(ts), chunked=False)
    path = Path(item)
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError) as exc:
        raise ValueError(f"{path}: not a DICOM Part-10 file: {exc}") from exc
    sop_class = meta.get("MediaStorageSOPClassUID")
    ts = meta.get("TransferSyntaxUID")
    if sop_class and ts and meta.get("MediaStorageSOPInstanceUID"):
        return _Item(path, str(sop_class), str(ts), chunked=True)
    ds = dcmread(path, force=True)
    sop_class = getattr(ds, "SOPClassUID", None)
    if sop_class is None:
        raise ValueError(f"{path}: no SOP Class UID in the file meta or the data set")
    return _Item(path, str(sop_class), str(ts or ExplicitVRLittleEndian), chunked=False)


@contextmanager
def _chunked_sending(enabled: bool) -> Iterator[None]:
    """pynetdicom's only switch for sending a file as-is (UIDs from the file meta, data set
    streamed unparsed) is the module-global `_config.STORE_SEND_CHUNKED_DATASET`, read by
    send_c_store() for Path arguments only (Datasets are unaffected); flip it for one
    association under a lock and restore it."""
    if not enabled:
        yield
        return
    with _CHUNKED_LOCK:
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            yield
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous


def store_pynetdicom(
    files_or_datasets: Iterable[Path | Dataset],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "PYNETDICOM",
    *,
    timeout: float = 60,
) -> list[int]:
    """C-STORE every item over one pynetdicom association; returns one DIMSE status per item.

    Paths with complete file meta are sent as stored (pynetdicom's chunked mode): the C-STORE
    request takes its SOP Class/Instance UIDs from the file meta and the data set goes out
    unparsed, so a file whose data set is broken (e.g. lacks SOPInstanceUID) still reaches the
    peer, which decides. In-memory Datasets need SOPClassUID, SOPInstanceUID and
    file_meta.TransferSyntaxUID (pynetdicom refuses them otherwise). One presentation context
    is proposed per (SOP class, transfer syntax) present, plus Explicit/Implicit VR Little
    Endian for data sets pynetdicom may re-encode. TCP_NODELAY is set on the socket.

    Raises StoreError if the association is not accepted or a store gets no response.
    """
    items = [_describe(x) for x in files_or_datasets]
    if not items:
        raise ValueError("nothing to send")
    contexts: dict[tuple[str, str], None] = {}
    for item in items:
        contexts[(item.sop_class_uid, item.transfer_syntax)] = None
        if not item.chunked:
            contexts[(item.sop_class_uid, str(ExplicitVRLittleEndian))] = None
            contexts[(item.sop_class_uid, str(ImplicitVRLittleEndian))] = None
    if len(contexts) > _MAX_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} (SOP class, transfer syntax) pairs: more than one association "
            f"can negotiate ({_MAX_CONTEXTS})"
        )
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=_nodelay_handlers())
    if not assoc.is_established:
        raise StoreError(
            f"association to {called_aet}@{host}:{port} not established "
            f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})"
        )
    statuses: list[int] = []
    try:
        with _chunked_sending(any(item.chunked for item in items)):
            for index, item in enumerate(items):
                source: Path | Dataset = item.source
                if isinstance(source, Path) and not item.chunked:
                    source = dcmread(source, force=True)
                response = assoc.send_c_store(source, msg_id=(index % 0xFFFF) + 1)
                status = getattr(response, "Status", None)
                if status is None:
                    raise StoreError(
                        f"no C-STORE response for item {index} ({_label(item.source)}); "
                        f"association aborted={assoc.is_aborted}; statuses so far: "
                        f"{[hex(s) for s in statuses]}"
                    )
                statuses.append(int(status))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return statuses


def _label(source: Path | Dataset) -> str:
    if isinstance(source, Path):
        return str(source)
    return f"Dataset {getattr(source, 'SOPInstanceUID', '<no SOPInstanceUID>')}"


def echo(
    host: str, port: int, called_aet: str, calling_aet: str = "ECHOSCU", timeout: float = 5
) -> int:
    """C-ECHO; returns the DIMSE status (0x0000 when the peer answers). Raises EchoError when
    no association can be made or no response comes, so it works as a readiness probe inside
    a polling loop (`except EchoError`)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(_VERIFICATION)
    try:
        assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=_nodelay_handlers())
        if not assoc.is_established:
            raise EchoError(
                f"no association with {called_aet}@{host}:{port} "
                f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})"
            )
        try:
            status = getattr(assoc.send_c_echo(), "Status", None)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        ae.shutdown()
    if status is None:
        raise EchoError(f"no C-ECHO response from {called_aet}@{host}:{port}")
    return int(status)

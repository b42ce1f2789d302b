"""The service's own child processes (Orthanc, the nginx front, the worklist writer): starting
them so that they end with the service, waiting for one to be ready, stopping it, the same way for
each, and stopping those a killed launcher left behind.

A process killed with SIGKILL runs no clean-up: its children would live on, holding their ports
and Orthanc's index, and the next `make run` would start a second Orthanc on the same storage.
So each child is told to end when its parent does (`ending_with_parent` here;
sidecar.core.processes.exit_with_parent for the worklist writer), and
the launcher, at start, stops whatever a dead launcher left running anyway (`stop_leftovers`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# After the polite signal's deadline, SIGKILL: how long the kernel may take to end a process.
KILL_TIMEOUT = 10.0


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_tail: Callable[[], str],
    error: type[Exception],
) -> None:
    """Polls `ready` until it says yes; raises `error` with the log's tail if the process exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited during start-up:\n{log_tail()}")
        if ready():
            return
        time.sleep(0.05)
    raise error(f"{what} not ready after {timeout:.0f} s:\n{log_tail()}")


def stop(process: subprocess.Popen[bytes], signal_number: int, timeout: float) -> None:
    """Asks a running process to end with `signal_number`; kills it after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal_number)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# --- ending with the parent -------------------------------------------------------------------


def _libc_prctl() -> Callable[..., int] | None:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up once, here: the function a forked child calls must not import or load anything.
_prctl = _libc_prctl()


def ending_with_parent(signal_number: int) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `signal_number` when this process ends, however
    it ends (kill -9 included). None off Linux, and outside the main thread.

    Linux sends the parent-death signal when the *thread* that forked the child ends, not the
    process: a child started from a worker thread would be stopped when that thread finishes.
    The main thread ends only with the process, so only it gets the signal armed.

    The parent may die between the fork and the prctl: the child then has another parent
    already and would never get the signal, so it checks and exits instead.
    """
    prctl = _prctl
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def arm() -> None:  # runs in the child, between fork and exec
        if prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return arm


# --- leftovers of a dead launcher ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    """One process as /proc shows it. `started` (clock ticks after boot) and `pid` together name
    one process for good: a pid reused later comes with another start time."""

    pid: int
    parent: int
    state: str
    started: int
    argv: tuple[str, ...]

    @property
    def ended(self) -> bool:
        return self.state in ("Z", "X")  # a zombie has ended; only its parent's wait is missing


def process_info(pid: int) -> ProcessInfo | None:
    """The process `pid` now; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone, or not this user's to read
        return None
    # The name, in parentheses, may hold spaces and parentheses: the fields follow the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        parent=int(fields[1]),
        state=fields[0],
        started=int(fields[19]),
        argv=tuple(arg.decode(errors="replace") for arg in cmdline.rstrip(b"\0").split(b"\0")),
    )


def processes() -> Iterator[ProcessInfo]:
    """Every process this user can see."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = process_info(int(entry.name))
            if info is not None:
                yield info


def descendants(root: ProcessInfo, table: Iterable[ProcessInfo]) -> list[ProcessInfo]:
    """`root`'s children, their children, and so on, from a snapshot of `processes()`."""
    children: dict[int, list[ProcessInfo]] = {}
    for info in table:
        children.setdefault(info.parent, []).append(info)
    found: list[ProcessInfo] = []
    waiting = list(children.get(root.pid, []))
    while waiting:
        info = waiting.pop()
        found.append(info)
        waiting.extend(children.get(info.pid, []))
    return found


def running(process: ProcessInfo) -> bool:
    """Whether this very process (not a later one with its pid) has not ended yet."""
    now = process_info(process.pid)
    return now is not None and now.started == process.started and not now.ended


def wait_ended(group: Sequence[ProcessInfo], timeout: float) -> bool:
    """Polls until every process of `group` has ended; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(running(process) for process in group):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def send_signal(process: ProcessInfo, signal_number: int) -> bool:
    """Signals `process` if it still runs; never a later process that got its pid. False when
    it had ended.

    The pidfd, opened first, names one process: if the pid is still `process`'s once the pidfd
    is open, the signal reaches it, and if that process has ended since, nobody."""
    try:
        descriptor = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        # Linux before 5.3: the pid is checked just before the signal instead.
        if not running(process):
            return False
        os.kill(process.pid, signal_number)
        return True
    try:
        if not running(process):
            return False
        signal.pidfd_send_signal(descriptor, signal_number)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(descriptor)


def stop_leftovers(
    owned: Callable[[Sequence[str]], bool], *, what: str, signal_number: int, timeout: float
) -> list[int]:
    """Stops every process whose command line proves it is `what` of this service (`owned`
    says, from the command line alone), and its children; returns the pids of those found.

    Each gets `signal_number`, then SIGKILL after `timeout` seconds, and its children (nginx's
    workers) SIGKILL if they outlive it. Only the command line decides, read from every process
    in /proc: a pid file may name a process that has since ended, its pid reused by another
    program, and a process started just before its starter died has no pid file at all.
    """
    table = list(processes())
    leftovers = [
        info for info in table if not info.ended and info.pid != os.getpid() and owned(info.argv)
    ]
    for leftover in leftovers:
        log.warning(
            "stopping %s (pid %d), left running by a launcher that is gone", what, leftover.pid
        )
        _end(what, [leftover, *descendants(leftover, table)], signal_number, timeout)
    return [leftover.pid for leftover in leftovers]


def _end(what: str, group: list[ProcessInfo], signal_number: int, timeout: float) -> None:
    """Asks the group's first process to end, the way its own stop does, then kills whatever
    of the group still runs: the first process after `timeout`, children that outlived it."""
    head = group[0]
    try:
        send_signal(head, signal_number)
        if not wait_ended([head], timeout):
            log.warning(
                "%s (pid %d) still running after %.0f s: killing it", what, head.pid, timeout
            )
        for process in group:
            send_signal(process, signal.SIGKILL)
    except PermissionError:
        log.error("%s (pid %d) belongs to another user: not stopped", what, head.pid)
        return
    if not wait_ended(group, KILL_TIMEOUT):
        log.error("%s (pid %d) could not be stopped", what, head.pid)

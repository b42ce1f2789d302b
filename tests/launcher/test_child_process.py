"""Starting and stopping the service's child processes (sidecar.launcher.processes), with real
processes: one that dies during start-up, one that never gets ready, one that ignores the polite
signal, and a real nginx front whose port is taken."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from sidecar.core.processes import exit_with_parent
from sidecar.launcher import processes as child_process
from sidecar.launcher.nginx import FrontLayout, FrontStartError, NginxFront

from stack import free_port, wait_for


class StartFailed(RuntimeError):
    pass


def python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_process_that_dies_during_start_up_is_reported_with_its_log() -> None:
    process = python("raise SystemExit(3)")
    with pytest.raises(StartFailed, match="demo exited during start-up:\ncannot bind"):
        child_process.wait_until_ready(
            process,
            lambda: False,
            timeout=20,
            what="demo",
            log_tail=lambda: "cannot bind",
            error=StartFailed,
        )


def test_a_process_that_never_gets_ready_is_reported_after_the_timeout() -> None:
    process = python("import time; time.sleep(60)")
    try:
        started = time.monotonic()
        with pytest.raises(StartFailed, match="demo not ready after 1 s"):
            child_process.wait_until_ready(
                process, lambda: False, timeout=1, what="demo", log_tail=str, error=StartFailed
            )
        assert time.monotonic() - started < 10
    finally:
        child_process.stop(process, signal.SIGTERM, 5)
    assert process.poll() is not None


def test_a_process_that_ignores_the_signal_is_killed_after_the_timeout() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its handler is in place

    child_process.stop(process, signal.SIGTERM, 0.5)

    assert process.returncode == -signal.SIGKILL
    process.stdout.close()


def test_the_nginx_front_reports_a_taken_port_with_nginx_s_own_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        front = NginxFront(
            FrontLayout(
                work_dir=tmp_path / "front",
                host="127.0.0.1",
                port=port,
                orthanc=f"127.0.0.1:{free_port()}",
                sidecar=f"127.0.0.1:{free_port()}",
                viewer=f"127.0.0.1:{free_port()}",
            )
        )
        try:
            with pytest.raises(FrontStartError, match=r"(?s)nginx exited during start-up.*in use"):
                front.start(timeout=20)
        finally:
            front.stop()


# --- ending with the parent ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def middle(code: str) -> tuple[subprocess.Popen[bytes], int]:
    """A process running `code`, which starts a child and prints the child's pid."""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    assert process.stdout is not None
    pid = int(process.stdout.readline())
    process.stdout.close()
    return process, pid


def info(pid: int) -> child_process.ProcessInfo:
    found = child_process.process_info(pid)
    assert found is not None
    return found


@pytest.mark.parametrize("armed", [True, False], ids=["armed", "not-armed"])
def test_a_child_started_ending_with_its_parent_ends_when_the_parent_is_killed(
    armed: bool,
) -> None:
    parent, pid = middle(
        "import signal, subprocess, sys, time\n"
        "from sidecar.launcher import processes as child_process\n"
        "child = subprocess.Popen(\n"
        "    [sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        f"    preexec_fn=child_process.ending_with_parent(signal.SIGTERM) if {armed} else None,\n"
        ")\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = info(pid)
    try:
        parent.kill()
        parent.wait(10)
        assert child_process.wait_ended([child], 10 if armed else 1) is armed
    finally:
        child_process.send_signal(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_the_signal_was_armed_exits() -> None:
    # The window between fork and prctl, held open: the child arms the signal only once its
    # parent is gone, when no signal would ever come.
    parent, pid = middle(
        "import os, signal, time\n"
        "from sidecar.launcher import processes as child_process\n"
        "arm = child_process.ending_with_parent(signal.SIGTERM)\n"
        "parent = os.getpid()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    while os.getppid() == parent:\n"
        "        time.sleep(0.01)\n"
        "    arm()\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
    )
    child = child_process.process_info(pid)
    parent.wait(10)
    if child is not None:  # else it has ended and been reaped already
        try:
            assert child_process.wait_ended([child], 10)
        finally:
            child_process.send_signal(child, signal.SIGKILL)


def test_no_parent_death_signal_from_a_thread_that_may_end_first() -> None:
    found: list[object] = []
    thread = threading.Thread(
        target=lambda: found.append(child_process.ending_with_parent(signal.SIGTERM))
    )
    thread.start()
    thread.join()
    assert found == [None]
    assert child_process.ending_with_parent(signal.SIGTERM) is not None


def test_a_forkserver_worker_exiting_with_its_parent_ends_when_the_parent_is_killed() -> None:
    # The worklist writer's set-up: a ProcessPoolExecutor worker forked by the forkserver.
    parent, pid = middle(
        "import multiprocessing, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from sidecar.core.processes import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(\n"
        "        1,\n"
        "        mp_context=multiprocessing.get_context('forkserver'),\n"
        "        initializer=exit_with_parent,\n"
        "    )\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    time.sleep(600)\n"
    )
    table = list(child_process.processes())
    started = child_process.descendants(info(parent.pid), table)  # forkserver, tracker, worker
    assert pid in {process.pid for process in started}
    try:
        parent.kill()
        parent.wait(10)
        assert child_process.wait_ended(started, 20), [p.argv for p in started]
    finally:
        for process in started:
            child_process.send_signal(process, signal.SIGKILL)


def test_exit_with_parent_is_for_multiprocessing_children_only() -> None:
    with pytest.raises(RuntimeError, match="not a multiprocessing child"):
        exit_with_parent()


# --- finding and stopping leftovers -------------------------------------------------------------


def sleeping(*arguments: str, ignore_sigterm: bool = False) -> subprocess.Popen[bytes]:
    """A Python process sleeping, with `arguments` on its command line; ready once it prints."""
    code = "import signal, time\n"
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(600)\n"
    process = subprocess.Popen([sys.executable, "-c", code, *arguments], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.stdout.close()
    return process


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait(10)


def test_process_info_reads_proc_even_with_an_odd_program_name(tmp_path: Path) -> None:
    odd = tmp_path / "a) (b c"  # /proc/<pid>/stat shows the name in parentheses
    odd.symlink_to(sys.executable)
    process = subprocess.Popen([str(odd), "-c", "import time; time.sleep(600)", "x y"])
    argv = (str(odd), "-c", "import time; time.sleep(600)", "x y")
    try:
        # Until the child has exec'd, /proc shows the forked parent's command line (or none).
        wait_for(
            lambda: info(process.pid).argv == argv,
            timeout=10,
            what="the child's command line in /proc",
        )
        found = info(process.pid)
        assert found.argv == argv
        assert found.parent == os.getpid()
        assert not found.ended
        assert child_process.running(found)

        # The state moves between R and S from one reading to the next: pid and start time name it.
        def named(processes: Iterable[child_process.ProcessInfo]) -> list[tuple[int, int]]:
            return [(p.pid, p.started) for p in processes]

        assert (found.pid, found.started) in named(child_process.processes())
        everyone = child_process.processes()
        assert (found.pid, found.started) in named(
            child_process.descendants(info(os.getpid()), everyone)
        )
    finally:
        process.kill()
        process.wait(10)
    assert not child_process.running(found)
    assert child_process.process_info(process.pid) is None


def test_a_signal_never_reaches_a_process_that_only_has_the_same_pid(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    spawned.append(sleeping())
    found = info(spawned[0].pid)
    # The same pid, started at another time: a process that ended, its pid given to this one.
    earlier = dataclasses.replace(found, started=found.started - 1)
    assert not child_process.send_signal(earlier, signal.SIGKILL)
    assert not child_process.running(earlier)
    assert spawned[0].poll() is None

    assert child_process.send_signal(found, signal.SIGKILL)
    assert spawned[0].wait(10) == -signal.SIGKILL
    assert not child_process.send_signal(found, signal.SIGKILL)


def test_leftovers_are_found_by_command_line_and_stopped_politely_first(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    marker = f"leftover-{os.getpid()}-{time.monotonic_ns()}"
    spawned += [sleeping(marker), sleeping(marker + "-not"), sleeping()]

    stopped = child_process.stop_leftovers(
        lambda argv: marker in argv, what="demo", signal_number=signal.SIGTERM, timeout=20
    )

    assert stopped == [spawned[0].pid]
    assert spawned[0].wait(10) == -signal.SIGTERM
    assert [process.poll() for process in spawned[1:]] == [None, None]


def test_a_leftover_that_ignores_the_signal_is_killed_with_its_children(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    marker = f"stubborn-{os.getpid()}-{time.monotonic_ns()}"
    parent, pid = middle(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        f"time.sleep(600)  # {marker}\n"
    )
    spawned.append(parent)
    child = info(pid)

    started = time.monotonic()
    stopped = child_process.stop_leftovers(
        lambda argv: any(marker in arg for arg in argv),
        what="demo",
        signal_number=signal.SIGTERM,
        timeout=0.5,
    )

    assert stopped == [parent.pid]
    assert parent.wait(10) == -signal.SIGKILL
    assert child_process.wait_ended([child], 10)  # nginx's workers go with their master
    assert time.monotonic() - started < 10


def test_a_process_that_has_ended_is_no_leftover(spawned: list[subprocess.Popen[bytes]]) -> None:
    marker = f"zombie-{os.getpid()}-{time.monotonic_ns()}"
    spawned.append(sleeping(marker))
    spawned[0].send_signal(signal.SIGKILL)
    # Not waited for: a zombie, until its parent (this process) reaps it.
    wait_for(lambda: info(spawned[0].pid).ended, timeout=10, what="the process to end")
    assert (
        child_process.stop_leftovers(
            lambda argv: marker in argv, what="demo", signal_number=signal.SIGTERM, timeout=1
        )
        == []
    )

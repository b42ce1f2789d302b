"""Starting and stopping the service's child processes (sidecar.child_process), with real
processes: one that dies during start-up, one that never gets ready, one that ignores the polite
signal, and a real nginx front whose port is taken."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar import child_process
from sidecar.nginx_front import FrontLayout, FrontStartError, NginxFront

from stack import free_port


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

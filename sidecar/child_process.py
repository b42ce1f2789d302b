"""The service's own child processes (Orthanc, the nginx front): waiting for one to be ready,
and stopping it, the same way for each."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


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

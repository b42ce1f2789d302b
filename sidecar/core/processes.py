"""The application's own child processes (the worklist writer) end with it, however it ends."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading


def exit_with_parent() -> None:
    """For a multiprocessing child (the worklist writer): ends this process as soon as the
    process that started it is gone, however it went (kill -9 included).

    A thread waits on the parent's sentinel, a pipe only the parent holds open: it reads EOF
    when the parent is gone, even if that happened before the thread started. A parent-death
    signal would not do for a forkserver child: its parent is the forkserver, which exits only
    once every holder of its keep-alive pipe is gone, and multiprocessing hands that pipe to
    every child it forks, this one included; the two would wait for each other forever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        raise RuntimeError("exit_with_parent: not a multiprocessing child process")
    threading.Thread(
        target=_exit_when_gone, args=(parent.sentinel,), name="exit-with-parent", daemon=True
    ).start()


def _exit_when_gone(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)  # the parent is gone: nobody is left to give work to or to report to

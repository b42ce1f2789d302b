"""PostgreSQL databases for the tests, copied from the run's template ahead of the tests that take
them and dropped behind them, on a thread of their own.

CREATE DATABASE ... TEMPLATE and DROP DATABASE cost a tenth to half a second each here (the server
writes and syncs the copy): paid by every test on the critical path, that is minutes a run. Made
ahead and dropped behind, a test takes a database already there."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable

# Databases kept ready: the next test's, and one for a test that takes two (a module's and its
# own).
READY = 2


class DatabasePool:
    def __init__(self, execute: Callable[[str], None], template: str) -> None:
        self._execute = execute
        self._template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="test-database-pool", daemon=True)
        self._thread.start()
        for _ in range(READY):
            self._jobs.put(("create", ""))

    def take(self) -> str:
        """A database of its own for the caller; give it back with `release`."""
        self._jobs.put(("create", ""))
        try:
            taken = self._ready.get(timeout=120)
        except queue.Empty:
            raise RuntimeError("no test database was made ready within 120 s") from None
        if isinstance(taken, BaseException):
            raise RuntimeError("the test database pool failed") from taken
        return taken

    def release(self, name: str) -> None:
        self._jobs.put(("drop", name))

    def close(self) -> None:
        """Drops whatever it made, waiting for it: the template can go afterwards."""
        self._jobs.put(None)
        self._thread.join(timeout=300)
        while not self._ready.empty():
            left = self._ready.get_nowait()
            if isinstance(left, str):
                self._drop(left)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            kind, name = job
            try:
                if kind == "drop":
                    self._drop(name)
                else:
                    made = f"radtest_{uuid.uuid4().hex[:16]}"
                    self._execute(f'CREATE DATABASE "{made}" TEMPLATE "{self._template}"')
                    self._ready.put(made)
            except Exception as failure:  # the test that waits for a database says so
                self._ready.put(failure)

    def _drop(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

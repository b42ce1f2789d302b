"""Deletion notices off Orthanc's change thread: the OnChange callback only appends to a bounded
in-memory queue; one daemon thread drains it, one POST per batch, retrying a failed batch.

Why: Orthanc runs change callbacks one at a time on one plugin thread. One blocking POST per
DELETED event (a 2,000-instance study gives ~2,000 events) against an unreachable sidecar held
that thread, and every StableStudy notice behind it, for the connect timeout of each event.

Pure logic, stdlib only, Python 3.11 (Orthanc's embedded Python); the sender is injected.

What can be lost, on purpose (the queue lives in Orthanc's memory only):
- on overflow, the oldest notices (one warning per overflow episode);
- whatever is queued when Orthanc stops or crashes.
The sidecar's periodic reconciliation (sidecar.ingest.deletion_watch) lists Orthanc's studies and
catches every WHOLE study that is gone. A lost notice for a series or instances deleted from a
study that remains is not caught by it: that study keeps listing them until it is re-registered.
"""

import threading
from collections import deque
from collections.abc import Callable

DEFAULT_CAPACITY = 20_000
# The sidecar's route takes at most this many items per request (sidecar.ingest.router).
DEFAULT_BATCH_SIZE = 500
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0

Deletion = tuple[str, str]  # (resource type "Study" | "Series" | "Instance", Orthanc id)
# Sends one batch; None when the sidecar accepted it, else a short failure ("HTTP 503",
# "ConnectionError") naming no patient data.
SendBatch = Callable[[list[Deletion]], "str | None"]


class DeletionQueue:
    def __init__(
        self,
        send: SendBatch,
        *,
        log: Callable[[str], None],
        info: Callable[[str], None] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
    ) -> None:
        self._send = send
        self._log = log
        self._info = info or log
        self._capacity = capacity
        self._batch_size = batch_size
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._items: deque[Deletion] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._overflowing = False  # a warning was given for the current overflow episode
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts the sender, a daemon thread: Orthanc's shutdown never waits for it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sidecar-deletions", daemon=True)
            self._thread.start()

    def put(self, resource_type: str, orthanc_id: str) -> None:
        """Queues one deletion; never does I/O, never blocks on the sender for long."""
        warn = False
        with self._cond:
            if self._stopped:
                return
            if len(self._items) >= self._capacity:
                self._items.popleft()
                warn = not self._overflowing
                self._overflowing = True
            self._items.append((resource_type, orthanc_id))
            self._cond.notify()
        if warn:
            self._log(
                f"sidecar deletion queue full ({self._capacity} notices, sidecar unreachable?): "
                "dropping the oldest; the sidecar's reconciliation catches whole deleted studies, "
                "not series or instances deleted from a study that remains"
            )

    def stop(self) -> None:
        """Nothing more is sent (a POST already in flight completes or times out); no join."""
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Waits at most ``timeout`` seconds for the sender to end (after ``stop``); True if it
        has. Orthanc never calls this: its shutdown must not wait on a POST in flight."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _run(self) -> None:
        batch: list[Deletion] = []
        delay = self._first_retry
        failing = False
        while True:
            with self._cond:
                while not self._stopped and not self._items and not batch:
                    self._cond.wait()
                if self._stopped:
                    return
                # A batch kept after a failure is topped up, never reordered.
                while self._items and len(batch) < self._batch_size:
                    batch.append(self._items.popleft())
                if len(self._items) < self._capacity:
                    self._overflowing = False
            failure = self._deliver(batch)
            if failure is None:
                if failing:
                    self._info(f"sidecar deletion notices are delivered again ({len(batch)} sent)")
                batch, delay, failing = [], self._first_retry, False
                continue
            if not failing:  # one warning per outage, not per try
                self._log(
                    f"sidecar not notified of {len(batch)} deletions: {failure}; kept and "
                    f"retried every {self._max_retry:g} s at most until it answers"
                )
                failing = True
            with self._cond:
                self._cond.wait_for(lambda: self._stopped, timeout=delay)
            delay = min(delay * 2, self._max_retry)

    def _deliver(self, batch: list[Deletion]) -> "str | None":
        try:
            return self._send(list(batch))
        except Exception as exc:  # a bug in the sender must not end the thread
            return type(exc).__name__

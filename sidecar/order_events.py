"""Committed order changes, told to listeners (the worklist) on one background thread.

Listeners run after the commit and off the request path: an HL7 ACK or an API answer never waits
on worklist files being written. One thread keeps changes in commit order, so the last state
wins. Nothing is lost if the process dies with changes queued: the worklist is rebuilt from the
database on every start (WorklistPublisher.reconcile).

Batch listeners get every change queued meanwhile in one call (at most MAX_BATCH, in commit
order): under load the worklist is written once per batch rather than once per order, and lags
by no more than one batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from sidecar.models.orders import ImagingOrder

log = logging.getLogger(__name__)

OrderListener = Callable[[ImagingOrder], None]
BatchListener = Callable[[Sequence[ImagingOrder]], None]
MAX_BATCH = 200
_STOP = object()


class OrderEvents:
    def __init__(self) -> None:
        self.listeners: list[OrderListener] = []
        self.batch_listeners: list[BatchListener] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def announce(self, order: ImagingOrder) -> None:
        # A detached copy: the caller's session may expire or reuse the instance.
        snapshot = ImagingOrder(**order.model_dump())
        if self._thread is None:
            self._deliver([snapshot])  # not started (tests, scripts): deliver at once
        else:
            self._queue.put(snapshot)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="order-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Delivers what is queued, then stops."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every change queued so far is delivered (for tests and orderly shutdown)."""
        done = threading.Event()
        if self._thread is None:
            return True
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch: list[ImagingOrder] = []
            item = self._queue.get()
            while isinstance(item, ImagingOrder):
                batch.append(item)
                # Only this thread takes from the queue: when it is not empty, get() returns.
                full = len(batch) == MAX_BATCH or self._queue.empty()
                item = None if full else self._queue.get()
            if batch:
                self._deliver(batch)
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()

    def _deliver(self, orders: Sequence[ImagingOrder]) -> None:
        for listener in self.listeners:
            for order in orders:
                try:
                    listener(order)
                except Exception:
                    log.exception("order listener failed for order %s", order.id)
        for batch_listener in self.batch_listeners:
            try:
                batch_listener(orders)
            except Exception:
                log.exception("order listener failed for %d order(s)", len(orders))

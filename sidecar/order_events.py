"""Committed order changes, told to listeners (the worklist) on one background thread.

Listeners run after the commit and off the request path: an HL7 ACK or an API answer never waits
on worklist files being written. What travels is the order's id only: a listener reads the
committed state itself (the worklist writer does so in its own process), so announcing costs the
HL7 intake a queue put and nothing else. The last state of an order always wins: every commit
is announced after it happens, and a listener reads after the announcement.

Listeners get the ids announced within LINGER of the first one in one call (at most MAX_BATCH,
each id once, in the order first announced): under load the worklist is written once per batch
rather than once per order. A listener that raises (the database or the disk unavailable) gets
the same ids again, with those announced meanwhile, after RETRY_MIN seconds, doubling up to
RETRY_MAX: listeners must therefore be idempotent, which reading the current state makes them.
Nothing is lost if the process dies with changes queued: the worklist is rebuilt from the
database on every start (WorklistPublisher.reconcile).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from sidecar.models.orders import ImagingOrder

log = logging.getLogger(__name__)

OrderListener = Callable[[Sequence[int]], None]
MAX_BATCH = 200
LINGER = 0.05
RETRY_MIN = 1.0
RETRY_MAX = 60.0
_STOP = object()


class OrderEvents:
    def __init__(self, *, linger: float = LINGER, retry_min: float = RETRY_MIN) -> None:
        self._linger = linger
        self._retry_min = retry_min
        self.listeners: list[OrderListener] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def announce(self, order: ImagingOrder) -> None:
        """Tells listeners that this order's change is committed."""
        if order.id is None:
            raise ValueError("an order is announced after its commit, with its id")
        self.announce_id(order.id)

    def announce_id(self, order_id: int) -> None:
        """Tells listeners that a change to the order with this id is committed."""
        if self._thread is None:
            self._deliver([order_id])  # not started (tests, scripts): deliver at once
        else:
            self._queue.put(order_id)

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
        undelivered: dict[int, None] = {}  # ids a listener failed on, delivered again
        retry_at: float | None = None
        delay = self._retry_min
        while True:
            wait = None if retry_at is None else max(0.0, retry_at - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            batch = undelivered  # ordered, each id once
            deadline = time.monotonic() + self._linger
            while isinstance(item, int):
                batch[item] = None
                if len(batch) >= MAX_BATCH:
                    item = None
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    item = None
            due = retry_at is None or time.monotonic() >= retry_at or item is _STOP
            if batch and due:
                if self._deliver(list(batch)):
                    undelivered, retry_at, delay = {}, None, self._retry_min
                else:
                    log.warning(
                        "order changes not delivered to a listener; %d order(s) retried in %.0f s",
                        len(batch),
                        delay,
                    )
                    undelivered, retry_at = batch, time.monotonic() + delay
                    delay = min(delay * 2, RETRY_MAX)
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()

    def _deliver(self, order_ids: Sequence[int]) -> bool:
        delivered = True
        for listener in self.listeners:
            try:
                listener(order_ids)
            except Exception:
                log.exception("order listener failed for %d order(s)", len(order_ids))
                delivered = False
        return delivered

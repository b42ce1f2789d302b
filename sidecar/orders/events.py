"""Committed order changes, told to listeners (the worklist) by one background worker
(sidecar.core.background).

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

In a cluster, every node has its own worklist, and an order may change on any node: on
PostgreSQL a trigger on imaging_order notifies ORDER_CHANGES_CHANNEL with the order's id as the
change commits (migration 0019), and every node announces what it hears
(sidecar.main.build_services). A node that was not listening rebuilds its worklist when it
listens again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends

from sidecar.core.background import BackgroundWorker
from sidecar.core.dependencies import provide
from sidecar.orders.models import ImagingOrder

log = logging.getLogger(__name__)

OrderListener = Callable[[Sequence[int]], None]
#: The PostgreSQL notification channel of committed order changes (payload: the order's id).
ORDER_CHANGES_CHANNEL = "sidecar_order_changes"
MAX_BATCH = 200
LINGER = 0.05
RETRY_MIN = 1.0
RETRY_MAX = 60.0


class OrderEvents(BackgroundWorker):
    def __init__(self, *, linger: float = LINGER, retry_min: float = RETRY_MIN) -> None:
        super().__init__("order-events", idle_poll=60.0)
        self._linger = linger
        self._retry_min = retry_min
        self._delay = retry_min
        self._retry_at: float | None = None  # monotonic time of the next try after a failure
        self.listeners: list[OrderListener] = []
        self._pending: dict[int, None] = {}  # ordered, each id once: those failed on first
        self._delivering = False
        self._state = threading.Condition()

    def announce(self, order: ImagingOrder) -> None:
        """Tells listeners that this order's change is committed."""
        if order.id is None:
            raise ValueError("an order is announced after its commit, with its id")
        self.announce_id(order.id)

    def announce_ids(self, order_ids: Sequence[int]) -> None:
        """Tells listeners that changes to these orders are committed."""
        for order_id in order_ids:
            self.announce_id(order_id)

    def announce_id(self, order_id: int) -> None:
        """Tells listeners that a change to the order with this id is committed."""
        if not self.running:
            self._deliver([order_id])  # not started (tests, scripts): deliver at once
            return
        with self._state:
            self._pending[order_id] = None
        self.wake()

    def run_once(self) -> float | None:
        """Delivers one batch: what was announced up to LINGER after the first waiting id, at
        most MAX_BATCH; returns when to come back (None: nothing waiting)."""
        with self._state:
            if not self._pending:
                self._state.notify_all()
                return None
        if self._retry_at is not None:
            wait = self._retry_at - time.monotonic()
            if wait > 0 and not self.stopping:
                return wait  # a listener failed: later ids wait with the failed ones
        elif self._linger:
            time.sleep(self._linger)  # the ids announced meanwhile join this batch
        with self._state:
            batch = list(self._pending)[:MAX_BATCH]
            for order_id in batch:
                del self._pending[order_id]
            self._delivering = True
        delivered = self._deliver(batch)
        with self._state:
            self._delivering = False
            if delivered:
                self._retry_at, self._delay = None, self._retry_min
            else:
                # Again first, with what was announced meanwhile.
                self._pending = {**dict.fromkeys(batch), **self._pending}
                retry_in = self._delay
                self._retry_at = time.monotonic() + retry_in
                log.warning(
                    "order changes not delivered to a listener; %d order(s) retried in %.0f s",
                    len(self._pending),
                    self._delay,
                )
                self._delay = min(self._delay * 2, RETRY_MAX)
            self._state.notify_all()
            if not delivered:
                return retry_in
            return 0.0 if self._pending else None

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the worker, then delivers what is still queued (once: on a failure the
        worklist is rebuilt from the database at the next start)."""
        super().stop(timeout)
        with self._state:
            left, self._pending = list(self._pending), {}
        if left:
            self._deliver(left)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every change announced so far is delivered (for tests and orderly shutdown)."""
        if not self.running:
            return True
        self.wake()
        deadline = time.monotonic() + timeout
        with self._state:
            while self._pending or self._delivering:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.wait(remaining)
        return True

    def _deliver(self, order_ids: Sequence[int]) -> bool:
        delivered = True
        for listener in self.listeners:
            try:
                listener(order_ids)
            except Exception:
                log.exception("order listener failed for %d order(s)", len(order_ids))
                delivered = False
        return delivered


OrderEventsDep = Annotated[OrderEvents, Depends(provide(OrderEvents))]

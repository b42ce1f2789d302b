"""Background workers: one daemon thread each, woken on demand, retrying with back-off.

A worker's `run_once` does one round of work and says when it wants the next (seconds, or None
for "only when woken, or after the idle poll"). `wake()` is how request handlers say "there is
something for you now" after they commit; the idle poll is only a safety net.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from sidecar.core.models import utcnow

if TYPE_CHECKING:
    from sidecar.core.cluster import Cluster
    from sidecar.core.cluster_models import Lease

log = logging.getLogger(__name__)

#: Rounds that raised since the process started, by worker name (GET /metrics reads them).
ROUND_FAILURES: Counter[str] = Counter()


def backoff_delay(attempts: int, *, cap: float, first: float = 1.0) -> float:
    """Seconds before the next attempt after `attempts` failed ones: first, 2x, 4x ... capped."""
    return min(cap, first * 2.0 ** max(0, attempts - 1))


def seconds_until_next_attempt(
    session: Session, next_attempt_at: Any, *conditions: Any, now: datetime
) -> float | None:
    """Seconds until the earliest row matching `conditions` is due again (its `next_attempt_at`
    column after `now`); None when none is waiting."""
    upcoming: datetime | None = session.exec(
        select(next_attempt_at)
        .where(*conditions, col(next_attempt_at) > now)
        .order_by(col(next_attempt_at))
        .limit(1)
    ).first()
    if upcoming is None:
        return None
    return max(0.0, (upcoming - now).total_seconds())


Clock = Callable[[], datetime]


class BackgroundWorker:
    """One daemon thread doing rounds of work: `run_once` does one round and says when it wants
    the next (seconds; None: only when woken, or after the idle poll). `wake()` asks for the
    next round now. A round that raises is logged and tried again after a delay that doubles
    with each failure in a row (`after_crash`, up to `max_after_crash`), so a worker whose
    database is down neither stops nor spins. `clock` is the time the worker reads (tests
    give it a clock they move by hand and call `run_once` themselves).

    In a cluster (`run_under_lease`), rounds run only while this node holds the job's lease
    (sidecar.core.cluster): `stopping` turns true as soon as it does not, so a round stops
    between items, and `wake()` on a node without the lease wakes the node that has it."""

    def __init__(
        self,
        name: str,
        *,
        clock: Clock = utcnow,
        idle_poll: float = 30.0,
        after_crash: float = 1.0,
        max_after_crash: float = 60.0,
    ) -> None:
        self.name = name
        self.clock = clock
        self._idle_poll = idle_poll
        self._after_crash = after_crash
        self._max_after_crash = max_after_crash
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.lease: Lease | None = None
        self._cluster: Cluster | None = None

    def run_under_lease(self, cluster: Cluster, job: str | None = None) -> None:
        """Runs this worker's rounds only on the node holding `job`'s lease (default: the
        worker's name); the node that gains it is woken at once."""
        self._cluster = cluster
        self.lease = cluster.lease(
            job or self.name, on_gained=self._wake.set, on_lost=self._wake.set, wanted=False
        )

    def lease_lost(self) -> None:
        """Called on the worker's thread when this node no longer holds the job: let go of
        what only the holder should keep (a connection, say)."""

    @property
    def runs_here(self) -> bool:
        """Whether this node runs the job now: started, and holding its lease if it has one."""
        return self.running and (self.lease is None or self.lease.held)

    def run_once(self) -> float | None:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        """Stop now: the worker is stopping, or its thread runs and this node no longer holds
        the job's lease (a round driven by hand, a script's or a test's, is not gated)."""
        if self._stopping.is_set():
            return True
        return self.running and self.lease is not None and not self.lease.held

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if self._cluster is not None and self.lease is not None:
            self._cluster.want(self.lease.job)  # competes for the job from now on

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._cluster is not None and self.lease is not None:
            try:
                self._cluster.let_go(self.lease.job)  # another node takes it now
            except Exception:  # the lease expires by itself
                log.warning("%s: the job's lease was not released", self.name)

    def wake(self) -> None:
        if self.lease is None or self.lease.held or self._cluster is None:
            self._wake.set()
            return
        try:
            self._cluster.wake_holder(self.lease.job)
        except Exception:  # the holder's idle poll comes anyway
            log.warning("%s: could not wake the node holding the job", self.name)

    def _run(self) -> None:
        crashes = 0
        held = False
        while not self._stopping.is_set():
            self._wake.clear()
            if self.lease is not None and not self.lease.held:
                if held:
                    held = False
                    try:
                        self.lease_lost()
                    except Exception:  # what it let go of is the holder's no longer anyway
                        log.exception("%s: letting go after losing the job failed", self.name)
                self._wake.wait(self._idle_poll)  # woken when this node gains the lease
                continue
            held = True
            try:
                delay = self.run_once()
                crashes = 0
            except Exception:  # keep the worker alive whatever one round does
                crashes += 1
                ROUND_FAILURES[self.name] += 1
                delay = backoff_delay(crashes, cap=self._max_after_crash, first=self._after_crash)
                log.exception("%s: round failed; trying again in %.0f s", self.name, delay)
            wait = self._idle_poll if delay is None else delay
            if self.lease is not None:  # awake when it lapses, to let go of what it holds
                wait = min(wait, self.lease.remaining + 0.01)
            self._wake.wait(wait)

"""One reader of the event table per process, fanning new rows out to the connected streams.

The hub polls the table every `interval` seconds while at least one stream is connected (and
not at all otherwise): one query per tick whatever the number of clients. Each stream has a
bounded queue; a stream too slow to keep up loses its queued batches for a RESET marker (its
page reloads its lists) and goes on with what comes next, rather than holding memory.

Ids are handed out at insert time but rows become visible at commit, and concurrent
transactions on PostgreSQL commit in any order: a reader that moved past id 11 while id 10
was still uncommitted would never deliver 10. So the hub delivers a gap-free run of ids only. A
missing id is waited for until every transaction of this database that was writing when the gap
was seen has ended (pg_stat_activity's backend_xid; not the server-wide oldest transaction, which
another database's long transaction would hold back); then it was rolled back and is skipped.
SQLite has one writer at a time: ids commit in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Engine, func, text
from sqlmodel import Session, col, select

from sidecar.events.models import LiveEvent

log = logging.getLogger(__name__)

#: Put in a stream's queue in place of what it could not keep up with.
RESET: Final = "reset"
#: Put in a stream's queue to end it (the server shuts down).
CLOSE: Final = "close"

_CLEAR_STATUS = text("SELECT pg_stat_clear_snapshot()")  # read the sessions anew, not as cached
_WRITING = text(
    "SELECT backend_xid::text FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_xid IS NOT NULL"
)
_BATCH = 500


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[list[LiveEvent] | str]
    #: The newest id delivered to every stream when this one joined: it gets what follows.
    joined_at: int = 0
    overflows: int = field(default=0)


class EventHub:
    def __init__(self, engine: Engine, *, interval: float = 0.5, queue_size: int = 64) -> None:
        self.engine = engine
        self.interval = interval
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # (first missing id, the transactions writing when the gap was seen)
        self._gap: tuple[int, frozenset[str]] | None = None

    @property
    def cursor(self) -> int:
        """The newest id delivered (or the newest in the table when the hub started)."""
        return self._cursor

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def subscribe(self) -> Subscription:
        async with self._lock:
            if self._task is None or self._task.done():
                self._cursor = await asyncio.to_thread(self.newest)
                self._gap = None
                self._task = asyncio.create_task(self._run(), name="live-events")
            subscription = Subscription(asyncio.Queue(self.queue_size), joined_at=self._cursor)
            self._subscriptions.add(subscription)
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close_streams(self) -> None:
        """Ends every open stream (their clients reconnect, to another node or to this one
        started again): a server waits for every response in progress before it stops."""
        for subscription in list(self._subscriptions):
            while not subscription.queue.empty():
                subscription.queue.get_nowait()
            subscription.queue.put_nowait(CLOSE)
        self._subscriptions.clear()

    async def stop(self) -> None:
        self._subscriptions.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def newest(self) -> int:
        with Session(self.engine) as session:
            return session.exec(select(func.max(col(LiveEvent.id)))).one() or 0

    async def _run(self) -> None:
        failures = 0
        while self._subscriptions:
            try:
                batch = await asyncio.to_thread(self.read_new)
                failures = 0
            except Exception:  # the database away for a moment: the streams stay open
                failures += 1
                log.exception("live events: reading new events failed")
                await asyncio.sleep(min(30.0, self.interval * 2**failures))
                continue
            if batch:
                self._fan_out(batch)
            if len(batch) < _BATCH:
                await asyncio.sleep(self.interval)

    def _fan_out(self, batch: list[LiveEvent]) -> None:
        for subscription in list(self._subscriptions):
            queue = subscription.queue
            if queue.full():  # too slow: what it missed is replaced by a reset
                subscription.overflows += 1
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESET)
            queue.put_nowait(batch)

    def read_new(self) -> list[LiveEvent]:
        """The next gap-free run of events after the cursor, which moves past them (called by
        the hub's task alone, one call at a time)."""
        postgres = self.engine.dialect.name == "postgresql"
        with Session(self.engine) as session:
            gap_closed = False
            if postgres and self._gap is not None:
                # Before reading: every transaction that ended by now is visible to the read.
                gap_closed = not (self._gap[1] & _writing(session))
            rows = session.exec(
                select(LiveEvent)
                .where(col(LiveEvent.id) > self._cursor)
                .order_by(col(LiveEvent.id))
                .limit(_BATCH)
            ).all()
            expected = self._cursor + 1
            run: list[LiveEvent] = []
            for row in rows:
                assert row.id is not None
                if postgres and row.id != expected:
                    if self._gap is not None and self._gap[0] == expected and gap_closed:
                        self._gap = None  # rolled back: nothing can fill it any more
                    else:
                        if self._gap is None or self._gap[0] != expected:
                            self._gap = (expected, _writing(session))
                        break
                run.append(row)
                expected = row.id + 1
            session.expunge_all()
        if run:
            self._cursor = run[-1].id or self._cursor
        return run


def _writing(session: Session) -> frozenset[str]:
    """The ids of this database's transactions that have written something and not ended."""
    connection = session.connection()
    connection.execute(_CLEAR_STATUS)
    return frozenset(connection.execute(_WRITING).scalars())

"""Events older than EVENTS_RETENTION_HOURS are deleted: a client reconnecting after that long
gets a reset (its page reloads its lists) instead of the changes one by one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import Session, col

from sidecar.core.background import BackgroundWorker
from sidecar.core.models import utcnow
from sidecar.events.models import LiveEvent


class EventRetention(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        retention: timedelta,
        *,
        clock: Callable[[], datetime] = utcnow,
        every: float = 600.0,
    ) -> None:
        super().__init__("event-retention", clock=clock, idle_poll=every)
        self._engine = engine
        self._retention = retention
        self._every = every

    def run_once(self) -> float | None:
        """Deletes the events older than the retention; returns the seconds until the next round."""
        self.prune()
        return self._every

    def prune(self) -> int:
        cutoff = self.clock() - self._retention
        with Session(self._engine) as session:
            result = session.connection().execute(
                delete(LiveEvent).where(col(LiveEvent.recorded_at) < cutoff)
            )
            session.commit()
        return int(result.rowcount)

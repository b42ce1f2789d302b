"""The escalation worker: a critical finding not acknowledged by its deadline goes to the next
contact, and finally to the fail-safe recipient (sidecar.findings.service.escalate).

The clock is injected: tests advance a fake clock and call `run_once()`. In the service the
worker sleeps until the next deadline (or until woken by a new finding), never longer than the
idle poll, so a deadline moved by a PATCH is seen within that time at worst.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, func, select

from sidecar.core.background import BackgroundWorker
from sidecar.core.dependencies import provide
from sidecar.core.models import utcnow
from sidecar.findings.models import UNACKNOWLEDGED, CriticalFinding
from sidecar.findings.notifications import FindingNotifier
from sidecar.findings.policy import FindingPolicy
from sidecar.findings.service import escalate

log = logging.getLogger(__name__)

ESCALATION_ACTOR = "system:finding-escalation"


class FindingEscalation(BackgroundWorker):
    def __init__(
        self,
        engine: Engine,
        policy: FindingPolicy,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("finding-escalation", clock=clock, idle_poll=30.0)
        self._engine = engine
        self._policy = policy
        self._on_queued = on_queued or (lambda: None)

    def run_once(self) -> float | None:
        """Escalates every finding whose deadline has passed, one step each; returns seconds
        until the next deadline (None: none scheduled)."""
        now = self.clock()
        with Session(self._engine) as session:
            due = session.exec(
                select(CriticalFinding.id)
                .where(
                    col(CriticalFinding.status).in_(UNACKNOWLEDGED),
                    col(CriticalFinding.next_escalation_at) <= now,
                )
                .order_by(col(CriticalFinding.next_escalation_at), col(CriticalFinding.id))
            ).all()
        queued = sum(self._escalate(finding_id, now) for finding_id in due if finding_id)
        if queued:
            self._on_queued()
        with Session(self._engine) as session:
            upcoming = session.exec(
                select(func.min(CriticalFinding.next_escalation_at)).where(
                    col(CriticalFinding.status).in_(UNACKNOWLEDGED),
                    col(CriticalFinding.next_escalation_at) > now,
                )
            ).one()
        if upcoming is None:
            return None
        return max(0.0, (upcoming - now).total_seconds())

    def _escalate(self, finding_id: int, now: datetime) -> bool:
        with Session(self._engine) as session:
            finding = session.get(CriticalFinding, finding_id)
            # Read again: acknowledged (or rescheduled) since the query above.
            if (
                finding is None
                or finding.status not in UNACKNOWLEDGED
                or finding.next_escalation_at is None
                or finding.next_escalation_at > now
            ):
                return False
            notification = escalate(session, finding, self._policy, now=now, actor=ESCALATION_ACTOR)
            level = finding.escalation_level
            try:
                session.commit()
            except StaleDataError:  # acknowledged at this very moment: the acknowledgement wins
                session.rollback()
                log.info("finding %d changed while escalating; left as it is", finding_id)
                return False
        if notification is not None:
            log.warning("critical finding %d escalated to level %d", finding_id, level)
        return notification is not None


@dataclass(frozen=True)
class FindingWorkers:
    """The two workers a change to a finding may concern: the notifier (None without a
    notification service) and the escalation. Routes wake both after they commit."""

    notifier: FindingNotifier | None
    escalation: FindingEscalation

    def wake(self) -> None:
        if self.notifier is not None:
            self.notifier.wake()
        self.escalation.wake()


FindingWorkersDep = Annotated[FindingWorkers, Depends(provide(FindingWorkers))]

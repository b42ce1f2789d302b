"""The removal worker: carries out the image removals Orthanc could not perform when they were
asked for (sidecar.studies.rejection), oldest due first, until each is done; and the figures
/health shows of what waits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from sidecar.core.background import BackgroundWorker, Clock, seconds_until_next_attempt
from sidecar.core.dependencies import provide_optional
from sidecar.core.models import utcnow
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.studies.rejection import REMOVAL_ACTOR, carry_out
from sidecar.studies.removal_models import WAITING_STATES, ImageRemoval, RemovalState


class ImageRemover(BackgroundWorker):
    """One removal at a time. Orthanc failing: that removal waits with a doubling delay
    (capped at `max_delay`) and the round ends, the others would fail alike."""

    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        max_delay: float = 60.0,
        clock: Clock = utcnow,
        idle_poll: float = 30.0,
    ) -> None:
        super().__init__("image-removals", clock=clock, idle_poll=idle_poll)
        self._engine = engine
        self._orthanc = orthanc
        self._max_delay = max_delay
        self.last_error: str | None = None

    def run_once(self) -> float | None:
        while not self.stopping:
            now = self.clock()
            with Session(self._engine) as session:
                due = session.exec(
                    select(ImageRemoval.id)
                    .where(
                        col(ImageRemoval.state).in_(WAITING_STATES),
                        col(ImageRemoval.next_attempt_at) <= now,
                    )
                    .order_by(col(ImageRemoval.next_attempt_at), col(ImageRemoval.id))
                    .limit(1)
                ).first()
                if due is None:
                    return seconds_until_next_attempt(
                        session,
                        ImageRemoval.next_attempt_at,
                        col(ImageRemoval.state).in_(WAITING_STATES),
                        now=now,
                    )
                done = carry_out(
                    session,
                    self._orthanc,
                    due,
                    actor=REMOVAL_ACTOR,
                    max_delay=self._max_delay,
                    now=now,
                )
                if not done:
                    failed = session.get(ImageRemoval, due)
                    self.last_error = failed.last_error if failed is not None else None
                    if failed is None:
                        return self._max_delay
                    # Orthanc failing: the others would fail alike; this one is due first.
                    return max(0.0, (failed.next_attempt_at - now).total_seconds())
                self.last_error = None
        return None


ImageRemoverDep = Annotated[ImageRemover | None, Depends(provide_optional(ImageRemover))]


@dataclass(frozen=True)
class RemovalBacklog:
    queued: int
    retrying: int
    oldest_requested_at: datetime | None
    last_error: str | None


def backlog(session: Session) -> RemovalBacklog:
    """Removals not done yet: RETRYING ones are failing (alert on any), with the latest error."""
    counts = dict(
        session.exec(
            select(ImageRemoval.state, func.count())
            .where(col(ImageRemoval.state).in_(WAITING_STATES))
            .group_by(col(ImageRemoval.state))
        ).all()
    )
    oldest = session.exec(
        select(func.min(ImageRemoval.requested_at)).where(
            col(ImageRemoval.state).in_(WAITING_STATES)
        )
    ).one()
    error = session.exec(
        select(ImageRemoval.last_error)
        .where(ImageRemoval.state == RemovalState.RETRYING)
        .order_by(col(ImageRemoval.next_attempt_at).desc())
        .limit(1)
    ).first()
    return RemovalBacklog(
        queued=counts.get(RemovalState.QUEUED, 0),
        retrying=counts.get(RemovalState.RETRYING, 0),
        oldest_requested_at=oldest,
        last_error=error,
    )

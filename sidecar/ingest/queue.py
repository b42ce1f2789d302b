"""The durable queue of studies to register (a table: it survives restarts), fed by the plugin's
notices and by Orthanc's change log, drained by the sync worker (sidecar.ingest.sync)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from sidecar.ingest.models import PendingStudy


def queue_studies(
    session: Session, orthanc_ids: Iterable[str], source: str, *, now: datetime
) -> None:
    """Queues studies in the session's transaction; an entry already queued is made due now."""
    rows = [
        {
            "orthanc_id": i,
            "source": source,
            "queued_at": now,
            "attempts": 0,
            "next_attempt_at": now,
        }
        for i in dict.fromkeys(orthanc_ids)
    ]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(PendingStudy).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["orthanc_id"],
        set_={"queued_at": now, "next_attempt_at": now, "attempts": 0, "source": source},
    )
    session.execute(statement)


def due_studies(engine: Engine, now: datetime) -> tuple[list[PendingStudy], int]:
    """The entries due now, oldest first, and how many are queued in all."""
    with Session(engine) as session:
        due = session.exec(
            select(PendingStudy)
            .where(col(PendingStudy.next_attempt_at) <= now)
            .order_by(col(PendingStudy.queued_at))
        ).all()
        queued = len(session.exec(select(PendingStudy.orthanc_id)).all())
    return list(due), queued


def forget(engine: Engine, pending: PendingStudy) -> None:
    """Only the entry as it was read: a notice that arrived meanwhile stays queued."""
    with Session(engine) as session:
        session.execute(
            delete(PendingStudy).where(
                col(PendingStudy.orthanc_id) == pending.orthanc_id,
                col(PendingStudy.queued_at) == pending.queued_at,
            )
        )
        session.commit()


def reschedule(
    engine: Engine, pending: PendingStudy, when: datetime, error: str | None, attempts: int
) -> None:
    with Session(engine) as session:
        row = session.get(PendingStudy, pending.orthanc_id)
        if row is None or row.queued_at != pending.queued_at:
            return  # re-queued meanwhile: that newer entry is already due
        row.next_attempt_at, row.last_error, row.attempts = when, error, attempts
        session.add(row)
        session.commit()

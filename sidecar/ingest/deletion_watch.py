"""Noticing deletions made in Orthanc: the plugin's notices, a periodic reconciliation, and the
durable queue of studies to compare with Orthanc that both feed (sidecar.ingest.deletions does
the comparing).

Orthanc's /changes log never records a deletion, and the plugin's notice is fire-and-forget: a
notice lost (the sidecar down, Orthanc crashed with events queued) is caught by the
reconciliation, which lists Orthanc's studies every ORTHANC_RECONCILE_SECONDS and queues each
study the sidecar knows under an Orthanc id Orthanc no longer lists. Queued is not dropped: each
study is looked up by its UID first.

Run by the sync worker's thread (sidecar.ingest.sync calls `run_due` after each round), so
following a deletion never races registering the same study. Never acting on doubt:
- Orthanc unreachable or answering an error: nothing is changed, the check waits (back-off);
- Orthanc's change log behind the point the sidecar read it to (an index reset or replaced, an
  empty or wrong storage): the reconciliation holds, says so in /health, and queues nothing.
  Deletions the plugin reports still go through, each checked by UID.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, delete, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from sidecar.core.background import backoff_delay
from sidecar.core.models import utcnow
from sidecar.ingest.deletions import Holdings, follow_orthanc, held_instances
from sidecar.ingest.models import ChangesCursor, DeletionCheck
from sidecar.ingest.orthanc_client import OrthancClient, OrthancNotFound, OrthancUnavailable
from sidecar.studies.models import Image, Series, Study

log = logging.getLogger(__name__)

ResourceLevel = Literal["Study", "Series", "Instance"]
_MAX_DELAY_SECONDS = 300.0


@dataclass
class DeletionStatus:
    studies_followed: int = 0
    last_reconcile_at: datetime | None = None
    last_error: str | None = None
    # Why the last reconciliation queued nothing although studies looked gone (None: it ran).
    held: str | None = None


class DeletionWatch:
    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        reconcile_every: float,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._orthanc = orthanc
        self._reconcile_every = reconcile_every
        self._clock = clock
        self._monotonic = monotonic
        self._next_reconcile = monotonic()  # the first round after a start: what a crash lost
        self.on_queued: Callable[[], None] | None = None  # wakes the worker (OrthancSync)
        self.status = DeletionStatus()

    # -- notices ---------------------------------------------------------------------------------

    def notice(self, level: ResourceLevel, orthanc_id: str) -> int | None:
        """Orthanc deleted this resource: queues its study for a check, durably; the study's id,
        or None when the sidecar has no record under that Orthanc id (nothing to follow)."""
        return self.notice_many([(level, orthanc_id)])[0]

    def notice_many(self, deletions: Sequence[tuple[ResourceLevel, str]]) -> list[int | None]:
        """`notice` for each deletion, in one transaction; the study ids in the same order."""
        with Session(self._engine) as session:
            found = [_study_of(session, level, orthanc_id) for level, orthanc_id in deletions]
            study_ids = sorted({i for i in found if i is not None})
            if not study_ids:
                return found
            queue_checks(session, study_ids, "plugin", now=self._clock())
            session.commit()
        if self.on_queued is not None:
            self.on_queued()
        return found

    # -- the worker's part -----------------------------------------------------------------------

    def run_due(self, stopping: Callable[[], bool]) -> None:
        """Reconciles when it is time, then checks every study due."""
        if self._monotonic() >= self._next_reconcile:
            self._next_reconcile = self._monotonic() + self._reconcile_every
            try:
                self.reconcile()
            except OrthancUnavailable as exc:
                self.status.last_error = str(exc)
                log.warning("reconciliation with Orthanc skipped: %s", exc)
            except Exception as exc:  # an odd answer or a database error: try next time
                self.status.last_error = type(exc).__name__
                log.exception("reconciliation with Orthanc failed")
        now = self._clock()
        with Session(self._engine) as session:
            due = session.exec(
                select(DeletionCheck)
                .where(col(DeletionCheck.next_attempt_at) <= now)
                .order_by(col(DeletionCheck.queued_at))
            ).all()
        for check in due:
            if stopping() or not self.check(check):
                return

    def reconcile(self) -> int:
        """Queues every study the sidecar knows under an Orthanc id Orthanc no longer lists;
        returns how many. The sidecar's list is read first: a study registered after it was
        read cannot look gone. Holds when Orthanc's change log is behind the point the sidecar
        has read it to: that is not the index the sidecar followed (reset, replaced, another
        storage), and its missing studies say nothing about deletions."""
        with Session(self._engine) as session:
            known = dict(
                session.exec(
                    select(Study.orthanc_id, Study.id).where(
                        col(Study.orthanc_id).is_not(None), col(Study.images_deleted_at).is_(None)
                    )
                ).all()
            )
            cursor = session.get(ChangesCursor, 1)
            followed_to = cursor.last_seq if cursor is not None else 0
        orthanc_last = int(self._orthanc.changes(0, 0).get("Last", 0))
        listed = set(self._orthanc.study_ids())
        self.status.last_reconcile_at = self._clock()
        if orthanc_last < followed_to:
            self.status.held = (
                f"Orthanc's change log ends at {orthanc_last}, before {followed_to} where the "
                "sidecar read it to: not the index the sidecar followed (reset or replaced: check "
                "ORTHANC_URL and Orthanc's storage); its missing studies are not taken for "
                "deletions"
            )
            log.error("reconciliation held: %s", self.status.held)
            return 0
        self.status.held = None
        missing = [study_id for orthanc_id, study_id in known.items() if orthanc_id not in listed]
        if missing:
            with Session(self._engine) as session:
                queue_checks(
                    session, [i for i in missing if i is not None], "reconcile", now=self._clock()
                )
                session.commit()
            log.info("reconciliation: %d studies no longer under their Orthanc id", len(missing))
        return len(missing)

    def check(self, pending: DeletionCheck) -> bool:
        """Compares one study with Orthanc and follows it; False when Orthanc is unreachable
        (the rest of the queue would fail the same way)."""
        with Session(self._engine) as session:
            study = session.get(Study, pending.study_id)
            uid = study.study_instance_uid if study is not None else None
        if uid is None:
            self._forget(pending)
            return True
        try:
            holdings = held_instances(self._orthanc, uid)
            moved = self._held_elsewhere(pending.study_id, uid, holdings)
        except OrthancUnavailable as exc:
            self._retry(pending, str(exc))
            self.status.last_error = str(exc)
            return False
        except OrthancNotFound as exc:  # changed while read: look again soon, never "deleted"
            self._retry(pending, f"Orthanc changed while read: {exc}")
            return True
        except Exception as exc:  # an answer not as expected: kept queued, never "deleted"
            log.exception("reading study %s from Orthanc failed", pending.study_id)
            self._retry(pending, type(exc).__name__)
            return True
        if moved:  # moved while read (a patient-merge rewrite under way): never "deleted"
            self._retry(pending, f"Orthanc changed while read: {moved} instances moved")
            return True
        try:
            with Session(self._engine) as session:
                study = session.get(Study, pending.study_id)
                changed = (
                    study is not None
                    and follow_orthanc(session, study, holdings, now=self._clock()).changed
                )
                _forget_in(session, pending)
                session.commit()
        except Exception as exc:  # a database error: nothing half done, the check stays queued
            log.exception("following study %s to Orthanc failed", pending.study_id)
            self._retry(pending, type(exc).__name__)
            return True
        if changed:
            self.status.studies_followed += 1
        self.status.last_error = None
        return True

    def _held_elsewhere(self, study_id: int, uid: str, holdings: Holdings) -> int:
        """How many of the study's images `holdings` lacks that Orthanc does hold under the
        study's UID, asked one by one. `held_instances` reads study after study: an instance a
        rewrite moves between those reads (sidecar.patients.image_rewrite: copy stored in
        another Orthanc study, then the original deleted) is in none of them. Not asked when
        Orthanc listed no study of the UID at all: that one answer is whole, and a rewrite keeps
        a copy at every moment (a whole study deleted costs no lookup per image)."""
        if holdings.empty:
            return 0
        with Session(self._engine) as session:
            sop_uids = session.exec(
                select(Image.sop_instance_uid).where(Image.study_id == study_id)
            ).all()
        moved = 0
        for sop_uid in sop_uids:
            if sop_uid in holdings.instances:
                continue
            for instance_id in self._orthanc.resources_with_uid(sop_uid, "Instance"):
                parent = self._orthanc.study(self._orthanc.parent_study_of_instance(instance_id))
                if str(parent.get("MainDicomTags", {}).get("StudyInstanceUID", "")).strip() == uid:
                    moved += 1
                    break
        return moved

    def _forget(self, pending: DeletionCheck) -> None:
        with Session(self._engine) as session:
            _forget_in(session, pending)
            session.commit()

    def _retry(self, pending: DeletionCheck, error: str) -> None:
        attempts = pending.attempts + 1
        delay = backoff_delay(attempts, cap=_MAX_DELAY_SECONDS)
        with Session(self._engine) as session:
            row = session.get(DeletionCheck, pending.study_id)
            if row is None or row.queued_at != pending.queued_at:
                return  # queued again meanwhile: that newer entry is due now
            row.attempts = attempts
            row.next_attempt_at = self._clock() + timedelta(seconds=delay)
            row.last_error = error[:500]
            session.add(row)
            session.commit()


def queue_checks(session: Session, study_ids: Iterable[int], cause: str, *, now: datetime) -> None:
    """Queues studies for a check in the session's transaction; one queued already is made due
    now."""
    rows = [
        {"study_id": i, "cause": cause, "queued_at": now, "attempts": 0, "next_attempt_at": now}
        for i in dict.fromkeys(study_ids)
    ]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(DeletionCheck).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["study_id"],
        set_={"cause": cause, "queued_at": now, "next_attempt_at": now, "attempts": 0},
    )
    session.execute(statement)


def pending_checks(session: Session) -> tuple[int, int]:
    """Studies queued for a check, and of those how many failed at least once."""
    queued = session.exec(select(func.count()).select_from(DeletionCheck)).one()
    failing = session.exec(
        select(func.count()).select_from(DeletionCheck).where(col(DeletionCheck.attempts) > 0)
    ).one()
    return queued, failing


def _forget_in(session: Session, pending: DeletionCheck) -> None:
    """Only the entry as it was read: a notice that arrived meanwhile stays queued."""
    session.execute(
        delete(DeletionCheck).where(
            col(DeletionCheck.study_id) == pending.study_id,
            col(DeletionCheck.queued_at) == pending.queued_at,
        )
    )


def _study_of(session: Session, level: ResourceLevel, orthanc_id: str) -> int | None:
    if level == "Study":
        query = select(Study.id).where(Study.orthanc_id == orthanc_id)
    elif level == "Series":
        query = select(Series.study_id).where(Series.orthanc_id == orthanc_id)
    else:
        query = select(Image.study_id).where(Image.orthanc_id == orthanc_id)
    found: int | None = session.exec(query.limit(1)).first()
    return found

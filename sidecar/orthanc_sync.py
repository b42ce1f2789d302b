"""Keeps the sidecar's studies in step with Orthanc, durably.

Two sources feed one queue of pending studies (a table, so it survives restarts):
- the plugin's StableStudy notification (fast path, may be lost: it is fire-and-forget), and
- Orthanc's /changes log, read from a cursor kept in the database (slow path, never loses).
The log also covers what StableStudy cannot: studies stored while the sidecar was down, and studies
whose StableStudy never fired because Orthanc restarted within StableAge.

One worker thread drains the queue, so registration never races with itself. A study still
receiving images stays queued and is looked at again; a study Orthanc no longer has is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from sidecar import audit, order_matching, results
from sidecar.dicom_mapping import IncompleteStudy, image_records, study_issuer, study_record
from sidecar.models.common import utcnow
from sidecar.models.orders import ImagingOrder
from sidecar.models.studies import Study
from sidecar.models.sync import ChangesCursor, PendingStudy
from sidecar.orthanc_client import OrthancClient, OrthancNotFound, OrthancUnavailable
from sidecar.results import ResultRouting
from sidecar.study_registry import known_image_orthanc_ids, register_images, register_study

log = logging.getLogger(__name__)

_STUDY_CHANGES = {"NewStudy", "StableStudy"}
_MAX_BACKOFF_SECONDS = 300
# Image attributes wait while Orthanc receives instances, but never longer than this.
MAX_IMAGE_DEFERRAL = timedelta(minutes=5)
# Outcomes of one registration step.
_UNSTABLE, _DONE, _HANDLED, _FAILED_ROUND = object(), object(), object(), object()


@dataclass
class SyncStatus:
    cursor: int = 0
    orthanc_last_seq: int | None = None
    pending: int = 0
    registered: int = 0
    last_error: str | None = None
    last_poll_at: datetime | None = None
    # Seconds from a plugin notice to the study being visible in the API (most recent first).
    notice_to_visible: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class RoundReport:
    queued_from_changes: int = 0
    registered: list[str] = field(default_factory=list)
    still_unstable: list[str] = field(default_factory=list)
    images_deferred: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class OrthancSync:
    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        interval: float,
        page_size: int = 1000,
        now: Callable[[], datetime] = utcnow,
        on_order_changed: Callable[[ImagingOrder], None] | None = None,
        result_routing: ResultRouting | None = None,
        on_result_queued: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._orthanc = orthanc
        self._interval = interval
        self._page_size = page_size
        self._now = now
        self._on_order_changed = on_order_changed
        # A study matched to its order after it was reported: the signed result is sent.
        self._result_routing = result_routing
        self._on_result_queued = on_result_queued
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = SyncStatus()
        # When each plugin notice arrived (monotonic clock): for the latency figures only.
        self.noticed_at: dict[str, float] = {}
        # Studies last seen still receiving instances, and since when each study's image
        # attributes have been waiting for a quiet moment (memory only: after a restart every
        # queued study is simply looked at again).
        self._receiving: set[str] = set()
        self._deferred_since: dict[str, datetime] = {}

    # -- queue ---------------------------------------------------------------------------------

    def enqueue(self, orthanc_ids: Iterable[str], source: str) -> None:
        """Durably queues studies (an existing entry is made due now), then wakes the worker."""
        ids = list(orthanc_ids)
        with Session(self._engine) as session:
            self._upsert_pending(session, ids, source)
            session.commit()
        if source == "plugin":
            arrived = time.monotonic()
            for orthanc_id in ids:
                self.noticed_at.setdefault(orthanc_id, arrived)
        self._wake.set()

    def _upsert_pending(self, session: Session, orthanc_ids: Iterable[str], source: str) -> None:
        now = self._now()
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

    # -- worker --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orthanc-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # keep the worker alive whatever one round does
                log.exception("orthanc sync round failed")
            self._wake.wait(self._interval)

    def run_once(self) -> RoundReport:
        report = RoundReport()
        try:
            report.queued_from_changes = self.poll_changes()
            self.status.last_error = None
        except OrthancUnavailable as exc:
            self.status.last_error = str(exc)
            log.warning("Orthanc unavailable while reading /changes: %s", exc)
        self.process_pending(report)
        self.status.last_poll_at = self._now()
        return report

    # -- the change log ------------------------------------------------------------------------

    def poll_changes(self) -> int:
        """Queues every study the change log mentions past the cursor; returns how many."""
        queued = 0
        while not self._stop.is_set():
            with Session(self._engine) as session:
                cursor = session.get(ChangesCursor, 1) or ChangesCursor(id=1, last_seq=0)
                page = self._orthanc.changes(cursor.last_seq, self._page_size)
                study_ids = self._studies_in(page.get("Changes", []))
                self._upsert_pending(session, study_ids, "changes")
                cursor.last_seq = int(page.get("Last", cursor.last_seq))
                cursor.updated_at = self._now()
                session.add(cursor)
                session.commit()  # cursor and queue move together, or not at all
                self.status.cursor = cursor.last_seq
                self.status.orthanc_last_seq = int(page.get("Last", cursor.last_seq))
            queued += len(study_ids)
            if page.get("Done", True):
                return queued
        return queued

    def _studies_in(self, changes: list[dict[str, object]]) -> list[str]:
        studies: dict[str, None] = {}
        series_ids: list[str] = []
        instance_ids: list[str] = []
        for change in changes:
            kind, resource = change.get("ChangeType"), str(change.get("ID"))
            if kind in _STUDY_CHANGES:
                studies[resource] = None
            elif kind == "NewSeries":
                series_ids.append(resource)
            elif kind == "NewInstance":
                instance_ids.append(resource)

        for series_id in series_ids:
            try:
                studies[self._orthanc.parent_study_of_series(series_id)] = None
            except OrthancNotFound:
                continue
        # Late instances into an existing series leave only NewInstance rows. Resolving each one
        # would cost a request per instance; one study's instance list covers all of its rows.
        covered: set[str] = set()
        for study_id in list(studies):
            if instance_ids:
                covered.update(self._instance_ids_or_empty(study_id))
        for instance_id in instance_ids:
            if instance_id in covered:
                continue
            try:
                study_id = self._orthanc.parent_study_of_instance(instance_id)
            except OrthancNotFound:
                continue
            studies[study_id] = None
            covered.update(self._instance_ids_or_empty(study_id))
        return list(studies)

    def _instance_ids_or_empty(self, study_id: str) -> list[str]:
        try:
            return self._orthanc.study_instance_ids(study_id)
        except OrthancNotFound:
            return []

    # -- registration --------------------------------------------------------------------------

    def process_pending(self, report: RoundReport) -> None:
        """Two lanes. First every due study at study level (cheap: what makes it visible);
        then per-image attributes, which make Orthanc parse every file from disk, only while
        it is not receiving instances (a round that read NewInstance changes), so that
        registration never competes with ingest, or after MAX_IMAGE_DEFERRAL regardless.
        "Receiving" means some queued study was found not yet stable."""
        with Session(self._engine) as session:
            due = session.exec(
                select(PendingStudy)
                .where(col(PendingStudy.next_attempt_at) <= self._now())
                .order_by(col(PendingStudy.queued_at))
            ).all()
            self.status.pending = len(session.exec(select(PendingStudy.orthanc_id)).all())
        image_lane: list[tuple[PendingStudy, int]] = []
        for pending in due:
            if self._stop.is_set():
                return
            outcome = self._attempt(pending, report, self._register_study, pending.orthanc_id)
            if outcome is _FAILED_ROUND:
                return
            if outcome is _UNSTABLE:
                self._receiving.add(pending.orthanc_id)
                self._check_again(pending)
                report.still_unstable.append(pending.orthanc_id)
                continue
            self._receiving.discard(pending.orthanc_id)
            if isinstance(outcome, int):
                image_lane.append((pending, outcome))
            elif outcome is _DONE:
                self._registered(pending, report)
        for pending, study_id in image_lane:
            if self._stop.is_set():
                return
            if self._receiving and not self._deferred_too_long(pending.orthanc_id):
                self._check_again(pending)
                report.images_deferred.append(pending.orthanc_id)
                continue
            outcome = self._attempt(
                pending, report, self._register_images, pending.orthanc_id, study_id
            )
            if outcome is _FAILED_ROUND:
                return
            if outcome is _DONE:
                self._registered(pending, report)

    def _attempt(
        self,
        pending: PendingStudy,
        report: RoundReport,
        step: Callable[..., object],
        *args: object,
    ) -> object:
        """Runs one registration step, turning failures into queue decisions."""
        try:
            return step(*args)
        except OrthancUnavailable as exc:
            self._retry_later(pending, str(exc))
            report.failed.append(pending.orthanc_id)
            self.status.last_error = str(exc)
            return _FAILED_ROUND  # Orthanc is down: the rest would fail the same way
        except OrthancNotFound:
            self._forget(pending, "study no longer in Orthanc")
            report.dropped.append(pending.orthanc_id)
        except IncompleteStudy as exc:
            self._forget(pending, str(exc))
            report.dropped.append(pending.orthanc_id)
        except Exception as exc:  # a bug or a database error: keep the study queued
            log.exception("registering Orthanc study %s failed", pending.orthanc_id)
            self._retry_later(pending, type(exc).__name__)
            report.failed.append(pending.orthanc_id)
        return _HANDLED

    def _registered(self, pending: PendingStudy, report: RoundReport) -> None:
        self._forget(pending, None)
        self._deferred_since.pop(pending.orthanc_id, None)
        report.registered.append(pending.orthanc_id)
        self.status.registered += 1

    def _deferred_too_long(self, orthanc_id: str) -> bool:
        first = self._deferred_since.setdefault(orthanc_id, self._now())
        return self._now() - first >= MAX_IMAGE_DEFERRAL

    def _register_study(self, orthanc_id: str) -> object:
        """Study level: _UNSTABLE while Orthanc still receives it, _DONE when every image is
        already recorded, else the study id (its images are due)."""
        study_json = self._orthanc.study(orthanc_id)
        if not study_json.get("IsStable", False):
            return _UNSTABLE
        series_json = self._orthanc.study_series(orthanc_id)
        record = study_record(study_json, series_json)
        same_uid = self._orthanc.studies_with_uid(record.study_instance_uid)
        same_uid[orthanc_id] = record.patient_id or ""
        with Session(self._engine) as session:
            study = register_study(session, record, same_uid)
            if study.orthanc_id != orthanc_id:
                session.commit()  # another patient's study under this UID: flagged, not merged
                return _DONE
            was_linked = study.order_id is not None
            moved_order = order_matching.match(session, study, actor=audit.ORTHANC_SYNC_ACTOR)
            result_queued = False
            if not was_linked and study.order_id is not None and self._result_routing:
                assert study.id is not None
                order = session.get(ImagingOrder, study.order_id)
                assert order is not None
                result_queued = results.report_joins_order(
                    session, study.id, order, self._result_routing, actor=audit.ORTHANC_SYNC_ACTOR
                )
            session.commit()
            if result_queued and self._on_result_queued is not None:
                self._on_result_queued()
            study_id = study.id
            assert study_id is not None
            self._visible(orthanc_id)
            if moved_order is not None and self._on_order_changed is not None:
                session.refresh(moved_order)
                self._on_order_changed(moved_order)
            known = known_image_orthanc_ids(session, study_id)
        expected = {i for series in series_json for i in series.get("Instances", [])}
        return _DONE if expected <= known else study_id

    def _register_images(self, orthanc_id: str, study_id: int) -> object:
        """Image level: every instance's tags, read from disk by Orthanc."""
        tags = self._orthanc.study_instances_tags(orthanc_id)
        with Session(self._engine) as session:
            current = session.get(Study, study_id)
            if current is None:
                return _DONE  # deleted by an administrator meanwhile
            created = register_images(
                session, current, image_records(tags), issuer_of_patient_id=study_issuer(tags)
            )
            session.commit()
        log.info("registered Orthanc study %s: %d new images", orthanc_id, created)
        return _DONE

    def _visible(self, orthanc_id: str) -> None:
        noticed = self.noticed_at.pop(orthanc_id, None)
        if noticed is not None:
            self.status.notice_to_visible.appendleft(time.monotonic() - noticed)

    def _forget(self, pending: PendingStudy, reason: str | None) -> None:
        self._receiving.discard(pending.orthanc_id)
        with Session(self._engine) as session:
            # Only the entry as we read it: a notification that arrived meanwhile stays queued.
            session.execute(
                delete(PendingStudy).where(
                    col(PendingStudy.orthanc_id) == pending.orthanc_id,
                    col(PendingStudy.queued_at) == pending.queued_at,
                )
            )
            session.commit()
        if reason:
            log.warning("dropped Orthanc study %s from the queue: %s", pending.orthanc_id, reason)

    def _check_again(self, pending: PendingStudy) -> None:
        self._reschedule(pending, self._now() + timedelta(seconds=self._interval), None, 0)

    def _retry_later(self, pending: PendingStudy, error: str) -> None:
        attempts = pending.attempts + 1
        delay = min(_MAX_BACKOFF_SECONDS, 2**attempts)
        self._reschedule(pending, self._now() + timedelta(seconds=delay), error, attempts)

    def _reschedule(
        self, pending: PendingStudy, when: datetime, error: str | None, attempts: int
    ) -> None:
        with Session(self._engine) as session:
            row = session.get(PendingStudy, pending.orthanc_id)
            if row is None or row.queued_at != pending.queued_at:
                return  # re-queued meanwhile: that newer entry is already due
            row.next_attempt_at, row.last_error, row.attempts = when, error, attempts
            session.add(row)
            session.commit()

"""Keeps the sidecar's studies in step with Orthanc, durably.

Two sources feed one queue of pending studies (a table, so it survives restarts):
- the plugin's StableStudy notification (fast path, may be lost: it is fire-and-forget), and
- Orthanc's /changes log, read from a cursor kept in the database (slow path, never loses).
The log also covers what StableStudy cannot: studies stored while the sidecar was down, and studies
whose StableStudy never fired because Orthanc restarted within StableAge.

One worker (sidecar.core.background) drains the queue (sidecar.ingest.queue), after reading the
change log (sidecar.ingest.changes), so registration never races with itself. A study still
receiving images stays queued and is looked at again; a study Orthanc no longer has is dropped.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from hl7.order_status_message import OrderStatusCode
from sidecar.core import audit, correlation
from sidecar.core.background import BackgroundWorker
from sidecar.core.models import utcnow
from sidecar.ingest.changes import ChangeLog
from sidecar.ingest.deletion_watch import DeletionWatch
from sidecar.ingest.dicom_mapping import (
    IncompleteStudy,
    image_records,
    orthanc_time,
    study_issuer,
    study_record,
)
from sidecar.ingest.models import PendingStudy
from sidecar.ingest.orthanc_client import OrthancClient, OrthancNotFound, OrthancUnavailable
from sidecar.ingest.queue import due_studies, forget, queue_studies, reschedule
from sidecar.mpps import service as mpps
from sidecar.operations import metrics
from sidecar.orders import matching as order_matching
from sidecar.orders.models import ImagingOrder
from sidecar.patients import image_updates
from sidecar.patients import service as patients
from sidecar.results import service as results
from sidecar.results.routing import ResultRouting
from sidecar.results.status_updates import queue_status_update
from sidecar.studies.deidentification import is_deidentified_copy
from sidecar.studies.models import Study
from sidecar.studies.registry import known_image_orthanc_ids, register_images, register_study

log = logging.getLogger(__name__)

_MAX_BACKOFF_SECONDS = 300
# Image attributes wait while Orthanc receives instances, but never longer than this.
MAX_IMAGE_DEFERRAL = timedelta(minutes=5)
# Outcomes of one registration step.
_UNSTABLE, _DONE, _HANDLED, _FAILED_ROUND = object(), object(), object(), object()
_DONE_UNREGISTERED = object()  # nothing to register (a de-identified copy): off the queue


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
    passed_over: list[str] = field(default_factory=list)  # not clinical: de-identified copies
    failed: list[str] = field(default_factory=list)


class OrthancSync(BackgroundWorker):
    """The sync worker: each round reads the change log, then registers what is due."""

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
        modality_facilities: Mapping[str, str] | None = None,
        default_issuer: str | None = None,
        on_ready_to_read: Callable[[Session, Study], object] | None = None,
        deletions: DeletionWatch | None = None,
        stable_age: float | None = None,
    ) -> None:
        # The idle poll is the interval: the change log is read that often when nothing wakes
        # the worker sooner (a plugin notice does).
        super().__init__("orthanc-sync", clock=now, idle_poll=interval)
        self._engine = engine
        self._orthanc = orthanc
        self._interval = interval
        self._changes = ChangeLog(engine, orthanc, page_size=page_size)
        self._on_order_changed = on_order_changed
        # A study matched to its order after it was reported: the signed result is sent.
        self._result_routing = result_routing
        self._on_result_queued = on_result_queued
        # Calling AE title -> facility (MODALITY_FACILITIES), for studies without an order.
        self._modality_facilities = dict(modality_facilities or {})
        # DEFAULT_ISSUER: the issuer of a PatientID whose images name none.
        self._default_issuer = default_issuer or None
        # Images complete (sidecar.reading.rules.study_ready): in the registration's transaction.
        self._on_ready_to_read = on_ready_to_read
        # Deletions made in Orthanc, followed on this thread after registration (never racing
        # it): the plugin's notices wake this worker.
        self._deletions = deletions
        if deletions is not None:
            deletions.on_queued = self.wake
        # Orthanc's StableAge: how long a study must have received nothing before it is
        # registered, by its LastUpdate (see _still_arriving). None: Orthanc's IsStable alone.
        self._stable_age = stable_age
        self.status = SyncStatus()
        # When each plugin notice arrived (monotonic clock): for the latency figures only.
        self.noticed_at: dict[str, float] = {}
        # Studies last seen still receiving instances, and since when each study's image
        # attributes have been waiting for a quiet moment (memory only: after a restart every
        # queued study is simply looked at again).
        self._receiving: set[str] = set()
        self._deferred_since: dict[str, datetime] = {}

    def enqueue(self, orthanc_ids: Iterable[str], source: str) -> None:
        """Durably queues studies (an existing entry is made due now), then wakes the worker."""
        ids = list(orthanc_ids)
        with Session(self._engine) as session:
            queue_studies(session, ids, source, now=self.clock())
            session.commit()
        if source == "plugin":
            arrived = time.monotonic()
            for orthanc_id in ids:
                self.noticed_at.setdefault(orthanc_id, arrived)
        self.wake()

    def run_once(self) -> float:
        self.sync_round()
        return self._interval

    def sync_round(self) -> RoundReport:
        """Reads the change log, then registers every study due."""
        report = RoundReport()
        try:
            report.queued_from_changes = self.poll_changes()
            self.status.last_error = None
        except OrthancUnavailable as exc:
            self.status.last_error = str(exc)
            log.warning("Orthanc unavailable while reading /changes: %s", exc)
        self.process_pending(report)
        if self._deletions is not None and not self.stopping:
            self._deletions.run_due(lambda: self.stopping)
        self.status.last_poll_at = self.clock()
        return report

    def poll_changes(self) -> int:
        """Queues every study the change log mentions past the cursor; returns how many."""
        queued = self._changes.read(self.clock(), lambda: self.stopping)
        self.status.cursor = self._changes.cursor
        self.status.orthanc_last_seq = self._changes.orthanc_last_seq
        return queued

    # -- registration --------------------------------------------------------------------------

    def process_pending(self, report: RoundReport) -> None:
        """Two lanes. First every due study at study level (cheap: what makes it visible);
        then per-image attributes, which make Orthanc parse every file from disk, only while
        it is not receiving instances (a round that read NewInstance changes), so that
        registration never competes with ingest, or after MAX_IMAGE_DEFERRAL regardless.
        "Receiving" means some queued study was found not yet stable."""
        due, self.status.pending = due_studies(self._engine, self.clock())
        image_lane: list[tuple[PendingStudy, int]] = []
        for pending in due:
            if self.stopping:
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
            elif outcome is _DONE_UNREGISTERED:
                self._forget(pending, None)
                report.passed_over.append(pending.orthanc_id)
        for pending, study_id in image_lane:
            if self.stopping:
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
        self, pending: PendingStudy, report: RoundReport, step: Callable[..., object], *args: object
    ) -> object:
        """Runs one registration step, turning failures into queue decisions."""
        with correlation.bound(pending.orthanc_id):  # its lines' id (a hash: no patient data)
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

    def _still_arriving(self, study_json: dict[str, Any]) -> bool:
        """Whether the study received an instance less than StableAge ago. Orthanc follows
        stability in the memory of the receiving Orthanc: in a cluster another node's may still
        be receiving a study this node's calls stable. LastUpdate, in the shared index, is when
        its last instance was stored (UTC, by the receiving node's clock)."""
        if self._stable_age is None:
            return False
        last = orthanc_time(study_json.get("LastUpdate"))
        if last is None:
            return False
        return utcnow() - last < timedelta(seconds=self._stable_age)

    def _deferred_too_long(self, orthanc_id: str) -> bool:
        first = self._deferred_since.setdefault(orthanc_id, self.clock())
        return self.clock() - first >= MAX_IMAGE_DEFERRAL

    def _register_study(self, orthanc_id: str) -> object:
        """Study level: _UNSTABLE while Orthanc still receives it, _DONE when every image is
        already recorded, else the study id (its images are due)."""
        study_json = self._orthanc.study(orthanc_id)
        if self._is_deidentified_copy(study_json):
            log.info("Orthanc study %s is a de-identified copy: not registered", orthanc_id)
            return _DONE_UNREGISTERED
        if not study_json.get("IsStable", False) or self._still_arriving(study_json):
            return _UNSTABLE
        series_json = self._orthanc.study_series(orthanc_id)
        record = study_record(study_json, series_json)
        same_uid = self._orthanc.studies_with_uid(record.study_instance_uid)
        same_uid[orthanc_id] = record.patient_id or ""
        modality_facility = self._modality_facility(series_json)
        with Session(self._engine) as session:
            study = register_study(session, record, same_uid)
            if study.orthanc_id != orthanc_id:
                session.commit()  # another patient's study under this UID: flagged, not merged
                return _DONE
            was_linked = study.order_id is not None
            moved_order = order_matching.match(session, study, actor=audit.ORTHANC_SYNC_ACTOR)
            if study.facility_id is None and modality_facility is not None:
                study.facility_id = modality_facility  # no order, or one without a facility
            mpps.announce_to_study(session, study)
            if self._on_ready_to_read is not None:
                self._on_ready_to_read(session, study)
            result_queued = False
            if moved_order is not None and self._result_routing:
                # The first images of an order no MPPS announced: the exam has started.
                result_queued = (
                    queue_status_update(
                        session,
                        moved_order,
                        OrderStatusCode.IN_PROCESS,
                        self._result_routing,
                        actor=audit.ORTHANC_SYNC_ACTOR,
                    )
                    is not None
                )
            if not was_linked and study.order_id is not None and self._result_routing:
                assert study.id is not None
                order = session.get(ImagingOrder, study.order_id)
                assert order is not None
                result_queued = (
                    results.report_joins_order(
                        session,
                        study.id,
                        order,
                        self._result_routing,
                        actor=audit.ORTHANC_SYNC_ACTOR,
                    )
                    or result_queued
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

    def _is_deidentified_copy(self, study_json: dict[str, Any]) -> bool:
        """A copy made by POST /api/studies/{id}/deidentify: never a clinical study (recorded
        before Orthanc writes it, under the Study Instance UID the sidecar chose)."""
        uid = str(study_json.get("MainDicomTags", {}).get("StudyInstanceUID", "")).strip()
        if not uid:
            return False
        with Session(self._engine) as session:
            return is_deidentified_copy(session, uid)

    def _modality_facility(self, series_json: list[dict[str, Any]]) -> str | None:
        """The facility of the modality that sent the study (its first instance's calling AE
        title, in MODALITY_FACILITIES), else None. Asks Orthanc only when facilities are set."""
        if not self._modality_facilities:
            return None
        instances = [i for series in series_json for i in series.get("Instances", [])]
        if not instances:
            return None
        calling = self._orthanc.calling_ae_title(str(instances[0]))
        return self._modality_facilities.get(calling) if calling else None

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
            # Its issuer known now: a study without an order is filed under its patient.
            patients.attach_study(
                session,
                current,
                default_issuer=self._default_issuer,
                actor=audit.ORTHANC_SYNC_ACTOR,
            )
            # Images under a merged-away identifier: Orthanc's copy follows the registry.
            image_updates.queue_if_filed_elsewhere(session, current)
            session.commit()
        metrics.STUDIES_INSTANCES.inc(created)
        log.info("registered Orthanc study %s: %d new images", orthanc_id, created)
        return _DONE

    def _visible(self, orthanc_id: str) -> None:
        noticed = self.noticed_at.pop(orthanc_id, None)
        if noticed is not None:
            self.status.notice_to_visible.appendleft(time.monotonic() - noticed)
            metrics.STUDIES_REGISTRATION_LAG.observe(self.status.notice_to_visible[0])

    def _forget(self, pending: PendingStudy, reason: str | None) -> None:
        self._receiving.discard(pending.orthanc_id)
        forget(self._engine, pending)
        if reason:
            log.warning("dropped Orthanc study %s from the queue: %s", pending.orthanc_id, reason)

    def _check_again(self, pending: PendingStudy) -> None:
        reschedule(self._engine, pending, self.clock() + timedelta(seconds=self._interval), None, 0)

    def _retry_later(self, pending: PendingStudy, error: str) -> None:
        attempts = pending.attempts + 1
        delay = min(_MAX_BACKOFF_SECONDS, 2**attempts)
        reschedule(self._engine, pending, self.clock() + timedelta(seconds=delay), error, attempts)

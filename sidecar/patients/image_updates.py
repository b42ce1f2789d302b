"""Bringing the images Orthanc stores to their patient (IHE Patient Information Reconciliation).

After a merge, a changed identifier, corrected demographics or a study moved to its order's
patient, every stored instance of the patient's studies must carry the patient as the registry
now knows it (PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex), with
its Study, Series and SOP Instance UIDs unchanged, so that the viewer and any DICOM client see
the right patient. That is work on Orthanc, which can be down or slow: it is queued in the
transaction of the change (the `image_update` table, one row per study) and done here, after the
ACK or the API's answer, retried until Orthanc has it.

How the files are rewritten: sidecar.patients.image_rewrite.

What to write is read from the study when the work is done, so only the latest state is written.
A value the registry does not hold (no birth date, say) is left as the images have it.
Log lines and errors name studies by record or Orthanc id only: never a patient's data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from sidecar.core import audit
from sidecar.core.background import BackgroundWorker, backoff_delay, seconds_until_next_attempt
from sidecar.core.dependencies import provide_optional
from sidecar.core.models import table_of, utcnow
from sidecar.ingest.orthanc_client import (
    OrthancClient,
    OrthancError,
    OrthancNotFound,
)
from sidecar.ingest.queue import queue_studies
from sidecar.patients.image_rewrite import Rewritten, patient_values, rewrite_study
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

IMAGE_UPDATE_ACTOR = "system:image-updates"


class Cause:
    """What queued a study's images for an update (the `cause` column)."""

    MERGE = "merge"
    DEMOGRAPHICS = "demographics"
    IDENTIFIER = "identifier"
    MOVE = "move"
    IMAGES = "images"  # images arrived under a merged-away identifier


# -- the queue -----------------------------------------------------------------------------------


def queue(session: Session, study_ids: Iterable[int], cause: str) -> None:
    """Queues the studies' images for an update, in the caller's transaction. A study queued
    already (or done, or failed) is due again now: its images get the latest values."""
    now = utcnow()
    rows = [
        {
            "study_id": study_id,
            "status": ImageUpdateStatus.PENDING.value,
            "cause": cause,
            "queued_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "instances_updated": 0,
            "completed_at": None,
        }
        for study_id in dict.fromkeys(study_ids)
    ]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = table_of(ImageUpdate)
    statement = dialect.insert(table).values(rows)
    excluded = statement.excluded
    session.connection().execute(
        statement.on_conflict_do_update(
            index_elements=["study_id"],
            set_={
                name: getattr(excluded, name)
                for name in (
                    "status",
                    "cause",
                    "queued_at",
                    "attempts",
                    "next_attempt_at",
                    "last_error",
                    "instances_updated",
                    "completed_at",
                )
            },
        )
    )


def queue_patient_studies(session: Session, patient_record_id: int, cause: str) -> None:
    """Queues every study of the patient that has images."""
    study_ids = session.exec(
        select(Study.id).where(
            Study.patient_record_id == patient_record_id, col(Study.orthanc_id).is_not(None)
        )
    ).all()
    queue(session, [i for i in study_ids if i is not None], cause)


def queue_if_filed_elsewhere(session: Session, study: Study) -> None:
    """Images that arrived under an identifier since merged into the study's patient (the
    study is flagged with it): queued, unless they failed before (a person must look)."""
    if study.id is None or not study.patient_identity_issue or study.patient_record_id is None:
        return
    existing = session.get(ImageUpdate, study.id)
    if existing is not None and existing.status != ImageUpdateStatus.DONE:
        return
    queue(session, [study.id], Cause.IMAGES)


@dataclass(frozen=True)
class Backlog:
    pending: int
    failed: int
    oldest_pending_at: datetime | None


def backlog(session: Session) -> Backlog:
    counts = dict(
        session.exec(
            select(ImageUpdate.status, func.count())
            .where(col(ImageUpdate.status) != ImageUpdateStatus.DONE)
            .group_by(ImageUpdate.status)
        ).all()
    )
    oldest = session.exec(
        select(func.min(ImageUpdate.queued_at)).where(
            ImageUpdate.status == ImageUpdateStatus.PENDING
        )
    ).one()
    return Backlog(
        pending=counts.get(ImageUpdateStatus.PENDING, 0),
        failed=counts.get(ImageUpdateStatus.FAILED, 0),
        oldest_pending_at=oldest,
    )


# -- the work on Orthanc ---------------------------------------------------------------------------


Clock = Callable[[], datetime]


class ImageUpdater(BackgroundWorker):
    """Works through the queue one study at a time. Orthanc unreachable: the study waits with
    a doubling delay and the rest wait with it (they would fail alike)."""

    def __init__(
        self,
        engine: Engine,
        orthanc: OrthancClient,
        *,
        max_delay: float = 60.0,
        clock: Clock = utcnow,
        idle_poll: float = 1.0,
    ) -> None:
        # The queue is filled by ADT, the API and the sync, in other transactions: a short idle
        # poll finds their work without wiring every one of them to this worker.
        super().__init__("image-updates", clock=clock, idle_poll=idle_poll)
        self._engine = engine
        self._orthanc = orthanc
        self._max_delay = max_delay
        self.last_error: str | None = None

    def run_once(self) -> float | None:
        while not self.stopping:
            now = self.clock()
            with Session(self._engine) as session:
                job = session.exec(
                    select(ImageUpdate)
                    .where(
                        ImageUpdate.status == ImageUpdateStatus.PENDING,
                        col(ImageUpdate.next_attempt_at) <= now,
                    )
                    .order_by(col(ImageUpdate.next_attempt_at), col(ImageUpdate.study_id))
                    .limit(1)
                ).first()
                if job is None:
                    return seconds_until_next_attempt(
                        session,
                        ImageUpdate.next_attempt_at,
                        ImageUpdate.status == ImageUpdateStatus.PENDING,
                        now=now,
                    )
                study = session.get(Study, job.study_id)
                queued_at, attempts = job.queued_at, job.attempts
                values = patient_values(study) if study is not None else {}
                uid = study.study_instance_uid if study is not None else ""
            if not values.get("PatientID"):
                self._finish(job.study_id, queued_at, Rewritten(0, (), ()))
                continue
            try:
                outcome = rewrite_study(self._orthanc, uid, values)
            except OrthancNotFound as error:
                # An instance deleted meanwhile (look again at what is there), or a route this
                # Orthanc lacks (its configuration: lastError says which): soon, then less often.
                delay = backoff_delay(attempts + 1, cap=self._max_delay)
                self._retry(job.study_id, queued_at, attempts + 1, str(error), delay)
                continue
            except OrthancError as error:
                delay = backoff_delay(attempts + 1, cap=self._max_delay)
                self._retry(job.study_id, queued_at, attempts + 1, str(error), delay)
                return delay
            self._finish(job.study_id, queued_at, outcome)
        return None

    def _retry(
        self, study_id: int, queued_at: datetime, attempts: int, error: str, delay: float
    ) -> None:
        self.last_error = error
        log.warning(
            "study %s: images not updated yet (%s); again in %.0f s", study_id, error, delay
        )
        with Session(self._engine) as session:
            job = session.get(ImageUpdate, study_id)
            if job is None or job.queued_at != queued_at:
                return  # queued again meanwhile: due now
            job.attempts = attempts
            job.last_error = error[:500]
            job.next_attempt_at = self.clock() + timedelta(seconds=delay)
            session.add(job)
            session.commit()

    @staticmethod
    def _follow(session: Session, study: Study, outcome: Rewritten) -> None:
        """The study's record follows its images: the Orthanc study now holding them
        (registered again: its images' Orthanc ids changed with the patient id), and no flag
        that they name another patient. Also after a retry that found the files done."""
        moved = len(outcome.orthanc_ids) == 1 and study.orthanc_id != outcome.orthanc_ids[0]
        flagged = study.patient_identity_issue is not None
        if not (outcome.instances or moved or flagged):
            return
        if moved:
            study.orthanc_id = outcome.orthanc_ids[0]
        study.patient_identity_issue = None  # the images carry its patient now
        study.updated_at = utcnow()
        session.add(study)
        queue_studies(session, outcome.orthanc_ids, "image-update", now=utcnow())
        audit.record(
            session,
            actor=IMAGE_UPDATE_ACTOR,
            action="study.images_updated_for_patient",
            entity_type="study",
            entity_id=study.id,
            patient_record_id=study.patient_record_id,
            instances=outcome.instances,
            orthanc_ids=list(outcome.orthanc_ids),
        )

    def _finish(self, study_id: int, queued_at: datetime, outcome: Rewritten) -> None:
        with Session(self._engine) as session:
            job = session.get(ImageUpdate, study_id)
            study = session.get(Study, study_id)
            if job is None or job.queued_at != queued_at:
                return  # queued again meanwhile: that newer work comes next
            job.instances_updated = outcome.instances
            job.completed_at = utcnow()
            if outcome.not_kept:
                job.status = ImageUpdateStatus.FAILED
                job.last_error = "Orthanc kept other values for " + ", ".join(outcome.not_kept)
                self.last_error = job.last_error
            else:
                job.status, job.last_error = ImageUpdateStatus.DONE, None
            session.add(job)
            if study is not None and not outcome.not_kept:
                self._follow(session, study, outcome)
            session.commit()
        log.info(
            "study %s: %d instance(s) rewritten for its patient%s",
            study_id,
            outcome.instances,
            " (values not kept: " + ", ".join(outcome.not_kept) + ")" if outcome.not_kept else "",
        )


ImageUpdaterDep = Annotated[ImageUpdater | None, Depends(provide_optional(ImageUpdater))]

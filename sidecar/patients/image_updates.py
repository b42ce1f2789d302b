"""Bringing the images Orthanc stores to their patient (IHE Patient Information Reconciliation).

After a merge, a changed identifier, corrected demographics or a study moved to its order's
patient, every stored instance of the patient's studies must carry the patient as the registry
now knows it (PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex), with
its Study, Series and SOP Instance UIDs unchanged, so that the viewer and any DICOM client see
the right patient. That is work on Orthanc, which can be down or slow: it is queued in the
transaction of the change (the `image_update` table, one row per study) and done here, after the
ACK or the API's answer, retried until Orthanc has it.

How one instance is rewritten (Orthanc 1.10 cannot change a PatientID in place):
- Orthanc writes the new file (`/instances/{id}/modify` keeping the UIDs: Orthanc knows the
  file's character set), and the file is stored again.
- Same PatientID (demographics only): the same Orthanc id, so the new file replaces the old one
  (`OverwriteInstances`); nothing is ever missing.
- Another PatientID: another Orthanc id. The study the instances leave is first marked with the
  new id (user metadata PatientReassignment), which the ingress filter (dicom_ingress.lua)
  requires before it accepts that Study Instance UID under another patient; the old instance is
  deleted only once its new copy is stored. A crash anywhere leaves a copy of every instance,
  and the next attempt finishes the work: an instance already right is skipped.
- Orthanc then re-reads the study's main tags from its files (`reconstruct`), which DICOMweb
  answers from, and the result is read back: values Orthanc did not keep fail the update
  (FAILED, with the attributes named) rather than looping.

What to write is read from the study when the work is done, so only the latest state is written.
A value the registry does not hold (no birth date, say) is left as the images have it.
Log lines and errors name studies by record or Orthanc id only: never a patient's data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

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
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.studies.models import Study

log = logging.getLogger(__name__)

IMAGE_UPDATE_ACTOR = "system:image-updates"
#: The Orthanc user metadata (orthanc/orthanc.json) naming the patient id a study is re-filed
#: under; read by orthanc/dicom_ingress.lua.
REASSIGNMENT_METADATA = "PatientReassignment"

#: What Orthanc's index holds of a study's patient (IssuerOfPatientID is not indexed in 1.10).
_INDEXED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
#: Instances of one study rewritten at once (measured: bench/patient_merge.py).
_CONCURRENT_INSTANCES = 4

#: The patient-level attributes written, as Orthanc's short tags name them.
PATIENT_TAGS = {
    "PatientID": "0010,0020",
    "IssuerOfPatientID": "0010,0021",
    "PatientName": "0010,0010",
    "PatientBirthDate": "0010,0030",
    "PatientSex": "0010,0040",
}


class Cause:
    """What queued a study's images for an update (the `cause` column)."""

    MERGE = "merge"
    DEMOGRAPHICS = "demographics"
    IDENTIFIER = "identifier"
    MOVE = "move"
    IMAGES = "images"  # images arrived under a merged-away identifier


def patient_values(study: Study) -> dict[str, str]:
    """The patient-level attributes the study's images must carry (its patient's copies)."""
    values = {"PatientID": study.patient_id or ""}
    if study.issuer_of_patient_id:
        values["IssuerOfPatientID"] = study.issuer_of_patient_id
    if study.patient_name:
        values["PatientName"] = study.patient_name
    if study.patient_birth_date:
        values["PatientBirthDate"] = study.patient_birth_date.strftime("%Y%m%d")
    if study.patient_sex:
        values["PatientSex"] = study.patient_sex
    return values


def _normal(name: str, value: Any) -> str:
    text = str(value or "").strip(" \x00")
    if name == "PatientName":
        # Empty trailing components are the same name ("DOE^JOHN^^" is "DOE^JOHN").
        text = "=".join(group.rstrip("^ ") for group in text.split("=")).rstrip("=")
    return text


def differing(values: Mapping[str, str], tags: Mapping[str, Any]) -> list[str]:
    """The attributes (by keyword) whose value in an instance's tags (Orthanc's short form) is
    not the one wanted. An issuer the patient does not have is one too: it is part of the
    identifier, so the images must not name one."""
    wrong = [
        name
        for name, value in values.items()
        if _normal(name, tags.get(PATIENT_TAGS[name])) != _normal(name, value)
    ]
    issuer = PATIENT_TAGS["IssuerOfPatientID"]
    if "IssuerOfPatientID" not in values and issuer in tags and _normal("", tags[issuer]):
        wrong.append("IssuerOfPatientID")
    return wrong


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


@dataclass(frozen=True)
class Rewritten:
    instances: int  # instances stored again with the new values
    orthanc_ids: tuple[str, ...]  # the Orthanc studies holding the UID afterwards
    not_kept: tuple[str, ...]  # attributes Orthanc's files still disagree on


def holding_id(study_instance_uid: str) -> str:
    """The PatientID an instance steps aside under while it is rewritten under its own
    PatientID (see `rewrite_study`): no patient's, fixed per study so a retry finds it."""
    return "PIR-HOLD-" + hashlib.sha256(study_instance_uid.encode()).hexdigest()[:24]


def _move(
    orthanc: OrthancClient, instance_id: str, values: dict[str, str], remove: list[str]
) -> tuple[str, str]:
    """Stores the instance rewritten with `values` under its new Orthanc id, then deletes the
    original: a copy exists at every moment. The copy's Orthanc id and its study's."""
    stored = orthanc.store_instance(orthanc.modified_instance(instance_id, values, remove))
    if stored[0] != instance_id:
        orthanc.delete_instance(instance_id)
    return stored


def rewrite_study(
    orthanc: OrthancClient, study_instance_uid: str, values: dict[str, str]
) -> Rewritten:
    """Brings every stored instance of the study, and Orthanc's index of it, to `values`;
    raises OrthancError when Orthanc fails (the work already done stays done, and the next
    attempt finishes it: an instance already right is skipped).

    Under another PatientID an instance gets another Orthanc id: its copy is stored, then the
    original deleted. Under the same PatientID the copy would have the original's id, and
    Orthanc keeps an instance it holds when the same one is sent again (OverwriteInstances is
    off, so that a modality re-sending old images never undoes a correction): the instance
    first steps aside under a holding id, then comes back with the new values."""
    target = values["PatientID"]
    remove = [] if "IssuerOfPatientID" in values else ["IssuerOfPatientID"]
    holding = holding_id(study_instance_uid)
    rewritten = 0
    for orthanc_id, stored_patient_id in orthanc.studies_with_uid(study_instance_uid).items():
        stale = [
            instance_id
            for instance_id, tags in orthanc.study_instances_tags(orthanc_id).items()
            if differing(values, tags)
        ]
        if not stale:
            continue
        in_place = stored_patient_id == target
        orthanc.mark_study(orthanc_id, REASSIGNMENT_METADATA, holding if in_place else target)

        def rewrite(instance_id: str, in_place: bool = in_place) -> None:
            if not in_place:
                _move(orthanc, instance_id, values, remove)
                return
            held, held_study = _move(orthanc, instance_id, {"PatientID": holding}, [])
            orthanc.mark_study(held_study, REASSIGNMENT_METADATA, target)
            _move(orthanc, held, values, remove)

        # A few instances at a time keep Orthanc's threads busy while one waits on its disk.
        # The first failure is raised once the others end.
        with ThreadPoolExecutor(max_workers=_CONCURRENT_INSTANCES) as pool:
            for done in [pool.submit(rewrite, instance_id) for instance_id in stale]:
                done.result()
        rewritten += len(stale)
    holders = tuple(orthanc.studies_with_uid(study_instance_uid))
    not_kept: set[str] = set()
    for orthanc_id in holders:
        # Orthanc's index (its C-FIND, DICOMweb's QIDO) keeps the patient tags of the first
        # instance it filed: re-read from the files whenever it disagrees.
        if rewritten or _index_differs(orthanc, orthanc_id, values):
            orthanc.reconstruct_study(orthanc_id)
            not_kept.update(_index_differs(orthanc, orthanc_id, values))
        for tags in orthanc.study_instances_tags(orthanc_id).values():
            not_kept.update(differing(values, tags))
    return Rewritten(rewritten, holders, tuple(sorted(not_kept)))


def _index_differs(orthanc: OrthancClient, orthanc_id: str, values: dict[str, str]) -> list[str]:
    """The attributes Orthanc's index of the study holds other values for."""
    indexed = orthanc.study(orthanc_id).get("PatientMainDicomTags", {})
    shown = {PATIENT_TAGS[name]: indexed.get(name, "") for name in _INDEXED}
    return differing({name: values[name] for name in _INDEXED if name in values}, shown)


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

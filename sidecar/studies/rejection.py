"""Withdrawing images from a study (IHE IOCM rejection): one image or one whole series, for one
of the DICOM rejection reasons (sidecar.studies.removal_models.RejectionReason).

Who may withdraw what (the reason decides; physicians and integrations never):
- QUALITY and WRONG_WORKLIST_ENTRY: technologists, radiologists, administrators;
- PATIENT_SAFETY: radiologists and administrators;
- RETENTION (a retention policy expired): administrators only.
Always within the caller's care scope (404 outside it, as for images that do not exist). A
study whose report is signed (FINAL, AMENDED, CORRECTED) loses images only for PATIENT_SAFETY,
by an administrator; its report is then flagged as needing an amendment (audited).

How: the removal is recorded first (durably, with what it withdraws, why and by whom) and
audited, then Orthanc is asked to delete every copy it holds of those instances (or of that
series) within the study. Once Orthanc has, the image rows go and the counts follow
(sidecar.studies.image_rows), in one transaction with the record marked DONE. When Orthanc
fails, the record stays waiting and the removal worker (sidecar.studies.removal_worker) tries
again with a growing delay until it is done: never given up, never half done silently
(/health shows what waits). Carrying a removal out again is harmless: what Orthanc no longer
holds is skipped and rows already gone are not counted twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.background import backoff_delay
from sidecar.core.errors import ConflictingState, NotPermitted, UnknownRecord
from sidecar.core.models import table_of, utcnow
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.reports.models import RadiologyReport, ReportStatus
from sidecar.studies.image_rows import drop_image_rows
from sidecar.studies.models import Image, Series, Study
from sidecar.studies.removal_models import (
    WAITING_STATES,
    ImageRemoval,
    ImageRemovalInstance,
    RejectionReason,
    RemovalScope,
    RemovalState,
)

log = logging.getLogger(__name__)

#: The actor of a removal the worker completes.
REMOVAL_ACTOR = "system:image-removals"
#: A removal whose study's images are being rewritten for their patient waits for that, checking
#: again this often.
REWRITE_RECHECK = timedelta(seconds=5)
WAITING_FOR_REWRITE = (
    "waiting for the update of this study's images for their patient to finish (it could store "
    "again what was removed)"
)
#: While a request carries its removal out, the worker leaves it alone this long (after a
#: crash mid-request, the worker takes it over then).
REQUEST_LEASE = timedelta(seconds=60)

_R = Role
ALLOWED_ROLES: dict[RejectionReason, frozenset[Role]] = {
    RejectionReason.QUALITY: frozenset({_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST}),
    RejectionReason.WRONG_WORKLIST_ENTRY: frozenset({_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST}),
    RejectionReason.PATIENT_SAFETY: frozenset({_R.ADMIN, _R.RADIOLOGIST}),
    RejectionReason.RETENTION: frozenset({_R.ADMIN}),
}
SIGNED = (ReportStatus.FINAL, ReportStatus.AMENDED, ReportStatus.CORRECTED)


def check_role(user: User, reason: RejectionReason) -> None:
    allowed = ALLOWED_ROLES[reason]
    if user.role not in allowed:
        names = ", ".join(sorted(role.value for role in allowed))
        raise NotPermitted(f"removing images for {reason.value} is for: {names}")


@dataclass(frozen=True)
class Target:
    """What one request withdraws: one image, or one series of the study."""

    study: Study
    series: Series
    scope: RemovalScope
    images: list[Image]

    @property
    def instance_count(self) -> int:
        if self.scope is RemovalScope.IMAGE:
            return len(self.images)
        return max(self.series.instance_count, len(self.images))


def image_target(session: Session, image: Image) -> Target:
    series = session.get(Series, image.series_id)
    study = session.get(Study, image.study_id)
    if series is None or study is None:
        raise UnknownRecord(f"image {image.id} not found")
    return Target(study, series, RemovalScope.IMAGE, [image])


def series_target(session: Session, study: Study, series_uid: str) -> Target:
    series = session.exec(
        select(Series).where(Series.study_id == study.id, Series.series_instance_uid == series_uid)
    ).first()
    if series is None:
        raise UnknownRecord(f"study {study.id} has no series {series_uid}")
    images = session.exec(select(Image).where(Image.series_id == series.id)).all()
    return Target(study, series, RemovalScope.SERIES, list(images))


def request_removal(
    session: Session, target: Target, reason: RejectionReason, user: User, *, now: datetime
) -> ImageRemoval:
    """Records the removal (waiting, leased to this request for REQUEST_LEASE), flags a signed
    report, audits; refuses (409) what is already being removed and what a signed report
    forbids. The caller commits, then carries it out (`carry_out`)."""
    study_id = _id(target.study)
    _refuse_if_waiting(session, target)
    report = _signed_report(session, study_id)
    if report is not None and not (
        reason is RejectionReason.PATIENT_SAFETY and user.role == Role.ADMIN
    ):
        raise ConflictingState(
            f"study {study_id} has a signed report ({report.status.value}): its images can "
            "only be removed for PATIENT_SAFETY, by an administrator, and the report must "
            "then be amended"
        )
    removal = ImageRemoval(
        study_id=study_id,
        study_instance_uid=target.study.study_instance_uid,
        series_instance_uid=target.series.series_instance_uid,
        scope=target.scope,
        reason=reason,
        reason_code=reason.code,
        reason_meaning=reason.meaning,
        instance_count=target.instance_count,
        requested_by=user.username,
        requested_at=now,
        state=RemovalState.QUEUED,
        next_attempt_at=now + REQUEST_LEASE,
        report_id=report.id if report is not None else None,
    )
    session.add(removal)
    session.flush()
    removal_id = _id(removal)
    for image in target.images:
        session.add(
            ImageRemovalInstance(
                removal_id=removal_id,
                sop_instance_uid=image.sop_instance_uid,
                image_id=image.id,
                orthanc_id=image.orthanc_id,
            )
        )
    # An image is named with its ids; a series by its UID (its instances, possibly thousands,
    # are in the removal's record).
    which = (
        {
            "image_ids": [image.id for image in target.images],
            "sop_instance_uids": [image.sop_instance_uid for image in target.images],
        }
        if target.scope is RemovalScope.IMAGE
        else {}
    )
    audit.record(
        session,
        actor=user.username,
        action=f"{target.scope.value.lower()}.rejected",
        entity_type=target.scope.value.lower(),
        entity_id=(
            target.images[0].id
            if target.scope is RemovalScope.IMAGE
            else target.series.series_instance_uid
        ),
        study_id=study_id,
        removal_id=removal_id,
        reason=reason,
        reason_code=reason.code,
        series_instance_uid=target.series.series_instance_uid,
        instance_count=target.instance_count,
        **which,
    )
    if report is not None:
        _flag_for_amendment(session, report, removal, user.username, now=now)
    session.flush()
    return removal


def _refuse_if_waiting(session: Session, target: Target) -> None:
    waiting = session.exec(
        select(ImageRemoval).where(
            ImageRemoval.series_instance_uid == target.series.series_instance_uid,
            col(ImageRemoval.state).in_(WAITING_STATES),
        )
    ).all()
    uids = {image.sop_instance_uid for image in target.images}
    for removal in waiting:
        same = removal.scope is RemovalScope.SERIES or (
            target.scope is RemovalScope.IMAGE and uids & set(_sop_uids(session, _id(removal)))
        )
        if same:
            raise ConflictingState(
                f"already being removed: removal {removal.id} ({removal.state.value}) "
                f"withdraws these images; GET /api/studies/{removal.study_id}/removals shows it"
            )


def _signed_report(session: Session, study_id: int) -> RadiologyReport | None:
    return session.exec(
        select(RadiologyReport).where(
            RadiologyReport.study_id == study_id,
            col(RadiologyReport.deleted_at).is_(None),
            col(RadiologyReport.status).in_(SIGNED),
        )
    ).first()


def _flag_for_amendment(
    session: Session,
    report: RadiologyReport,
    removal: ImageRemoval,
    actor: str,
    *,
    now: datetime,
) -> None:
    report.amendment_required_reason = (
        f"images removed after signing ({removal.scope.value.lower()}, removal {removal.id}): "
        f"{removal.reason_meaning} (DCM {removal.reason_code})"
    )
    report.updated_at = now
    session.add(report)
    audit.record(
        session,
        actor=actor,
        action="report.amendment_required",
        entity_type="report",
        entity_id=report.id,
        study_id=removal.study_id,
        removal_id=removal.id,
        reason=removal.reason,
    )


def _sop_uids(session: Session, removal_id: int) -> list[str]:
    return list(
        session.exec(
            select(ImageRemovalInstance.sop_instance_uid).where(
                ImageRemovalInstance.removal_id == removal_id
            )
        ).all()
    )


# -- carrying it out ---------------------------------------------------------------------------


def delete_in_orthanc(orthanc: OrthancClient, removal: ImageRemoval, sop_uids: list[str]) -> None:
    """Deletes every copy Orthanc holds of the removal's series (SERIES) or instances (IMAGE)
    within the removal's study (a resource of the same UID in another study is left alone);
    raises OrthancError when Orthanc fails. What Orthanc no longer holds is skipped."""
    studies = set(orthanc.resources_with_uid(removal.study_instance_uid, "Study"))
    if removal.scope is RemovalScope.SERIES:
        for series_id in orthanc.resources_with_uid(removal.series_instance_uid, "Series"):
            if orthanc.parent_study_of_series(series_id) in studies:
                orthanc.delete_series(series_id)
        return
    for uid in sop_uids:
        for instance_id in orthanc.resources_with_uid(uid, "Instance"):
            if orthanc.parent_study_of_instance(instance_id) in studies:
                orthanc.delete_instance(instance_id)


def carry_out(
    session: Session,
    orthanc: OrthancClient,
    removal_id: int,
    *,
    actor: str,
    max_delay: float,
    now: datetime,
) -> bool:
    """Asks Orthanc to delete what the removal withdraws, then completes it (True), or records
    the failure and when to try again (False). Commits."""
    removal = session.get(ImageRemoval, removal_id)
    if removal is None or removal.state is RemovalState.DONE:
        return True
    sop_uids = _sop_uids(session, removal_id)
    attempts = removal.attempts
    started = utcnow()
    rewriting = _images_being_rewritten(session, removal.study_id, since=started)
    session.commit()  # no transaction held open while Orthanc works
    try:
        delete_in_orthanc(orthanc, removal, sop_uids)
    except OrthancError as error:
        delay = backoff_delay(attempts + 1, cap=max_delay)
        _retry_later(session, removal_id, attempts + 1, str(error), now + timedelta(seconds=delay))
        return False
    if rewriting or _images_being_rewritten(session, removal.study_id, since=started):
        # The patient's image update stores a rewritten copy of each instance, then deletes the
        # original: a copy written after this delete would bring a rejected image back. Done
        # once no update of the study is waiting or ran meanwhile (deleting again is harmless).
        _retry_later(session, removal_id, attempts, WAITING_FOR_REWRITE, now + REWRITE_RECHECK)
        return False
    _complete(session, removal_id, sop_uids, actor=actor)
    return True


def _images_being_rewritten(session: Session, study_id: int, *, since: datetime) -> bool:
    """An update of the study's images for its patient (sidecar.patients.image_updates) is
    waiting or running, or completed after `since`."""
    update_row = session.get(ImageUpdate, study_id)
    session.commit()
    if update_row is None:
        return False
    return update_row.status is ImageUpdateStatus.PENDING or (
        update_row.completed_at is not None and update_row.completed_at >= since
    )


def _retry_later(
    session: Session, removal_id: int, attempts: int, error: str, when: datetime
) -> None:
    session.connection().execute(
        update(table_of(ImageRemoval))
        .where(
            table_of(ImageRemoval).c.id == removal_id,
            table_of(ImageRemoval).c.state != RemovalState.DONE.value,
        )
        .values(
            state=RemovalState.RETRYING.value,
            attempts=attempts,
            last_error=error[:500],
            next_attempt_at=when,
        )
    )
    session.commit()
    log.warning(
        "image removal %s: Orthanc did not remove the images yet (%s); tried again at %s",
        removal_id,
        error,
        when.isoformat(timespec="seconds"),
    )


def _complete(session: Session, removal_id: int, sop_uids: list[str], *, actor: str) -> None:
    """DONE, the rows dropped and the counts fixed, in one transaction; only the first of two
    runs completing the same removal does it (the state changes once)."""
    table = table_of(ImageRemoval)
    now = utcnow()
    changed = session.connection().execute(
        update(table)
        .where(table.c.id == removal_id, table.c.state != RemovalState.DONE.value)
        .values(state=RemovalState.DONE.value, completed_at=now, last_error=None)
    )
    if changed.rowcount != 1:
        session.rollback()
        return
    removal = session.get(ImageRemoval, removal_id)
    assert removal is not None
    dropped = drop_image_rows(
        session,
        removal.study_id,
        sop_instance_uids=sop_uids,
        series_instance_uids=(
            [removal.series_instance_uid] if removal.scope is RemovalScope.SERIES else []
        ),
    )
    audit.record(
        session,
        actor=actor,
        action=f"{removal.scope.value.lower()}.removal_completed",
        entity_type="study",
        entity_id=removal.study_id,
        removal_id=removal_id,
        images_dropped=dropped.images,
        series_dropped=list(dropped.series),
        instance_count=dropped.study_instance_count,
        series_count=dropped.study_series_count,
    )
    session.commit()
    log.info(
        "image removal %s done: %d image row(s), %d series dropped from study %s",
        removal_id,
        dropped.images,
        len(dropped.series),
        removal.study_id,
    )


def _id(row: Study | ImageRemoval) -> int:
    assert row.id is not None
    return row.id

"""Registering what Orthanc holds: idempotent, keyed on StudyInstanceUID.

A study may become stable several times (late instances) and is reported by both the plugin and
the change log, so every function here can run again on the same input and leave one row.
The sidecar's clinical context wins over the DICOM header: DICOM values fill empty fields only,
while counts, modalities and Orthanc ids always follow what Orthanc stores.

One row is one Orthanc study. Orthanc files studies under PatientID and StudyInstanceUID, so one
UID sent under two patient ids is two Orthanc studies (the ingress filter refuses the second, but
one may predate it or race it): the row stays with the Orthanc study it was registered from, the
other's images are never merged into it, and the row records the other patient ids as a conflict
(shown in the API and /health, and kept from the viewer) until Orthanc holds one patient again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from sqlmodel import Session, col, select

from sidecar.core import audit
from sidecar.core.models import join_multi, utcnow
from sidecar.core.workflow import move
from sidecar.ingest.dicom_mapping import ImageRecord, StudyRecord
from sidecar.operations import metrics
from sidecar.studies.models import STUDY_WORKFLOW, Image, Series, Study, StudyStatus

log = logging.getLogger(__name__)

_FILLED_FROM_DICOM = (
    "accession_number",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "body_part",
)

_AWAITING_IMAGES = frozenset({StudyStatus.SCHEDULED, StudyStatus.ARRIVED, StudyStatus.IN_PROGRESS})


def register_study(
    session: Session, record: StudyRecord, same_uid: Mapping[str, str] | None = None
) -> Study:
    """Creates or updates the study and its series; the caller commits. `same_uid` holds every
    Orthanc study with this StudyInstanceUID (Orthanc id -> PatientID), `record`'s included;
    None when Orthanc was not asked (taken as `record`'s alone)."""
    same_uid = same_uid if same_uid is not None else {record.orthanc_id: record.patient_id or ""}
    study = session.exec(
        select(Study).where(Study.study_instance_uid == record.study_instance_uid)
    ).first()
    created = study is None
    if study is None:
        study = Study(study_instance_uid=record.study_instance_uid, status=StudyStatus.COMPLETED)
    elif study.orthanc_id != record.orthanc_id and study.orthanc_id in same_uid:
        # Another Orthanc study (another patient) under the UID of this row's study.
        _record_conflict(session, study, same_uid)
        return study
    before = (study.series_count, study.instance_count, study.status)
    # Images deleted in Orthanc (sidecar.ingest.deletions) that came back: the study re-opens,
    # audited with the registration (its counts changed from none).
    study.images_deleted_at = study.removed_at = None

    for name in _FILLED_FROM_DICOM:
        if getattr(study, name) in (None, ""):
            setattr(study, name, getattr(record, name))
    study.modalities = join_multi(record.modalities)
    study.orthanc_id = record.orthanc_id
    study.orthanc_last_update = record.orthanc_last_update
    study.series_count = len(record.series)
    study.instance_count = record.instance_count
    if not created and study.status in _AWAITING_IMAGES:
        # Images stored and stable: acquisition is complete, the study is ready for reading.
        # (A study being read or reported stays where it is when late images arrive.) Audited
        # below with the registration, which names the status.
        move(
            session,
            study,
            STUDY_WORKFLOW,
            StudyStatus.COMPLETED,
            actor=audit.ORTHANC_SYNC_ACTOR,
            audited=False,
        )
    now = utcnow()
    study.images_received_at = now
    after = (study.series_count, study.instance_count, study.status)
    if study.instance_count and (created or not before[1]):  # once, at its first images
        metrics.on_commit(session, metrics.STUDIES_REGISTERED.inc)
    if created or after != before:
        study.updated_at = now
        session.add(study)
        session.flush()
        audit.record(
            session,
            actor=audit.ORTHANC_SYNC_ACTOR,
            action="study.registered" if created else "study.images_updated",
            entity_type="study",
            entity_id=study.id,
            orthanc_id=record.orthanc_id,
            series_count=study.series_count,
            instance_count=study.instance_count,
            status=study.status,
        )
    else:
        session.add(study)
        session.flush()
    _register_series(session, study, record)
    _record_conflict(session, study, same_uid)
    return study


def _record_conflict(session: Session, study: Study, same_uid: Mapping[str, str]) -> None:
    """Sets (or clears, once resolved) the patient ids Orthanc holds this UID under besides the
    study's own; audited when it changes, with Orthanc ids only."""
    others = sorted({pid for pid in same_uid.values() if pid != (study.patient_id or "")})
    # At most 15 ids of at most 64 characters fit the column whole.
    conflict = "\\".join(others[:15]) if len(same_uid) > 1 and others else None
    if conflict == study.conflicting_patient_ids:
        return
    study.conflicting_patient_ids = conflict
    study.updated_at = utcnow()
    session.add(study)
    session.flush()
    audit.record(
        session,
        actor=audit.ORTHANC_SYNC_ACTOR,
        action="study.patient_conflict" if conflict else "study.patient_conflict_resolved",
        entity_type="study",
        entity_id=study.id,
        orthanc_ids=sorted(same_uid),
    )
    if conflict:
        log.warning(
            "study %s: Orthanc holds its Study Instance UID under %d patient ids; "
            "kept from the viewer until resolved",
            study.id,
            len(others) + 1,
        )


def _register_series(session: Session, study: Study, record: StudyRecord) -> None:
    assert study.id is not None
    uids = [s.series_instance_uid for s in record.series]
    existing = {
        s.series_instance_uid: s
        for s in session.exec(select(Series).where(col(Series.series_instance_uid).in_(uids)))
    }
    for item in record.series:
        series = existing.get(item.series_instance_uid) or Series(
            study_id=study.id, series_instance_uid=item.series_instance_uid
        )
        series.study_id = study.id
        series.series_number = item.series_number
        series.series_description = series.series_description or item.series_description
        series.modality = item.modality
        series.body_part = series.body_part or item.body_part
        series.instance_count = item.instance_count
        series.orthanc_id = item.orthanc_id
        session.add(series)
    session.flush()


def known_image_orthanc_ids(session: Session, study_id: int) -> set[str]:
    rows = session.exec(select(Image.orthanc_id).where(Image.study_id == study_id))
    return {row for row in rows if row}


def register_images(
    session: Session,
    study: Study,
    images: Iterable[ImageRecord],
    *,
    issuer_of_patient_id: str | None = None,
) -> int:
    """Creates or updates image rows; returns how many were new. The caller commits. The
    images' IssuerOfPatientID fills the study's when it has none (Orthanc's study answer does
    not carry it)."""
    assert study.id is not None
    if issuer_of_patient_id and not study.issuer_of_patient_id:
        study.issuer_of_patient_id = issuer_of_patient_id
        session.add(study)
    series_ids = {
        s.series_instance_uid: s.id
        for s in session.exec(select(Series).where(Series.study_id == study.id))
    }
    records = [image for image in images if image.series_instance_uid in series_ids]
    existing = _images_by_sop_uid(session, [r.sop_instance_uid for r in records])
    created = 0
    for item in records:
        image = existing.get(item.sop_instance_uid)
        if image is None:
            created += 1
            image = Image(
                study_id=study.id,
                series_id=series_ids[item.series_instance_uid] or 0,
                sop_instance_uid=item.sop_instance_uid,
            )
        image.study_id = study.id
        image.series_id = series_ids[item.series_instance_uid] or 0
        image.orthanc_id = item.orthanc_id
        image.sop_class_uid = item.sop_class_uid
        image.instance_number = item.instance_number
        image.rows, image.columns = item.rows, item.columns
        spacing = item.pixel_spacing
        image.pixel_spacing_row, image.pixel_spacing_column = spacing if spacing else (None, None)
        image.slice_thickness = item.slice_thickness
        image.window_center, image.window_width = item.window_center, item.window_width
        session.add(image)
    session.flush()
    return created


def _images_by_sop_uid(session: Session, uids: list[str], chunk: int = 500) -> dict[str, Image]:
    found: dict[str, Image] = {}
    for start in range(0, len(uids), chunk):
        query = select(Image).where(col(Image.sop_instance_uid).in_(uids[start : start + chunk]))
        found.update((image.sop_instance_uid, image) for image in session.exec(query))
    return found


def change_status(session: Session, study: Study, target: StudyStatus, *, actor: str) -> Study:
    """Moves the study through STUDY_WORKFLOW (audited); raises InvalidTransition otherwise."""
    # No status leads to itself: asking for the current one is refused too.
    move(session, study, STUDY_WORKFLOW, target, actor=actor)
    return study

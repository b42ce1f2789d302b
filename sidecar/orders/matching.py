"""Linking an arriving study to its imaging order (IHE Scheduled Workflow).

By accession number first, then by Study Instance UID (the one the worklist handed the modality).
A patient that differs between study and order (its id, or the id's issuer when both name one)
is flagged on the study and not linked: images of one patient must never be filed under another
patient's order. A linked study takes its order's patient (sidecar.patients), issuer included.
Images under an identifier since merged into the order's patient match it, flagged.
"""

from __future__ import annotations

from enum import Enum

from sqlmodel import Session, select

from sidecar.core import audit
from sidecar.core.errors import ConflictingState
from sidecar.orders import service as orders
from sidecar.orders.models import ImagingOrder
from sidecar.patients import image_updates
from sidecar.patients import service as patients
from sidecar.patients.models import Patient
from sidecar.studies.models import Study

PATIENT_MISMATCH = "patient id differs from the order's"
MOVED_TO_ORDER_PATIENT = "the images named another patient id; moved to the order's patient"


class PatientMismatch(Exception):
    pass


def find_order(session: Session, study: Study) -> ImagingOrder | None:
    if study.accession_number:
        order = session.exec(
            select(ImagingOrder).where(ImagingOrder.accession_number == study.accession_number)
        ).first()
        if order is not None:
            return order
    return session.exec(
        select(ImagingOrder).where(ImagingOrder.study_instance_uid == study.study_instance_uid)
    ).first()


class PatientMatch(Enum):
    SAME = "same"
    MERGED = "merged"  # an identifier since merged into the order's patient (IHE PIR)
    OTHER = "other"


def patient_match(
    session: Session, patient_id: str | None, issuer: str | None, order: ImagingOrder
) -> PatientMatch:
    """Whether an identifier (a study's, a performed step's) names the order's patient: the
    same id (and issuer, when both name one), one merged into the order's patient since, or
    another patient."""
    issuers = (issuer, order.issuer_of_patient_id)
    if not (
        (patient_id and order.patient_id != patient_id)
        or (all(issuers) and issuers[0] != issuers[1])
    ):
        return PatientMatch.SAME
    if patients.merged_into(session, patient_id or "", issuer, order.patient_record_id):
        return PatientMatch.MERGED
    return PatientMatch.OTHER


def link(session: Session, study: Study, order: ImagingOrder, *, actor: str) -> bool:
    """Links study and order; returns whether the order's status changed. The caller commits.

    Raises PatientMismatch (and leaves both unchanged) when the patient ids differ.
    """
    match = patient_match(session, study.patient_id, study.issuer_of_patient_id, order)
    if match is PatientMatch.OTHER:
        raise PatientMismatch(PATIENT_MISMATCH)
    if match is PatientMatch.MERGED:
        study.patient_identity_issue = patients.MERGED_IDENTIFIER
        if study.id is not None and study.orthanc_id is not None:
            # Orthanc's copy follows the surviving patient.
            image_updates.queue(session, [study.id], image_updates.Cause.IMAGES)
    study.issuer_of_patient_id = order.issuer_of_patient_id or study.issuer_of_patient_id
    patient = session.get(Patient, order.patient_record_id) if order.patient_record_id else None
    if patient is not None:
        patients.file_study(session, study, patient)
    study.order_id = order.id
    study.order_match_issue = None
    study.facility_id = order.facility_id or study.facility_id
    # The study takes the order's clinical context.
    study.priority = order.priority.value
    study.clinical_indication = order.clinical_indication
    study.referring_physician = order.referring_physician or study.referring_physician
    session.add(study)
    audit.record(
        session,
        actor=actor,
        action="study.linked_to_order",
        entity_type="study",
        entity_id=study.id,
        order_id=order.id,
    )
    # Images acquired: the order is under way (it completes when its result is delivered).
    return orders.start(session, order, actor=actor)


def match(session: Session, study: Study, *, actor: str) -> ImagingOrder | None:
    """Links an unlinked study to its order when one matches; returns the order if its status
    changed (listeners must hear of it). A mismatch is flagged on the study."""
    if study.order_id is not None:
        return None
    order = find_order(session, study)
    if order is None:
        return None
    try:
        changed = link(session, study, order, actor=actor)
    except PatientMismatch:
        if study.order_match_issue != PATIENT_MISMATCH:
            study.order_match_issue = PATIENT_MISMATCH
            session.add(study)
            audit.record(
                session,
                actor=actor,
                action="study.order_mismatch",
                entity_type="study",
                entity_id=study.id,
                order_id=order.id,
            )
        return None
    return order if changed else None


def move_to_order_patient(
    session: Session, study: Study, order: ImagingOrder, *, actor: str
) -> bool:
    """An administrator's decision that a study whose images name another patient belongs to
    this order: the study is filed under the order's patient and linked, and its stored images
    are queued to carry that patient (sidecar.patients.image_updates). Returns whether the
    order's status changed. The caller commits."""
    patient = session.get(Patient, order.patient_record_id) if order.patient_record_id else None
    if patient is None or study.id is None:
        raise ConflictingState(f"order {order.id} names no patient in the registry")
    prior = study.patient_record_id
    patients.file_study(session, study, patient)
    study.patient_identity_issue = MOVED_TO_ORDER_PATIENT  # until Orthanc's copy follows
    audit.record(
        session,
        actor=actor,
        action="study.moved_to_order_patient",
        entity_type="study",
        entity_id=study.id,
        prior_patient_record_id=prior,
        patient_record_id=patient.id,
        order_id=order.id,
    )
    changed = link(session, study, order, actor=actor)
    image_updates.queue(session, [study.id], image_updates.Cause.MOVE)
    return changed

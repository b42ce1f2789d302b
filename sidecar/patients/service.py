"""The patient registry's operations, one set for ADT, the API, orders and studies.

Orders and studies refer to their patient (`patient_record_id`) and carry copies of its
identifier and demographics, which every operation here rewrites in the same transaction
(`sync_copies`): the rest of the service (worklist, results, care scope, lists) keeps reading
the copies. What changes the worklist is returned as order ids, to announce after the commit.

Demographics come from ADT and from an administrator's correction. An order or a study only
creates a patient not yet known, with the demographics it carries; a known patient's record wins
over what an order says of it. Every change is audited with record ids only: no patient data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, func, select

from hl7.outgoing import with_patient
from sidecar.core import audit
from sidecar.core.errors import ConflictingState
from sidecar.core.models import table_of, utcnow
from sidecar.findings.models import CriticalFinding
from sidecar.orders.models import ImagingOrder
from sidecar.patients import image_updates
from sidecar.patients.models import NO_ISSUER, Patient, PatientSource, PatientStatus
from sidecar.reports.models import RadiologyReport
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.results.outbox import OUTBOX_MESSAGE_TYPES
from sidecar.studies.models import Study

#: The patient columns orders and studies carry as copies.
DEMOGRAPHICS = ("patient_name", "patient_birth_date", "patient_sex")
_UPDATABLE = (*DEMOGRAPHICS, "other_identifiers")
#: What a study whose images name a merged-away identifier is flagged with.
MERGED_IDENTIFIER = "the images carry a merged patient identifier; filed under the surviving one"
#: A merge chain longer than this is a loop (a database edited by hand): refused, not followed.
_MAX_CHAIN = 64


class MergedAway(ConflictingState):
    """The identifier names a patient merged into another: `surviving` is the one to use."""

    def __init__(self, surviving: Patient) -> None:
        super().__init__(f"the patient identifier was merged into patient {surviving.id}")
        self.surviving = surviving


class IdentifierTaken(ConflictingState):
    """Another patient already has the identifier."""


class MergeRefused(ConflictingState):
    """A merge that cannot be applied (a patient into itself, a prior merged elsewhere)."""


def issuer_key(issuer: str | None) -> str:
    return issuer or NO_ISSUER


def find(session: Session, patient_id: str, issuer: str | None) -> Patient | None:
    return session.exec(
        select(Patient).where(
            Patient.patient_id == patient_id,
            Patient.issuer_of_patient_id == issuer_key(issuer),
        )
    ).first()


def surviving(session: Session, patient: Patient) -> Patient:
    """The patient itself, or the end of its chain of merges."""
    current, seen = patient, {patient.id}
    while current.status == PatientStatus.MERGED and current.merged_into_id is not None:
        following = session.get(Patient, current.merged_into_id)
        if following is None or following.id in seen or len(seen) > _MAX_CHAIN:
            raise MergeRefused(f"patient {patient.id}: its chain of merges does not end")
        seen.add(following.id)
        current = following
    return current


def get_or_create(
    session: Session,
    patient_id: str,
    issuer: str | None,
    demographics: Mapping[str, Any],
    *,
    source: PatientSource,
    actor: str,
) -> tuple[Patient, bool]:
    """The patient of this identifier, created with `demographics` when unknown; whether it
    was created. Two connections creating the same patient at once both get the one row: the
    INSERT does nothing when the identifier is taken meanwhile (no IntegrityError to undo)."""
    found = find(session, patient_id, issuer)
    if found is not None:
        return found, False
    now = utcnow()
    row: dict[str, Any] = {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer_key(issuer),
        **{name: demographics.get(name) for name in DEMOGRAPHICS},
        "other_identifiers": demographics.get("other_identifiers") or [],
        "status": PatientStatus.ACTIVE,
        "source": source,
        "created_at": now,
        "updated_at": now,
    }
    dialect = session.connection().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table_of(Patient))
    created = session.connection().execute(
        insert.values(row).on_conflict_do_nothing().returning(table_of(Patient).c.id)
    )
    new_id = created.scalar_one_or_none()
    patient = find(session, patient_id, issuer)
    assert patient is not None
    if new_id is not None:
        audit.record(
            session,
            actor=actor,
            action="patient.created",
            entity_type="patient",
            entity_id=new_id,
            source=source,
        )
    return patient, new_id is not None


def copies(patient: Patient) -> dict[str, Any]:
    """The values an order or a study of this patient carries."""
    return {
        "patient_record_id": patient.id,
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer_of_patient_id or None,
        **{name: getattr(patient, name) for name in DEMOGRAPHICS},
    }


def for_order(session: Session, values: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
    """The patient columns of an order naming this patient (`values` as the order service
    takes them): the patient is created when unknown. Raises MergedAway when the identifier was
    merged into another patient: an order must name the surviving one."""
    patient, _ = get_or_create(
        session,
        values["patient_id"],
        values.get("issuer_of_patient_id"),
        values,
        source=PatientSource.ORDER,
        actor=actor,
    )
    if patient.status == PatientStatus.MERGED:
        raise MergedAway(surviving(session, patient))
    return copies(patient)


def file_study(session: Session, study: Study, patient: Patient) -> None:
    """Files the study under the patient: its reference and copies. The caller commits."""
    for name, value in copies(patient).items():
        setattr(study, name, value)
    session.add(study)


def attach_study(session: Session, study: Study, *, default_issuer: str | None, actor: str) -> None:
    """Files a study not linked to an order under the patient of its PatientID and
    IssuerOfPatientID (DEFAULT_ISSUER when it names none), created from the study's DICOM
    values when unknown. A merged-away identifier files it under the surviving patient,
    flagged. A study already filed keeps its patient (merges and moves rewrite it)."""
    if study.patient_record_id is not None or study.order_id is not None or not study.patient_id:
        return
    patient, _ = get_or_create(
        session,
        study.patient_id,
        study.issuer_of_patient_id or default_issuer,
        {name: getattr(study, name) for name in DEMOGRAPHICS},
        source=PatientSource.DICOM,
        actor=actor,
    )
    if patient.status == PatientStatus.MERGED:
        patient = surviving(session, patient)
        study.patient_identity_issue = MERGED_IDENTIFIER
        audit.record(
            session,
            actor=actor,
            action="study.merged_patient_identifier",
            entity_type="study",
            entity_id=study.id,
            patient_record_id=patient.id,
        )
    file_study(session, study, patient)


def merged_into(
    session: Session, patient_id: str, issuer: str | None, patient_record_id: int | None
) -> bool:
    """Whether a merged patient of this identifier (any issuer when `issuer` is None) now lives
    on as the patient `patient_record_id`: a study under the prior id matches its order."""
    if patient_record_id is None:
        return False
    conditions = [Patient.patient_id == patient_id, Patient.status == PatientStatus.MERGED]
    if issuer:
        conditions.append(Patient.issuer_of_patient_id == issuer)
    return any(
        surviving(session, prior).id == patient_record_id
        for prior in session.exec(select(Patient).where(*conditions))
    )


def sync_copies(session: Session, patient: Patient, cause: str) -> list[int]:
    """Rewrites the patient's copies, queues its images (`cause`); returns its order ids."""
    values = copies(patient)
    del values["patient_record_id"]
    session.flush()
    session.connection().execute(
        update(table_of(ImagingOrder))
        .where(table_of(ImagingOrder).c.patient_record_id == patient.id)
        .values({**values, "updated_at": utcnow()})
    )
    session.connection().execute(
        update(table_of(Study))
        .where(table_of(Study).c.patient_record_id == patient.id)
        .values({**values, "updated_at": utcnow()})
    )
    session.expire_all()
    assert patient.id is not None
    image_updates.queue_patient_studies(session, patient.id, cause)
    order_ids = _ids(session, ImagingOrder.id, ImagingOrder.patient_record_id == patient.id)
    _rewrite_waiting_results(session, order_ids, values)
    return order_ids


def _rewrite_waiting_results(
    session: Session, order_ids: list[int], values: dict[str, Any]
) -> None:
    """Results (ORU^R01) and status updates (ORM^O01) of these orders still waiting to be
    delivered (pending, or failed and waiting for an administrator's retry) carry the patient as
    now known: their text was fixed when they were queued. MSH-10 stays."""
    if not order_ids:
        return
    waiting = session.exec(
        select(Hl7Message).where(
            Hl7Message.direction == Hl7Direction.OUTBOUND,
            col(Hl7Message.status).in_((Hl7MessageStatus.PENDING, Hl7MessageStatus.FAILED)),
            col(Hl7Message.message_type).in_(OUTBOX_MESSAGE_TYPES),
            col(Hl7Message.order_id).in_(order_ids),
        )
    ).all()
    for message in waiting:
        message.raw = with_patient(message.raw, **values)
        session.add(message)


def update_demographics(
    session: Session, patient: Patient, changes: Mapping[str, Any], *, actor: str
) -> list[int]:
    """New demographics or other identifiers (only the given ones); returns the order ids whose
    copies changed."""
    changed = changed_fields(patient, changes)
    if not changed:
        return []
    for name in changed:
        setattr(patient, name, changes[name])
    patient.updated_at = utcnow()
    session.add(patient)
    audit.record(
        session,
        actor=actor,
        action="patient.updated",
        entity_type="patient",
        entity_id=patient.id,
        fields=changed,
    )
    if not set(changed) & set(DEMOGRAPHICS):
        return []
    return sync_copies(session, patient, image_updates.Cause.DEMOGRAPHICS)


def changed_fields(patient: Patient, changes: Mapping[str, Any]) -> list[str]:
    """The fields of `changes` that would change the patient's record."""
    return sorted(
        name for name in _UPDATABLE if name in changes and getattr(patient, name) != changes[name]
    )


def change_identifier(
    session: Session, patient: Patient, patient_id: str, issuer: str | None, *, actor: str
) -> list[int]:
    """The patient keeps its history under a new identifier (ADT A47); IdentifierTaken when
    another patient has it. Returns the order ids whose copies changed."""
    if (patient.patient_id, patient.issuer_of_patient_id) == (patient_id, issuer_key(issuer)):
        return []
    other = find(session, patient_id, issuer)
    if other is not None:
        raise IdentifierTaken("another patient already has the new identifier")
    patient.patient_id = patient_id
    patient.issuer_of_patient_id = issuer_key(issuer)
    patient.updated_at = utcnow()
    session.add(patient)
    audit.record(
        session,
        actor=actor,
        action="patient.identifier_changed",
        entity_type="patient",
        entity_id=patient.id,
    )
    return sync_copies(session, patient, image_updates.Cause.IDENTIFIER)


@dataclass
class MergeOutcome:
    """What a merge did: nothing when it had been applied already (or was sent swapped)."""

    applied: bool
    surviving: Patient
    order_ids: list[int] = field(default_factory=list)


def merge(
    session: Session, prior: Patient, target: Patient, *, actor: str, cause: str = "api"
) -> MergeOutcome:
    """Moves every order and study of `prior` (and so their worklist items, reports and
    critical findings) to the end of `target`'s chain of merges; `prior` stays, marked merged.

    A merge of a patient into itself is refused; one applied already, or resent with the two
    patients swapped (its survivor is the prior's survivor), changes nothing. `cause` says
    what asked for it in the audit trail (the HL7 message, by type and control id)."""
    if prior.id == target.id:
        raise MergeRefused("a patient cannot be merged into itself")
    survivor = surviving(session, target)
    prior_end = surviving(session, prior)
    if prior_end.id == survivor.id:
        return MergeOutcome(applied=False, surviving=survivor)  # applied before, or swapped
    if prior.status == PatientStatus.MERGED:
        raise MergeRefused("the prior patient was merged into another patient already")
    assert prior.id is not None and survivor.id is not None
    session.flush()
    order_ids = _ids(session, ImagingOrder.id, ImagingOrder.patient_record_id == prior.id)
    study_ids = _ids(session, Study.id, Study.patient_record_id == prior.id)
    report_ids = _ids(session, RadiologyReport.id, col(RadiologyReport.study_id).in_(study_ids))
    finding_ids = _ids(session, CriticalFinding.id, col(CriticalFinding.study_id).in_(study_ids))
    for table in (ImagingOrder, Study):
        session.connection().execute(
            update(table_of(table))
            .where(table_of(table).c.patient_record_id == prior.id)
            .values(patient_record_id=survivor.id)
        )
    # Patients merged into the prior before now end at the survivor directly.
    session.connection().execute(
        update(table_of(Patient))
        .where(table_of(Patient).c.merged_into_id == prior.id)
        .values(merged_into_id=survivor.id, updated_at=utcnow())
    )
    session.expire_all()
    prior = session.get(Patient, prior.id)  # type: ignore[assignment]
    survivor = session.get(Patient, survivor.id)  # type: ignore[assignment]
    prior.status = PatientStatus.MERGED
    prior.merged_into_id = survivor.id
    prior.updated_at = utcnow()
    session.add(prior)
    audit.record(
        session,
        actor=actor,
        action="patient.merged",
        entity_type="patient",
        entity_id=prior.id,
        surviving_patient_record_id=survivor.id,
        cause=cause,
        order_ids=order_ids,
        study_ids=study_ids,
        report_ids=report_ids,
        finding_ids=finding_ids,
    )
    changed = sync_copies(session, survivor, image_updates.Cause.MERGE)
    return MergeOutcome(applied=True, surviving=survivor, order_ids=changed)


def record_counts(session: Session, patient: Patient) -> dict[str, int]:
    """How many orders, studies and reports the patient has."""
    orders = session.exec(
        select(func.count())
        .select_from(ImagingOrder)
        .where(ImagingOrder.patient_record_id == patient.id)
    ).one()
    studies = select(Study.id).where(Study.patient_record_id == patient.id)
    study_count = session.exec(select(func.count()).select_from(studies.subquery())).one()
    reports = session.exec(
        select(func.count())
        .select_from(RadiologyReport)
        .where(col(RadiologyReport.study_id).in_(studies))
    ).one()
    return {"orders": orders, "studies": study_count, "reports": reports}


def _ids(session: Session, column: Any, condition: Any) -> list[int]:
    """The ids of the rows matching `condition`, in order."""
    query = sa_select(column).where(condition).order_by(column)
    return [int(value) for value in session.connection().execute(query).scalars()]

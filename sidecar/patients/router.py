"""Patients (the registry): listing and reading them, with the roles and the care scope of
studies; an administrator's corrections and merges, the same operations ADT performs, audited."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import Session, col, func, select

from sidecar.access.care_scope import CareScope, CareScopeDep
from sidecar.accounts.dependencies import Admin, Clinician
from sidecar.core.dependencies import SessionDep
from sidecar.core.errors import ConflictingState, UnknownRecord
from sidecar.core.models import Page
from sidecar.core.pagination import PaginationDep, RecordId, paginate
from sidecar.orders.events import OrderEvents, OrderEventsDep
from sidecar.patients import service as patients
from sidecar.patients.models import (
    Patient,
    PatientDetail,
    PatientMerge,
    PatientPublic,
    PatientStatus,
    PatientUpdate,
)

router = APIRouter(prefix="/api/patients", tags=["patients"])


@router.get("", response_model=Page[PatientPublic])
def list_patients(
    session: SessionDep,
    _: Clinician,
    scope: CareScopeDep,
    pagination: PaginationDep,
    patient_id: Annotated[str | None, Query(alias="patientId", max_length=64)] = None,
    issuer: Annotated[str | None, Query(max_length=64)] = None,
    name: Annotated[
        str | None,
        Query(max_length=64, description="the start of the name (DICOM PN), any case"),
    ] = None,
    birth_date: Annotated[date | None, Query(alias="birthDate")] = None,
    patient_status: Annotated[PatientStatus | None, Query(alias="status")] = None,
) -> dict[str, Any]:
    conditions: list[Any] = scope.patients()
    if patient_id:
        conditions.append(Patient.patient_id == patient_id)
    if issuer is not None:
        conditions.append(Patient.issuer_of_patient_id == issuer)
    if name:
        # "_" and "%" are LIKE's wildcards: matched literally.
        prefix = name.lower().replace("/", "//").replace("_", "/_").replace("%", "/%")
        conditions.append(func.lower(col(Patient.patient_name)).like(f"{prefix}%", escape="/"))
    if birth_date:
        conditions.append(Patient.patient_birth_date == birth_date)
    if patient_status:
        conditions.append(Patient.status == patient_status)
    by_name = [col(Patient.patient_name).nulls_last(), col(Patient.id)]
    return paginate(session, Patient, conditions, by_name, pagination)


@router.get("/{record_id}", response_model=PatientDetail)
def get_patient(
    record_id: RecordId, session: SessionDep, _: Clinician, scope: CareScopeDep
) -> PatientDetail:
    return detail(session, readable_patient(session, record_id, scope))


@router.patch("/{record_id}", response_model=PatientDetail)
def update_patient(
    record_id: RecordId,
    body: PatientUpdate,
    session: SessionDep,
    user: Admin,
    events: OrderEventsDep,
) -> PatientDetail:
    """Corrects demographics, or the identifier itself (as ADT A08 and A47 do); every order
    and study of the patient follows, and the worklist with them."""
    patient = patient_or_404(session, record_id)
    if patient.status == PatientStatus.MERGED:
        raise ConflictingState(
            f"patient {record_id} was merged into patient {patient.merged_into_id}: "
            "correct that one"
        )
    changes = body.model_dump(exclude_unset=True)
    changed: list[int] = []
    if "patient_id" in changes or "issuer_of_patient_id" in changes:
        changed += patients.change_identifier(
            session,
            patient,
            changes.get("patient_id", patient.patient_id),
            changes.get("issuer_of_patient_id", patient.issuer_of_patient_id),
            actor=user.username,
        )
    changed += patients.update_demographics(session, patient, changes, actor=user.username)
    session.commit()
    _announce(events, changed)
    return detail(session, patient_or_404(session, record_id))


@router.post("/{record_id}/merge", response_model=PatientDetail)
def merge_patient(
    record_id: RecordId,
    body: PatientMerge,
    session: SessionDep,
    user: Admin,
    events: OrderEventsDep,
) -> PatientDetail:
    """Merges this patient into the surviving one (as ADT A40): its orders, worklist items,
    studies, reports and critical findings move there; this record stays, marked merged. A
    merge applied already changes nothing. Answers the patient merged."""
    prior = patient_or_404(session, record_id)
    target = patient_or_404(session, body.surviving_patient_id)
    outcome = patients.merge(session, prior, target, actor=user.username)
    session.commit()
    _announce(events, outcome.order_ids)
    return detail(session, patient_or_404(session, record_id))


def patient_or_404(session: Session, record_id: int) -> Patient:
    patient = session.get(Patient, record_id)
    if patient is None:
        raise UnknownRecord(f"patient {record_id} not found")
    return patient


def readable_patient(session: Session, record_id: int, scope: CareScope) -> Patient:
    """The patient, when the caller may read it; 404 otherwise, as for one that does not exist."""
    query = select(Patient).where(Patient.id == record_id, *scope.patients())
    patient = session.exec(query).first()
    if patient is None:
        raise UnknownRecord(f"patient {record_id} not found")
    return patient


def detail(session: Session, patient: Patient) -> PatientDetail:
    query = f"patientRecordId={patient.id}"
    return PatientDetail.model_validate(
        {
            **PatientPublic.model_validate(patient).model_dump(),
            "counts": patients.record_counts(session, patient),
            "links": {
                "orders": f"/api/imaging-orders?{query}",
                "studies": f"/api/studies?{query}",
            },
        }
    )


def _announce(events: OrderEvents, order_ids: list[int]) -> None:
    for order_id in dict.fromkeys(order_ids):
        events.announce_id(order_id)  # the worklist follows the committed change

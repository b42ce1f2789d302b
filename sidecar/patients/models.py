"""The patient registry: a patient is its identifier with its assigning authority (PID-3.1 and
PID-3.4; DICOM PatientID and IssuerOfPatientID), unique together, with the demographics orders,
worklist items, studies and results carry as copies (sidecar.patients.service keeps them in step).

A merged patient stays, marked MERGED with the patient it was merged into: a message or a study
naming its identifier later is recognised, never filed under a new record of the old id.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydantic import Field as PydanticField
from pydantic import ValidationInfo, field_validator
from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from sidecar.core.dicom_text import LO, PN, PN_MAX_LENGTH
from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime, utcnow

#: The identifier's assigning authority when there is none. Stored as empty text rather than
#: NULL so that the unique constraint holds: two NULLs never collide in SQL.
NO_ISSUER = ""


class PatientStatus(StrEnum):
    ACTIVE = "ACTIVE"
    MERGED = "MERGED"


class PatientSource(StrEnum):
    """Who first named the patient."""

    ADT = "adt"  # an HL7 ADT message
    ORDER = "order"  # an order (HL7 or the API)
    DICOM = "dicom"  # images or a study announced through the API, with no order
    MIGRATION = "migration"  # an identifier found on orders or studies of an older database


class Patient(SQLModel, table=True):
    __tablename__ = "patient"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patient_identifier_issuer"),
    )

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(max_length=64)
    # NO_ISSUER ("") when the identifier names no assigning authority.
    issuer_of_patient_id: str = Field(default=NO_ISSUER, max_length=64)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_birth_date: date | None = None
    patient_sex: str | None = Field(default=None, max_length=16)
    # Further identifiers the HIS sent (PID-3 repetitions besides the key): [{id, issuer, type}].
    other_identifiers: list[dict[str, str]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    status: PatientStatus = Field(
        default=PatientStatus.ACTIVE,
        sa_column=Column(EnumText(PatientStatus, 16), nullable=False, index=True),
    )
    merged_into_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    source: PatientSource = Field(sa_column=Column(EnumText(PatientSource, 16), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class OtherIdentifier(ApiModel):
    id: str
    issuer: str | None = None
    type: str | None = None


class PatientCounts(ApiModel):
    orders: int
    studies: int
    reports: int


class PatientPublic(ApiModel):
    id: int
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: date | None
    patient_sex: str | None
    other_identifiers: list[OtherIdentifier]
    status: PatientStatus
    merged_into: int | None = PydanticField(validation_alias="merged_into_id")
    source: PatientSource
    created_at: datetime
    updated_at: datetime

    @field_validator("issuer_of_patient_id", mode="before")
    @classmethod
    def _no_issuer(cls, value: object) -> object:
        return None if value == NO_ISSUER else value


class PatientDetail(PatientPublic):
    counts: PatientCounts
    # Where the patient's records are listed (the lists take ?patientId=).
    links: dict[str, str]


_PATIENT_TEXT_RULES = {"patient_name": PN, "patient_id": LO, "issuer_of_patient_id": LO}


class PatientUpdate(ApiInput):
    """An administrator's correction: demographics, and the identifier itself (as ADT A47)."""

    not_nullable = frozenset({"patient_id"})

    patient_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    issuer_of_patient_id: str | None = PydanticField(default=None, max_length=64)
    patient_name: str | None = PydanticField(default=None, max_length=PN_MAX_LENGTH)
    patient_birth_date: date | None = None
    patient_sex: str | None = PydanticField(default=None, pattern=r"^[MFO]$")

    @field_validator(*_PATIENT_TEXT_RULES, mode="after")
    @classmethod
    def _fits(cls, value: Any, info: ValidationInfo) -> Any:
        rule = _PATIENT_TEXT_RULES[info.field_name or ""]
        if isinstance(value, str):
            if info.field_name == "patient_id" and not value.strip(" "):
                raise ValueError("is blank (only spaces)")
            if (problem := rule.problem(value)) is not None:
                raise ValueError(problem)
        return value


class PatientMerge(ApiInput):
    """The patient that survives the merge (its record id)."""

    surviving_patient_id: int = PydanticField(ge=1, le=2**31 - 1)


class ImageUpdateStatus(StrEnum):
    PENDING = "PENDING"  # to do, or to try again at next_attempt_at
    DONE = "DONE"  # every stored instance carries the study's patient
    FAILED = "FAILED"  # Orthanc did not keep the values written: needs a person


class ImageUpdate(SQLModel, table=True):
    """The durable queue of studies whose stored images must be brought to their patient's
    identifier and demographics (IHE PIR): one row per study, queued again whenever its patient
    changes. What to write is read from the study when the work is done, so the latest change
    wins and nothing is written twice (sidecar.patients.image_updates)."""

    __tablename__ = "image_update"

    study_id: int = Field(primary_key=True, foreign_key="study.id")
    status: ImageUpdateStatus = Field(
        sa_column=Column(EnumText(ImageUpdateStatus, 16), nullable=False, index=True)
    )
    # What asked for it: "merge", "demographics", "identifier", "move", "images" (images that
    # arrived under other values than the patient's).
    cause: str = Field(max_length=16)
    queued_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    last_error: str | None = Field(default=None, max_length=500)
    instances_updated: int = 0
    completed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

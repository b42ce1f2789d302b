"""Imaging orders (seed 001) and the HL7 message log."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import AwareDatetime, ValidationInfo, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from sidecar.dicom_text import PN_MAX_LENGTH
from sidecar.models.common import ApiInput, ApiModel, EnumText, UTCDateTime, utcnow
from sidecar.models.studies import PatientSex
from sidecar.order_fields import ORDER_TEXT_RULES


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    ON_HOLD = "ON_HOLD"


class Priority(StrEnum):
    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class Modality(StrEnum):
    """The modalities seed 001 lists; PET_CT is sent to modalities as DICOM PT."""

    CR = "CR"
    CT = "CT"
    MR = "MR"
    US = "US"
    XA = "XA"
    DX = "DX"
    MG = "MG"
    NM = "NM"
    PT = "PT"
    PET_CT = "PET_CT"
    RF = "RF"
    OT = "OT"


class ImagingOrder(SQLModel, table=True):
    __tablename__ = "imaging_order"

    id: int | None = Field(default=None, primary_key=True)
    accession_number: str = Field(max_length=16, unique=True, index=True)
    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    requested_procedure_id: str | None = Field(default=None, max_length=16)
    placer_order_number: str | None = Field(default=None, max_length=64, index=True)
    filler_order_number: str | None = Field(default=None, max_length=64, index=True)
    patient_id: str = Field(max_length=64, index=True)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_birth_date: date | None = None
    patient_sex: str | None = Field(default=None, max_length=16)
    referring_physician: str | None = Field(default=None, max_length=324)
    ordering_provider: str | None = Field(default=None, max_length=324)
    provider_id: str | None = Field(default=None, max_length=64)
    facility_id: str | None = Field(default=None, max_length=64)
    procedure_code: str | None = Field(default=None, max_length=64)
    procedure_description: str | None = Field(default=None, max_length=64)
    modality: Modality = Field(sa_column=Column(EnumText(Modality, 16), nullable=False))
    body_part: str | None = Field(default=None, max_length=64)
    clinical_indication: str | None = Field(default=None, sa_column=Column(Text))
    priority: Priority = Field(
        default=Priority.ROUTINE, sa_column=Column(EnumText(Priority, 16), nullable=False)
    )
    status: OrderStatus = Field(
        default=OrderStatus.PENDING,
        sa_column=Column(EnumText(OrderStatus, 16), nullable=False, index=True),
    )
    scheduled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))
    scheduled_station_aet: str | None = Field(default=None, max_length=16)
    source: str = Field(default="api", max_length=8)  # "api" or "hl7"
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class OrderFields(ApiInput):
    """What a client may set on an order (create and update share the limits). Text values are
    checked by the same rules as orders from the HIS (sidecar.order_fields): what goes on the
    worklist must fit its DICOM value representation."""

    patient_id: str | None = PydanticField(default=None, max_length=64, min_length=1)
    issuer_of_patient_id: str | None = PydanticField(default=None, max_length=64)
    patient_name: str | None = PydanticField(default=None, max_length=PN_MAX_LENGTH)
    patient_birth_date: date | None = None
    patient_sex: PatientSex | None = None
    referring_physician: str | None = PydanticField(default=None, max_length=PN_MAX_LENGTH)
    ordering_provider: str | None = PydanticField(default=None, max_length=324)
    provider_id: str | None = PydanticField(default=None, max_length=64)
    facility_id: str | None = PydanticField(default=None, max_length=64)
    procedure_code: str | None = PydanticField(default=None, max_length=64)
    procedure_description: str | None = PydanticField(default=None, max_length=64)
    modality: Modality | None = None
    body_part: str | None = PydanticField(default=None, max_length=64)
    clinical_indication: str | None = PydanticField(default=None, max_length=4000)
    priority: Priority | None = None
    scheduled_at: AwareDatetime | None = None
    scheduled_station_aet: str | None = PydanticField(
        default=None, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*$"
    )
    placer_order_number: str | None = PydanticField(default=None, max_length=64)
    filler_order_number: str | None = PydanticField(default=None, max_length=64)
    requested_procedure_id: str | None = PydanticField(default=None, max_length=16)

    @field_validator(*ORDER_TEXT_RULES, mode="after", check_fields=False)
    @classmethod
    def _fits(cls, value: Any, info: ValidationInfo) -> Any:
        rule = ORDER_TEXT_RULES[info.field_name or ""]
        if isinstance(value, str) and (problem := rule.problem(value)) is not None:
            raise ValueError(problem)
        return value


class OrderCreate(OrderFields):
    patient_id: str = PydanticField(max_length=64, min_length=1)
    modality: Modality
    accession_number: str | None = PydanticField(default=None, max_length=16, min_length=1)
    study_instance_uid: str | None = PydanticField(
        default=None, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$"
    )


class OrderUpdate(OrderFields):
    # Their columns hold no null: left out keeps the value, null is refused.
    not_nullable: ClassVar[frozenset[str]] = frozenset({"patient_id", "modality", "priority"})

    status: OrderStatus | None = None


class OrderPublic(ApiModel):
    id: int
    accession_number: str
    study_instance_uid: str
    requested_procedure_id: str | None
    placer_order_number: str | None
    filler_order_number: str | None
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: date | None
    patient_sex: str | None
    referring_physician: str | None
    ordering_provider: str | None
    provider_id: str | None
    facility_id: str | None
    procedure_code: str | None
    procedure_description: str | None
    modality: Modality
    body_part: str | None
    clinical_indication: str | None
    priority: Priority
    status: OrderStatus
    scheduled_at: datetime | None
    scheduled_station_aet: str | None
    source: str
    created_at: datetime
    updated_at: datetime


class Hl7Direction(StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


class Hl7Message(SQLModel, table=True):
    """Every HL7 message in or out, raw, with what became of it."""

    __tablename__ = "hl7_message"
    __table_args__ = (UniqueConstraint("direction", "sender", "control_id"),)

    id: int | None = Field(default=None, primary_key=True)
    direction: Hl7Direction = Field(sa_column=Column(EnumText(Hl7Direction, 4), nullable=False))
    control_id: str = Field(max_length=199)
    message_type: str = Field(max_length=32, index=True)
    sender: str = Field(max_length=200)  # MSH-3^MSH-4 (sending application and facility)
    receiver: str | None = Field(default=None, max_length=200)
    # Inbound: accepted, rejected, error. Outbound: pending (queued, or waiting to be retried),
    # delivered (the receiver answered AA), failed (AE/AR: an administrator may retry it).
    status: str = Field(max_length=16, index=True)
    ack_code: str | None = Field(default=None, max_length=2)
    error_text: str | None = Field(default=None, max_length=1000)
    raw: str = Field(sa_column=Column(Text, nullable=False))
    ack_raw: str | None = Field(default=None, sa_column=Column(Text))
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, index=True)
    )
    processed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Outbound results (ORU^R01): the report and result status (OBR-25 P/F/C) they carry, and
    # the delivery attempts so far; the outbox sends when next_attempt_at has come.
    report_id: int | None = Field(default=None, foreign_key="radiology_report.id", index=True)
    result_status: str | None = Field(default=None, max_length=1)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class Hl7MessageSummary(ApiModel):
    id: int
    direction: Hl7Direction
    control_id: str
    message_type: str
    sender: str
    receiver: str | None
    status: str
    ack_code: str | None
    error_text: str | None
    order_id: int | None
    received_at: datetime
    processed_at: datetime | None
    report_id: int | None
    result_status: str | None
    attempts: int
    next_attempt_at: datetime | None


class Hl7MessageDetail(Hl7MessageSummary):
    raw: str
    ack_raw: str | None

"""Imaging orders (seed 001): the table, the values clients send and read, the status workflow."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field as PydanticField
from pydantic import ValidationInfo, field_validator
from sqlalchemy import Text
from sqlmodel import Column, Field, SQLModel

from sidecar.core.dicom_text import PN_MAX_LENGTH
from sidecar.core.models import (
    ApiInput,
    ApiModel,
    EnumText,
    SupportedTime,
    UTCDateTime,
    utcnow,
)
from sidecar.core.workflow import Workflow
from sidecar.mpps.models import PerformedStepSummary
from sidecar.orders.fields import ORDER_TEXT_RULES, order_value_problem
from sidecar.studies.models import PatientSex


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
    # The patient in the registry (sidecar.patients); the patient columns above are its copies.
    patient_record_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    referring_physician: str | None = Field(default=None, max_length=324)
    ordering_provider: str | None = Field(default=None, max_length=324)
    provider_id: str | None = Field(default=None, max_length=64, index=True)
    # The referring physician's provider id (PV1-8.1; `referringProviderId` over REST): with
    # the ordering provider's, it says which physicians care for the order's patient.
    referring_provider_id: str | None = Field(default=None, max_length=64, index=True)
    facility_id: str | None = Field(default=None, max_length=64, index=True)
    procedure_code: str | None = Field(default=None, max_length=64)
    procedure_coding_system: str | None = Field(default=None, max_length=16)
    procedure_description: str | None = Field(default=None, max_length=64)
    modality: Modality = Field(sa_column=Column(EnumText(Modality, 16), nullable=False))
    body_part: str | None = Field(default=None, max_length=64)
    protocol_code: str | None = Field(default=None, max_length=16)
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
    scheduled_station_name: str | None = Field(default=None, max_length=16)
    source: str = Field(default="api", max_length=8)  # "api" or "hl7"
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class OrderFields(ApiInput):
    """What a client may set on an order (create and update share the limits). Text values are
    checked by the same rules as orders from the HIS (sidecar.orders.fields): what goes on the
    worklist must fit its DICOM value representation."""

    patient_id: str | None = PydanticField(default=None, max_length=64, min_length=1)
    issuer_of_patient_id: str | None = PydanticField(default=None, max_length=64)
    patient_name: str | None = PydanticField(default=None, max_length=PN_MAX_LENGTH)
    patient_birth_date: date | None = None
    patient_sex: PatientSex | None = None
    referring_physician: str | None = PydanticField(default=None, max_length=PN_MAX_LENGTH)
    ordering_provider: str | None = PydanticField(default=None, max_length=324)
    provider_id: str | None = PydanticField(default=None, max_length=64)
    referring_provider_id: str | None = PydanticField(default=None, max_length=64)
    facility_id: str | None = PydanticField(default=None, max_length=64)
    procedure_code: str | None = PydanticField(default=None, max_length=64)
    procedure_coding_system: str | None = PydanticField(default=None, max_length=16)
    procedure_description: str | None = PydanticField(default=None, max_length=64)
    modality: Modality | None = None
    body_part: str | None = PydanticField(default=None, max_length=64)
    protocol_code: str | None = PydanticField(default=None, max_length=16)
    clinical_indication: str | None = PydanticField(default=None, max_length=4000)
    priority: Priority | None = None
    scheduled_at: SupportedTime | None = None
    scheduled_station_aet: str | None = PydanticField(
        default=None, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*$"
    )
    scheduled_station_name: str | None = PydanticField(default=None, max_length=16)
    placer_order_number: str | None = PydanticField(default=None, max_length=64)
    filler_order_number: str | None = PydanticField(default=None, max_length=64)
    requested_procedure_id: str | None = PydanticField(default=None, max_length=16)

    @field_validator(*ORDER_TEXT_RULES, mode="after", check_fields=False)
    @classmethod
    def _fits(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if isinstance(value, str) and (problem := order_value_problem(name, value)) is not None:
            raise ValueError(problem)
        return value


class OrderCreate(OrderFields):
    """`modality` may be left out when `procedureCode` is in the procedure catalog: the order
    takes the catalog's modality, station and protocol where it names none itself."""

    patient_id: str = PydanticField(max_length=64, min_length=1)
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
    patient_record_id: int | None
    referring_physician: str | None
    ordering_provider: str | None
    provider_id: str | None
    referring_provider_id: str | None
    facility_id: str | None
    procedure_code: str | None
    procedure_coding_system: str | None
    procedure_description: str | None
    modality: Modality
    body_part: str | None
    protocol_code: str | None
    clinical_indication: str | None
    priority: Priority
    status: OrderStatus
    scheduled_at: datetime | None
    scheduled_station_aet: str | None
    scheduled_station_name: str | None
    source: str
    created_at: datetime
    updated_at: datetime


#: The one way back from IN_PROGRESS to the worklist: the modality discontinued the exam before
#: acquiring anything (sidecar.mpps.service). Not a move the API offers: an order with images
#: is read, not scheduled again.
EXAM_DISCONTINUED: Workflow[OrderStatus] = Workflow(
    "order", "order", {OrderStatus.IN_PROGRESS: {OrderStatus.SCHEDULED, OrderStatus.PENDING}}
)


class OrderDetail(OrderPublic):
    # What the modality reported performing for this order (MPPS), oldest first.
    performed_procedure_steps: list[PerformedStepSummary] = PydanticField(default_factory=list)


# The status workflow (sidecar.core.workflow moves records through it).
_O = OrderStatus
ORDER_WORKFLOW: Workflow[OrderStatus] = Workflow(
    "order",
    "order",
    {
        _O.PENDING: {_O.SCHEDULED, _O.IN_PROGRESS, _O.CANCELLED, _O.ON_HOLD},
        _O.SCHEDULED: {_O.PENDING, _O.IN_PROGRESS, _O.CANCELLED, _O.ON_HOLD},
        _O.IN_PROGRESS: {_O.COMPLETED, _O.CANCELLED, _O.ON_HOLD},
        _O.ON_HOLD: {_O.PENDING, _O.SCHEDULED, _O.IN_PROGRESS, _O.CANCELLED},
        _O.COMPLETED: set(),
        _O.CANCELLED: set(),
    },
)

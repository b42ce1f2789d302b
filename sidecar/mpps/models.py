"""Modality Performed Procedure Steps (DICOM PS3.4 Annex F; IHE RAD-6 and RAD-7): what a modality
reports of the exam it performs, from its start (N-CREATE, IN PROGRESS) to its end (N-SET,
COMPLETED or DISCONTINUED).

A step names the scheduled step it performs (Scheduled Step Attributes Sequence: accession
number, requested procedure id, scheduled procedure step id, Study Instance UID). A step that
names no order known here is "unscheduled": it is kept, and listed for reconciliation.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import ApiModel, EnumText, UTCDateTime, utcnow
from sidecar.core.workflow import Workflow


class PerformedStepStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), DICOM's values with `_` for the space."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @classmethod
    def from_dicom(cls, value: str) -> PerformedStepStatus:
        return cls(value.strip().replace(" ", "_"))

    @property
    def dicom(self) -> str:
        return self.value.replace("_", " ")


_S = PerformedStepStatus
PERFORMED_STEP_WORKFLOW: Workflow[PerformedStepStatus] = Workflow(
    "performed procedure step",
    "performed_procedure_step",
    {
        _S.IN_PROGRESS: {_S.COMPLETED, _S.DISCONTINUED},
        _S.COMPLETED: set(),
        _S.DISCONTINUED: set(),
    },
)


class PerformedProcedureStep(SQLModel, table=True):
    __tablename__ = "performed_procedure_step"

    id: int | None = Field(default=None, primary_key=True)
    # The MPPS SOP Instance UID the modality gave the step: its key in every N-SET.
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    status: PerformedStepStatus = Field(
        sa_column=Column(EnumText(PerformedStepStatus, 16), nullable=False, index=True)
    )
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    # Why the step is linked to no order (unscheduled, or a patient differing from the order's).
    order_match_issue: str | None = Field(default=None, max_length=200)
    # What the modality said it performs (the first item of the Scheduled Step Attributes
    # Sequence) and for whom.
    study_instance_uid: str = Field(max_length=64, index=True)
    accession_number: str | None = Field(default=None, max_length=16, index=True)
    requested_procedure_id: str | None = Field(default=None, max_length=16)
    scheduled_procedure_step_id: str | None = Field(default=None, max_length=16)
    patient_id: str | None = Field(default=None, max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    # The step itself.
    performed_procedure_step_id: str | None = Field(default=None, max_length=16)
    performed_station_ae_title: str | None = Field(default=None, max_length=16)
    calling_ae_title: str = Field(max_length=16)
    modality: str | None = Field(default=None, max_length=16)
    procedure_description: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # PPS Discontinuation Reason Code Sequence (CID 9300): code value and meaning.
    discontinuation_reason_code: str | None = Field(default=None, max_length=16)
    discontinuation_reason: str | None = Field(default=None, max_length=64)
    # Performed Series Sequence, counted: series, and instances referenced in them (images and
    # non-image objects such as presentation states or dose reports).
    series_count: int | None = None
    instance_count: int | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class PerformedStepPublic(ApiModel):
    id: int
    sop_instance_uid: str
    status: PerformedStepStatus
    order_id: int | None
    study_id: int | None = None
    unscheduled: bool = False
    order_match_issue: str | None
    study_instance_uid: str
    accession_number: str | None
    requested_procedure_id: str | None
    scheduled_procedure_step_id: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    performed_procedure_step_id: str | None
    performed_station_ae_title: str | None
    calling_ae_title: str
    modality: str | None
    procedure_description: str | None
    started_at: datetime | None
    ended_at: datetime | None
    discontinuation_reason_code: str | None
    discontinuation_reason: str | None
    series_count: int | None
    instance_count: int | None
    created_at: datetime
    updated_at: datetime


class PerformedStepSummary(ApiModel):
    """A step as its study and its order show it."""

    id: int
    sop_instance_uid: str
    status: PerformedStepStatus
    performed_station_ae_title: str | None
    modality: str | None
    started_at: datetime | None
    ended_at: datetime | None
    series_count: int | None
    instance_count: int | None
    discontinuation_reason_code: str | None
    discontinuation_reason: str | None

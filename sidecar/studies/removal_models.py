"""The record of images withdrawn from a study (IHE IOCM rejection): what was removed, why (a
DICOM rejection reason), by whom and when, and whether Orthanc has removed it yet.

One `ImageRemoval` per request (one image, or one whole series), with one `ImageRemovalInstance`
per SOP Instance the sidecar knew of. The record outlives the images and their rows: it names
its study by id and Study Instance UID without a foreign key, so that a study Orthanc later
deletes (and the sidecar forgets) keeps its removals' history.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import ApiModel, EnumText, UTCDateTime, utcnow


class RejectionReason(StrEnum):
    """Why images are withdrawn: the IOCM rejection reasons (DICOM CID 7011, scheme DCM)."""

    QUALITY = "QUALITY"
    PATIENT_SAFETY = "PATIENT_SAFETY"
    WRONG_WORKLIST_ENTRY = "WRONG_WORKLIST_ENTRY"
    RETENTION = "RETENTION"

    @property
    def code(self) -> str:
        return _CODES[self][0]

    @property
    def meaning(self) -> str:
        return _CODES[self][1]


_CODES = {
    RejectionReason.QUALITY: ("113001", "Rejected for Quality Reasons"),
    RejectionReason.PATIENT_SAFETY: ("113037", "Rejected for Patient Safety Reasons"),
    RejectionReason.WRONG_WORKLIST_ENTRY: ("113038", "Incorrect Modality Worklist Entry"),
    RejectionReason.RETENTION: ("113039", "Data Retention Policy Expired"),
}


class RemovalScope(StrEnum):
    IMAGE = "IMAGE"  # one instance
    SERIES = "SERIES"  # every instance of one series


class RemovalState(StrEnum):
    """QUEUED: recorded, Orthanc not yet asked (or the request is asking it now); RETRYING:
    Orthanc failed at least once (lastError says how), tried again with a growing delay until
    it succeeds, never given up; DONE: Orthanc holds none of the instances any more and the
    sidecar's rows and counts follow."""

    QUEUED = "QUEUED"
    RETRYING = "RETRYING"
    DONE = "DONE"


WAITING_STATES = (RemovalState.QUEUED, RemovalState.RETRYING)


class ImageRemoval(SQLModel, table=True):
    __tablename__ = "image_removal"

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(index=True)
    study_instance_uid: str = Field(max_length=64)
    series_instance_uid: str = Field(max_length=64)
    scope: RemovalScope = Field(sa_column=Column(EnumText(RemovalScope, 16), nullable=False))
    reason: RejectionReason = Field(sa_column=Column(EnumText(RejectionReason, 32), nullable=False))
    reason_code: str = Field(max_length=16)
    reason_meaning: str = Field(max_length=64)
    # The instances removed: the series' count for a series (its images may not all have rows
    # yet), one for an image.
    instance_count: int = 0
    requested_by: str = Field(max_length=64)
    requested_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    state: RemovalState = Field(
        sa_column=Column(EnumText(RemovalState, 16), nullable=False, index=True)
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    last_error: str | None = Field(default=None, max_length=500)
    completed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # The signed report flagged for amendment by this removal, if any.
    report_id: int | None = None


class ImageRemovalInstance(SQLModel, table=True):
    """One SOP Instance a removal withdraws (the image's record id is kept for the record: the
    image row itself goes)."""

    __tablename__ = "image_removal_instance"

    id: int | None = Field(default=None, primary_key=True)
    removal_id: int = Field(foreign_key="image_removal.id", index=True)
    sop_instance_uid: str = Field(max_length=64, index=True)
    image_id: int | None = None
    orthanc_id: str | None = Field(default=None, max_length=64)


class RemovedInstance(ApiModel):
    sop_instance_uid: str
    image_id: int | None
    orthanc_id: str | None


class RemovalPublic(ApiModel):
    id: int
    study_id: int
    study_instance_uid: str
    series_instance_uid: str
    scope: RemovalScope
    reason: RejectionReason
    reason_code: str
    reason_meaning: str
    instance_count: int
    requested_by: str
    requested_at: datetime
    state: RemovalState
    attempts: int
    # When Orthanc is asked again, while not done.
    next_attempt_at: datetime
    last_error: str | None
    completed_at: datetime | None
    report_id: int | None
    instances: list[RemovedInstance]

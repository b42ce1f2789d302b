"""Studies, series and images: the DICOM hierarchy as the sidecar records it (seed 000/001)."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field as PydanticField
from pydantic import (
    PlainSerializer,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime, split_multi, utcnow
from sidecar.core.workflow import Workflow
from sidecar.mpps.models import PerformedStepSummary

# A DICOM Modality (0008,0060) code: CS, 16 characters at most.
ModalityCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,16}$")]

# An image's label as readers set it (PATCH /api/images/{id}/metadata).
LABEL_MAX_LENGTH = 64


# A DICOM Study Time (TM): the modality's local time of day, with no time zone. JSON Schema's
# "time" format requires an offset, which a TM does not have: declared as the text it is.
LocalTime = Annotated[
    time,
    PlainSerializer(lambda value: value.isoformat(), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?$",
            "description": "local time of day, without a time zone (DICOM TM)",
        }
    ),
]


class StudyStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    CANCELLED = "CANCELLED"


class PatientSex(StrEnum):
    MALE = "M"
    FEMALE = "F"
    OTHER = "O"


class Study(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    accession_number: str | None = Field(default=None, max_length=16, index=True)
    patient_id: str | None = Field(default=None, max_length=64, index=True)
    # The patient id's assigning authority (DICOM IssuerOfPatientID, HL7 PID-3.4): patient 123
    # of one hospital is not patient 123 of another.
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_birth_date: date | None = None
    patient_sex: str | None = Field(default=None, max_length=16)
    # The patient in the registry (sidecar.patients): its order's, else that of the PatientID
    # and IssuerOfPatientID; the patient columns above are its copies.
    patient_record_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    # Set when the images name a patient other than the one the study is filed under (a
    # merged-away identifier): Orthanc's copy still carries it.
    patient_identity_issue: str | None = Field(default=None, max_length=200)
    study_date: date | None = Field(default=None, index=True)
    study_time: time | None = None
    study_description: str | None = Field(default=None, max_length=64)
    modalities: str = Field(default="", max_length=1024)  # comma-separated modality codes
    referring_physician: str | None = Field(default=None, max_length=324)
    body_part: str | None = Field(default=None, max_length=64)
    series_count: int = 0
    instance_count: int = 0
    orthanc_id: str | None = Field(default=None, max_length=64, index=True)
    orthanc_last_update: str | None = Field(default=None, max_length=32)
    status: StudyStatus = Field(
        default=StudyStatus.SCHEDULED,
        sa_column=Column(EnumText(StudyStatus, 16), nullable=False, index=True),
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    images_received_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Clinical context from the imaging order the study was matched to (issue: orders).
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    priority: str | None = Field(default=None, max_length=16)
    clinical_indication: str | None = Field(default=None, max_length=4000)
    order_match_issue: str | None = Field(default=None, max_length=200)
    # Orthanc holds this Study Instance UID under these other patient ids too (backslash-
    # separated, as DICOM separates values; a patient id cannot hold one): images of several
    # patients under one UID, kept from the viewer until someone resolves it.
    conflicting_patient_ids: str | None = Field(default=None, max_length=1000)
    # Where the study was done: its order's facility, else that of the modality that sent it
    # (MODALITY_FACILITIES). Users limited to facilities see their facilities' studies only.
    facility_id: str | None = Field(default=None, max_length=64, index=True)
    # The instances the modality said it made (its completed MPPS, sidecar.mpps): once the
    # images are here, fewer than that is flagged (imagesMissing).
    instances_announced: int | None = None
    # Orthanc no longer holds any of the study's images (deleted through its REST API or
    # Explorer, sidecar.ingest.deletions): kept as a record because a report, a critical finding
    # or an order refers to it; or, with `removed_at` too, gone from the sidecar's lists and
    # answers. The row itself stays, so the audit trail, emergency-access grants and
    # notifications that name it keep pointing at a record. Cleared if the images come back.
    images_deleted_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime, index=True)
    )
    removed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))


class Series(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    series_instance_uid: str = Field(max_length=64, unique=True, index=True)
    series_number: int | None = None
    series_description: str | None = Field(default=None, max_length=64)
    modality: str | None = Field(default=None, max_length=16)
    body_part: str | None = Field(default=None, max_length=64)
    instance_count: int = 0
    # Indexed: Orthanc's deletion notices name series and instances by Orthanc id.
    orthanc_id: str | None = Field(default=None, max_length=64, index=True)


class Image(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    series_id: int = Field(foreign_key="series.id", index=True)
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing_row: float | None = None
    pixel_spacing_column: float | None = None
    slice_thickness: float | None = None
    # The display window the DICOM file carries (WindowCenter/WindowWidth, first value).
    window_center: float | None = None
    window_width: float | None = None
    orthanc_id: str | None = Field(default=None, max_length=64, index=True)
    # What readers keep about the image (PATCH /api/images/{id}/metadata); the DICOM file is
    # never rewritten for them. The preset window is the readers', separate from the file's.
    key_image: bool = False
    label: str | None = Field(default=None, max_length=LABEL_MAX_LENGTH)
    preset_window_center: float | None = None
    preset_window_width: float | None = None


class PatientConflict(ApiModel):
    """One Study Instance UID stored in Orthanc under several patient ids."""

    other_patient_ids: list[str]
    description: str = (
        "Orthanc holds images under this Study Instance UID for other patient ids too: the "
        "viewer does not show the study until the images filed under the wrong patient are "
        "removed or corrected"
    )


class StudyPublic(ApiModel):
    id: int
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: date | None
    patient_sex: str | None
    patient_record_id: int | None
    patient_identity_issue: str | None
    study_date: date | None
    study_time: LocalTime | None
    study_description: str | None
    modalities: list[str]
    referring_physician: str | None
    body_part: str | None
    series_count: int
    instance_count: int
    orthanc_id: str | None
    status: StudyStatus
    created_at: datetime
    updated_at: datetime
    images_received_at: datetime | None
    order_id: int | None
    facility_id: str | None
    priority: str | None
    clinical_indication: str | None
    order_match_issue: str | None
    instances_announced: int | None
    # Orthanc no longer holds the study's images (deleted there): a record kept for its report,
    # critical finding or order.
    images_deleted: bool = False
    images_deleted_at: datetime | None = None
    # How many instances the modality announced (MPPS COMPLETED) that are not here, once the
    # study's images have arrived; null when none are missing or nothing was announced.
    images_missing: int | None = None
    # Null unless Orthanc holds this UID under other patient ids too (see Study).
    patient_conflict: PatientConflict | None = PydanticField(
        default=None, validation_alias="conflicting_patient_ids"
    )
    # OHIF's link to this study (sidecar.viewer.bundle); None when no viewer is configured.
    viewer_url: str | None = None

    @field_validator("modalities", mode="before")
    @classmethod
    def _split_modalities(cls, value: object) -> object:
        return split_multi(value) if isinstance(value, str) or value is None else value

    @model_validator(mode="after")
    def _missing(self) -> StudyPublic:
        self.images_deleted = self.images_deleted_at is not None
        announced = self.instances_announced
        arrived = self.images_received_at is not None and not self.images_deleted
        if announced and arrived and self.instance_count < announced:
            self.images_missing = announced - self.instance_count
        return self

    @field_validator("patient_conflict", mode="before")
    @classmethod
    def _conflict(cls, value: object) -> object:
        if isinstance(value, str):
            return {"other_patient_ids": value.split("\\")}
        return value


class StudyCreate(ApiInput):
    """A study announced before its images (seed 001 `POST /api/studies`)."""

    study_instance_uid: str | None = PydanticField(
        default=None, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$"
    )
    accession_number: str | None = PydanticField(default=None, min_length=1, max_length=16)
    patient_id: str = PydanticField(min_length=1, max_length=64)
    issuer_of_patient_id: str | None = PydanticField(default=None, min_length=1, max_length=64)
    patient_name: str | None = PydanticField(default=None, max_length=324)
    patient_birth_date: date | None = None
    patient_sex: PatientSex | None = None
    study_date: date | None = None
    study_description: str | None = PydanticField(default=None, max_length=64)
    modalities: list[ModalityCode] = PydanticField(default_factory=list, max_length=16)
    referring_physician: str | None = PydanticField(default=None, max_length=324)
    body_part: str | None = PydanticField(default=None, max_length=64)


class StudyUpdate(ApiInput):
    """The clinical context a technologist or radiologist may correct; DICOM UIDs never change."""

    accession_number: str | None = PydanticField(default=None, min_length=1, max_length=16)
    study_description: str | None = PydanticField(default=None, max_length=64)
    referring_physician: str | None = PydanticField(default=None, max_length=324)
    body_part: str | None = PydanticField(default=None, max_length=64)


class StudyStatusUpdate(ApiInput):
    status: StudyStatus


class SeriesPublic(ApiModel):
    id: int
    series_instance_uid: str
    series_number: int | None
    series_description: str | None
    modality: str | None
    body_part: str | None
    instance_count: int


class ImagePublic(ApiModel):
    id: int
    study_id: int
    series_id: int
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    pixel_spacing: list[float] | None
    slice_thickness: float | None
    window_center: float | None
    window_width: float | None
    orthanc_id: str | None
    key_image: bool = False
    label: str | None = None
    preset_window_center: float | None = None
    preset_window_width: float | None = None


_WINDOW_LIMIT = 1e7  # far beyond any stored value (16-bit data, Hounsfield units)
PresetNumber = Annotated[
    float,
    PydanticField(strict=True, allow_inf_nan=False, ge=-_WINDOW_LIMIT, le=_WINDOW_LIMIT),
]
PresetWidth = Annotated[
    float, PydanticField(strict=True, allow_inf_nan=False, gt=0, le=_WINDOW_LIMIT)
]


class ImageMetadataUpdate(ApiInput):
    """What a reader keeps about an image: the sidecar's own record, never the DICOM file.
    `label` null clears it; `windowCenter` and `windowWidth` go together (both null clears the
    preset)."""

    not_nullable: ClassVar[frozenset[str]] = frozenset({"key_image"})

    key_image: StrictBool | None = None
    label: str | None = PydanticField(default=None, min_length=1, max_length=LABEL_MAX_LENGTH)
    window_center: PresetNumber | None = None
    window_width: PresetWidth | None = None

    @field_validator("label")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co") for c in value):
            raise ValueError("must not contain control or format characters")
        if not value.strip():
            raise ValueError("must not be blank: send null to clear the label")
        return value.strip()

    @model_validator(mode="after")
    def _window_pair(self) -> ImageMetadataUpdate:
        given = {"window_center", "window_width"} & self.model_fields_set
        if len(given) == 1:
            raise ValueError("windowCenter and windowWidth go together: send both, or neither")
        if given and (self.window_center is None) != (self.window_width is None):
            raise ValueError("windowCenter and windowWidth are both set, or both null (cleared)")
        return self


class StudyDetail(StudyPublic):
    series: list[SeriesPublic]
    # What the modality reported performing for this study (MPPS), oldest first.
    performed_procedure_steps: list[PerformedStepSummary] = PydanticField(default_factory=list)


# The status workflow (sidecar.core.workflow moves records through it).
_S = StudyStatus
STUDY_WORKFLOW: Workflow[StudyStatus] = Workflow(
    "study",
    "study",
    {
        _S.SCHEDULED: {_S.ARRIVED, _S.IN_PROGRESS, _S.COMPLETED, _S.CANCELLED},
        _S.ARRIVED: {_S.IN_PROGRESS, _S.COMPLETED, _S.CANCELLED},
        _S.IN_PROGRESS: {_S.COMPLETED, _S.CANCELLED},
        _S.COMPLETED: {_S.PRELIMINARY, _S.FINAL, _S.CANCELLED},
        # A discarded preliminary report leaves the study waiting to be read again.
        _S.PRELIMINARY: {_S.FINAL, _S.COMPLETED},
        _S.FINAL: set(),
        _S.CANCELLED: set(),
    },
)

"""Reading: who holds each study ready to read, the rules that assign studies, the API shapes.

`StudyReading` is one row per study that has been ready to read or held: when it became ready
(images complete), who holds it (assigned by an administrator or a rule, or claimed by the
radiologist), and how far the overdue worker has gone with it. Its `version` makes every
UPDATE `... WHERE version = ?`: two radiologists claiming the same study at once cannot both win.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import Field as PydanticField
from pydantic import model_validator
from sqlalchemy import JSON, Integer
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import MAX_RECORD_ID, ApiInput, ApiModel, UTCDateTime, utcnow
from sidecar.orders.models import Priority
from sidecar.studies.models import ModalityCode

_version_column = Column("version", Integer, nullable=False)


class StudyReading(SQLModel, table=True):
    __tablename__ = "study_reading"
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _version_column}

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", unique=True, index=True)
    # Images complete: when the study was first seen ready to read. Null for a study held
    # before its images arrived (an administrator may assign ahead).
    ready_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))
    assigned_to_id: int | None = Field(default=None, foreign_key="app_user.id", index=True)
    assigned_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Set when the holder claimed the study themself (not when it was assigned to them).
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Who gave it to the holder: a user name, or the rule engine's actor.
    assigned_by: str | None = Field(default=None, max_length=64)
    # The overdue worker: 0 not overdue; 1 the assignee told; 2 the escalation contact told.
    overdue_level: int = 0
    overdue_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # An AI finding of severity critical asks for a radiologist's review by this time
    # (AI_REVIEW_MINUTES, sidecar.analyses): the study is due then, if that comes before its
    # priority's target.
    review_due_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    version: int = Field(default=1, sa_column=_version_column)


class AssignmentRule(SQLModel, table=True):
    """A filter (every given criterion must match) and a pool of radiologists (user ids).
    Rules are tried by `position`, then id; the first whose pool has room takes the study."""

    __tablename__ = "assignment_rule"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    position: int = 0
    enabled: bool = True
    modality: str | None = Field(default=None, max_length=16)
    body_part: str | None = Field(default=None, max_length=64)
    priority: str | None = Field(default=None, max_length=16)
    procedure_code: str | None = Field(default=None, max_length=64)
    pool: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


# -- API ------------------------------------------------------------------------------------------


class Holder(ApiModel):
    id: int
    name: str


class Procedure(ApiModel):
    code: str | None
    description: str | None


class WorklistItem(ApiModel):
    study_id: int
    accession_number: str | None
    # Who the study is of, as GET /api/studies shows it to the same readers.
    patient_name: str | None = None
    patient_id: str | None = None
    study_instance_uid: str | None = None
    # OHIF's link to this study (as GET /api/studies gives it); None when no viewer is set up.
    viewer_url: str | None = None
    status: str
    priority: Priority
    ready_at: datetime | None
    due_at: datetime | None
    overdue: bool
    preliminary: bool  # a preliminary report exists (written, not yet signed)
    report_id: int | None
    assigned_to: Holder | None
    assigned_at: datetime | None
    claimed_at: datetime | None
    modalities: list[str]
    body_part: str | None
    procedure: Procedure
    indication: str | None
    prior_studies: int
    # A critical AI finding asks for a radiologist's review by then (sidecar.analyses.review).
    ai_review_due_at: datetime | None = None


class ReadingState(ApiModel):
    """Who holds a study now (the answer to assign, claim and release)."""

    study_id: int
    assigned_to: Holder | None
    assigned_at: datetime | None
    claimed_at: datetime | None
    assigned_by: str | None


class AssignRequest(ApiInput):
    radiologist_id: int = PydanticField(ge=1, le=MAX_RECORD_ID)


class ClaimRequest(ApiInput):
    take_over: bool = False


UserId = Annotated[int, PydanticField(ge=1, le=MAX_RECORD_ID)]


class RuleFields(ApiInput):
    name: str | None = PydanticField(default=None, min_length=1, max_length=128)
    position: int | None = PydanticField(default=None, ge=0, le=1_000_000)
    enabled: bool | None = None
    modality: ModalityCode | None = None
    body_part: str | None = PydanticField(default=None, min_length=1, max_length=64)
    priority: Priority | None = None
    procedure_code: str | None = PydanticField(default=None, min_length=1, max_length=64)
    pool: list[UserId] | None = PydanticField(default=None, min_length=1, max_length=100)


class RuleCreate(RuleFields):
    name: str = PydanticField(min_length=1, max_length=128)
    pool: list[UserId] = PydanticField(min_length=1, max_length=100)


class RuleUpdate(RuleFields):
    not_nullable: ClassVar[frozenset[str]] = frozenset({"name", "position", "enabled", "pool"})

    @model_validator(mode="after")
    def _not_empty(self) -> RuleUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change: send at least one field")
        return self


class RulePublic(ApiModel):
    id: int
    name: str
    position: int
    enabled: bool
    modality: str | None
    body_part: str | None
    priority: str | None
    procedure_code: str | None
    pool: list[int]
    created_at: datetime
    updated_at: datetime

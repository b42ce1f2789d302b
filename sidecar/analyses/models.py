"""The records of AI analysis: an analysis (one request for a study), its tasks (one per analyzer
asked for), the findings the analyzers returned and their review, and the DICOM work items
(UPS) that carry an external analyzer's task.

An analysis' status follows its tasks (sidecar.analyses.status): scheduled until one starts,
completed once every task has stored its results (a Structured Report in the study), failed or
canceled when a task did. A task of an external analyzer follows its work item: claimed is
IN_PROGRESS, completed or canceled is COMPLETED or CANCELED.

`version` on tasks and work items is the optimistic-concurrency counter (as on reports): two
analyzers claiming one work item at once, or a claim racing the timeout release, cannot both win.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Float, Integer, Text
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import EnumText, UTCDateTime, utcnow


class AnalysisStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"  # every task's results are stored in the study
    FAILED = "FAILED"
    CANCELED = "CANCELED"


#: Nothing more will happen to an analysis or a task in these states.
ENDED = (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED, AnalysisStatus.CANCELED)


class AnalysisPriority(StrEnum):
    """Seed 002's `priority`, as UPS Scheduled Procedure Step Priority (0074,1200) has it."""

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class AnalyzerKind(StrEnum):
    BUILT_IN = "BUILT_IN"  # runs inside the sidecar (`quality`)
    ONNX = "ONNX"  # an operator-supplied model, run inside the sidecar
    EXTERNAL = "EXTERNAL"  # performs a UPS work item over /dicom-web/workitems


class ReviewDecision(StrEnum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


class WorkitemState(StrEnum):
    """Procedure Step State (0074,1000), with DICOM's spelling."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


_task_version = Column("version", Integer, nullable=False)
_workitem_version = Column("version", Integer, nullable=False)


class Analysis(SQLModel, table=True):
    __tablename__ = "analysis"

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    priority: AnalysisPriority = Field(
        sa_column=Column(EnumText(AnalysisPriority, 8), nullable=False)
    )
    status: AnalysisStatus = Field(
        sa_column=Column(EnumText(AnalysisStatus, 16), nullable=False, index=True)
    )
    # A user name, or "auto" for the analyzers of AI_AUTO_ANALYZERS on a stable study.
    requested_by: str = Field(max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class AnalysisTask(SQLModel, table=True):
    """One analyzer's part of an analysis."""

    __tablename__ = "analysis_task"
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _task_version}

    id: int | None = Field(default=None, primary_key=True)
    analysis_id: int = Field(foreign_key="analysis.id", index=True)
    analyzer: str = Field(max_length=64)
    kind: AnalyzerKind = Field(sa_column=Column(EnumText(AnalyzerKind, 16), nullable=False))
    status: AnalysisStatus = Field(
        sa_column=Column(EnumText(AnalysisStatus, 16), nullable=False, index=True)
    )
    # A task run inside the sidecar is held by one node until this moment (a node killed
    # mid-analysis leaves it to be taken again once it passes).
    held_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    attempts: int = 0
    # The Structured Report holding the results, once stored in the study.
    report_sop_instance_uid: str | None = Field(default=None, max_length=64)
    # Why it failed or was canceled, in words for the requester (no patient data).
    reason: str | None = Field(default=None, max_length=512)
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    version: int = Field(default=1, sa_column=_task_version)


class AnalysisFinding(SQLModel, table=True):
    """One finding of one analyzer, as its Structured Report holds it, and its review."""

    __tablename__ = "analysis_finding"

    id: int | None = Field(default=None, primary_key=True)
    analysis_id: int = Field(foreign_key="analysis.id", index=True)
    task_id: int = Field(foreign_key="analysis_task.id", index=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    model: str = Field(max_length=64)
    finding: str = Field(max_length=256)
    confidence: float = Field(sa_column=Column(Float, nullable=False))
    severity: str = Field(max_length=16)
    recommendation: str = Field(max_length=256)
    # The image it is about (none: the whole study) and the box on it, in pixels.
    series_instance_uid: str | None = Field(default=None, max_length=64)
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    frame: int | None = None
    x: float | None = Field(default=None, sa_column=Column(Float))
    y: float | None = Field(default=None, sa_column=Column(Float))
    width: float | None = Field(default=None, sa_column=Column(Float))
    height: float | None = Field(default=None, sa_column=Column(Float))
    # Unconfirmed until a radiologist accepts or rejects it.
    decision: ReviewDecision | None = Field(
        default=None, sa_column=Column(EnumText(ReviewDecision, 16))
    )
    reviewed_by_id: int | None = Field(default=None, foreign_key="app_user.id")
    reviewed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    review_note: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class Workitem(SQLModel, table=True):
    """A DICOM Unified Procedure Step (PS3.4 CC.1.1) carrying an external analyzer's task: its
    SOP Instance UID names it in /dicom-web/workitems/{uid}."""

    __tablename__ = "workitem"
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _workitem_version}

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    task_id: int = Field(foreign_key="analysis_task.id", unique=True, index=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    state: WorkitemState = Field(
        sa_column=Column(EnumText(WorkitemState, 16), nullable=False, index=True)
    )
    # The performer's Transaction UID (0008,1195): kept from the claim, asked back for every
    # change; never shown to anyone else.
    transaction_uid: str | None = Field(default=None, max_length=64)
    performer_id: int | None = Field(default=None, foreign_key="app_user.id", index=True)
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # The performer's last sign of life (claim, update): a claim silent for
    # AI_CLAIM_TIMEOUT_MINUTES is released.
    performer_seen_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # The work item's attributes as DICOM JSON (PS3.18 F.2), as the sidecar wrote them at
    # creation and the performer updated them (progress, output information).
    dataset: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    version: int = Field(default=1, sa_column=_workitem_version)

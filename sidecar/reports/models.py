"""Radiology reports (seed 001/002): sections, status, signed revisions that never change.

A report is one row that moves PRELIMINARY -> FINAL -> AMENDED / CORRECTED. Every signature (the
first one and every amendment) writes an immutable `ReportRevision`: the text that was signed,
by whom and when. A signed text is never edited; an amendment is a new revision, and earlier
ones stay readable.

`version` is the optimistic-concurrency counter: SQLAlchemy's version_id_col makes every UPDATE
`... WHERE id = ? AND version = ?`, so two radiologists writing the same report at once cannot
both win; clients send back the version (or ETag) they read and a stale one answers 409.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field as PydanticField
from sqlalchemy import Integer, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import MAX_RECORD_ID, ApiInput, ApiModel, EnumText, UTCDateTime, utcnow
from sidecar.core.workflow import Workflow


class ReportStatus(StrEnum):
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    AMENDED = "AMENDED"
    CORRECTED = "CORRECTED"


class AmendmentKind(StrEnum):
    """AMENDED: content added or changed after signing (an addendum, a changed conclusion);
    CORRECTED: an error in the signed text put right. Both reach the HIS as result status C."""

    AMENDED = "AMENDED"
    CORRECTED = "CORRECTED"


#: The report's sections, in reading order (seed 002's structured report).
SECTIONS = ("technique", "comparison", "findings", "impression", "recommendations")
_SECTION_MAX = 20000


_version_column = Column("version", Integer, nullable=False)


class RadiologyReport(SQLModel, table=True):
    __tablename__ = "radiology_report"
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _version_column}

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    order_id: int | None = Field(default=None, foreign_key="imaging_order.id", index=True)
    radiologist_id: int = Field(foreign_key="app_user.id", index=True)  # the author
    status: ReportStatus = Field(
        default=ReportStatus.PRELIMINARY,
        sa_column=Column(EnumText(ReportStatus, 16), nullable=False, index=True),
    )
    technique: str | None = Field(default=None, sa_column=Column(Text))
    comparison: str | None = Field(default=None, sa_column=Column(Text))
    findings: str | None = Field(default=None, sa_column=Column(Text))
    impression: str | None = Field(default=None, sa_column=Column(Text))
    recommendations: str | None = Field(default=None, sa_column=Column(Text))
    revision: int = 0  # signed revisions so far: 0 while never signed
    version: int = Field(default=1, sa_column=_version_column)
    signed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    signed_by_id: int | None = Field(default=None, foreign_key="app_user.id")
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    # A discarded draft keeps its row (and its audit trail) but is no longer the study's report.
    deleted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Why the signed report must be amended (images it was written from were removed,
    # sidecar.studies.rejection); cleared by the next amendment.
    amendment_required_reason: str | None = Field(default=None, max_length=200)


class ReportRevision(SQLModel, table=True):
    """One signed text, immutable: revision 1 is the first signature, then each amendment."""

    __tablename__ = "radiology_report_revision"
    __table_args__ = (UniqueConstraint("report_id", "revision"),)

    id: int | None = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="radiology_report.id", index=True)
    revision: int
    status: ReportStatus = Field(sa_column=Column(EnumText(ReportStatus, 16), nullable=False))
    technique: str | None = Field(default=None, sa_column=Column(Text))
    comparison: str | None = Field(default=None, sa_column=Column(Text))
    findings: str | None = Field(default=None, sa_column=Column(Text))
    impression: str | None = Field(default=None, sa_column=Column(Text))
    recommendations: str | None = Field(default=None, sa_column=Column(Text))
    signed_by_id: int = Field(foreign_key="app_user.id")
    signed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    reason: str | None = Field(default=None, max_length=1000)  # why it was amended


class ReportSections(ApiInput):
    technique: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    comparison: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    findings: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    impression: str | None = PydanticField(default=None, max_length=_SECTION_MAX)
    recommendations: str | None = PydanticField(default=None, max_length=_SECTION_MAX)


class ReportCreate(ReportSections):
    study_id: int = PydanticField(ge=1, le=MAX_RECORD_ID)
    # Start from this template's sections (sidecar.reports.templates); sections sent too win.
    template_id: int | None = PydanticField(default=None, ge=1, le=MAX_RECORD_ID)


class ReportUpdate(ReportSections):
    # The version the client read; a stale one answers 409 (If-Match works the same way).
    version: int | None = PydanticField(default=None, ge=1)


class ReportSign(ApiInput):
    version: int | None = PydanticField(default=None, ge=1)


class ReportAmend(ReportSections):
    kind: AmendmentKind = AmendmentKind.AMENDED
    reason: str = PydanticField(min_length=1, max_length=1000)
    version: int | None = PydanticField(default=None, ge=1)


class ReportPublic(ApiModel):
    id: int
    study_id: int
    order_id: int | None
    radiologist_id: int
    status: ReportStatus
    technique: str | None
    comparison: str | None
    findings: str | None
    impression: str | None
    recommendations: str | None
    revision: int
    version: int
    signed_at: datetime | None
    signed_by_id: int | None
    created_at: datetime
    updated_at: datetime
    # Set when images of the study were removed after signing: the report needs amending.
    amendment_required_reason: str | None = None


class ReportRevisionPublic(ApiModel):
    report_id: int
    revision: int
    status: ReportStatus
    technique: str | None
    comparison: str | None
    findings: str | None
    impression: str | None
    recommendations: str | None
    signed_by_id: int
    signed_at: datetime
    reason: str | None


# The status workflow (sidecar.core.workflow moves records through it).
_RS = ReportStatus
REPORT_WORKFLOW: Workflow[ReportStatus] = Workflow(
    "report",
    "report",
    {
        _RS.PRELIMINARY: {_RS.FINAL},
        _RS.FINAL: {_RS.AMENDED, _RS.CORRECTED},
        _RS.AMENDED: {_RS.AMENDED, _RS.CORRECTED},
        _RS.CORRECTED: {_RS.AMENDED, _RS.CORRECTED},
    },
)

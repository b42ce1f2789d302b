"""The analyses API's shapes, seed 002's: an analysis with its tasks and findings, a finding's
coordinates on its image (the image named by its SOP Instance UID) and its review."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from pydantic import Field as PydanticField

from sidecar.analyses.findings import Severity
from sidecar.analyses.models import AnalysisPriority, AnalysisStatus
from sidecar.core.models import ApiInput, ApiModel


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


#: Seed 002 writes the priority in lower case; any case is taken.
PriorityName = Annotated[Literal["high", "medium", "low"], BeforeValidator(_lower)]
#: A review's decision, as the request gives it (any case) and the answers write it.
DecisionName = Annotated[Literal["accepted", "rejected"], BeforeValidator(_lower)]
AnalyzerName = Annotated[str, PydanticField(min_length=1, max_length=64)]


class AnalysisRequest(ApiInput):
    models: list[AnalyzerName] = PydanticField(min_length=1, max_length=32)
    priority: PriorityName = "medium"

    @property
    def analysis_priority(self) -> AnalysisPriority:
        return AnalysisPriority(self.priority.upper())


class AnalysisAccepted(ApiModel):
    analysis_id: int
    study_id: int
    status: AnalysisStatus


class TaskPublic(ApiModel):
    analyzer: str
    status: AnalysisStatus
    reason: str | None
    report_sop_instance_uid: str | None


class Coordinates(ApiModel):
    """A box on an image, in its pixels (x, y: the top-left corner)."""

    x: float
    y: float
    width: float
    height: float
    image_id: str  # the image's SOP Instance UID
    series_instance_uid: str | None
    frame: int | None


class ReviewPublic(ApiModel):
    decision: DecisionName
    reviewed_by: str | None
    reviewed_at: datetime | None
    note: str | None


class FindingPublic(ApiModel):
    id: int
    model: str
    confidence: float
    finding: str
    severity: Severity
    recommendation: str
    # The image it is about (None: the whole study), by SOP Instance UID, with or without a box.
    image_id: str | None
    series_instance_uid: str | None
    frame: int | None
    coordinates: Coordinates | None
    # None until a radiologist accepts or rejects it.
    review: ReviewPublic | None


class AnalysisSummary(ApiModel):
    analysis_id: int
    study_id: int
    status: AnalysisStatus
    priority: PriorityName
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    # When it ended: completed, failed or canceled.
    completed_at: datetime | None
    tasks: list[TaskPublic]
    finding_count: int


class AnalysisDetail(AnalysisSummary):
    findings: list[FindingPublic]


class ReviewRequest(ApiInput):
    decision: DecisionName
    note: str | None = PydanticField(default=None, max_length=2000)

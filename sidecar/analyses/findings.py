"""What an analyzer says about a study, before it is stored: the shapes every analyzer (built in,
ONNX, external) hands over and the Structured Report is written from and read back into.

Coordinates are in the referenced image's pixel space (columns, rows from the top-left corner
of the first pixel), as DICOM spatial coordinates (SCOORD) are; the API's `coordinates`
{x, y, width, height} are the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pydicom import Dataset


class Severity(StrEnum):
    """How much a finding matters, in seed 002's words. `critical` asks a radiologist to review
    the study at once (it never raises a critical finding by itself)."""

    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class ImageRef:
    """One image of the study, by its DICOM identity."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame: int | None = None  # 1-based, for a multi-frame image


@dataclass(frozen=True)
class Box:
    """A rectangle on an image, in pixels: x, y is the top-left corner."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class AnalyzerFinding:
    """One finding of one analyzer. `finding` names what was found in words a radiologist reads
    (for the quality analyzer, the check's name, e.g. "blank or uniform image"); `image` is the
    image it is about (None: the whole study, e.g. fewer images than MPPS reported); `box` a
    region of that image, when the analyzer located one."""

    model: str
    finding: str
    confidence: float  # 0 to 1
    severity: Severity
    recommendation: str
    image: ImageRef | None = None
    box: Box | None = None


@dataclass(frozen=True)
class StudyContext:
    """What the study was ordered and reported as, for checks that compare images with it.
    Each is None when unknown (no order, no MPPS)."""

    study_instance_uid: str
    ordered_modality: str | None = None  # the order's modality code, e.g. "CR"
    ordered_body_part: str | None = None  # the order's body part, e.g. "CHEST"
    performed_image_count: int | None = None  # images the modality reported in MPPS


class Analyzer(Protocol):
    """An analyzer that runs inside the sidecar. `images` are the study's instances as pydicom
    read them from Orthanc (pixel data included), one at a time: an analyzer keeps what it needs
    of each, not the images (a study may hold thousands)."""

    name: str
    version: str

    def analyze(self, images: Iterable[Dataset], context: StudyContext) -> list[AnalyzerFinding]:
        """The findings; an empty list when nothing was found. Raises AnalysisError when the
        study cannot be analysed (the analysis fails with its message)."""
        ...


class AnalysisError(Exception):
    """The study could not be analysed; the message says why, in words for the requester (no
    patient data)."""

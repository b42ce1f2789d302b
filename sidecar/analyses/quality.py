"""The built-in `quality` analyzer: technical defects a radiographer would want to know about
before a radiologist reads the study, found without any trained model.

Checks, each finding's text naming its check (the `CHECK_*` constants):

- a blank or uniform image, and a clipped image (quality_pixels says how each is measured);
- an exposure deviation index (0018,1413, IEC 62494-1) outside +-3: the exposure the detector
  received was more than twice (or less than half) its target;
- a duplicate image: the same decoded pixel data under another SOP Instance UID (the finding is
  on the later one);
- a modality or body part that contradicts the order (quality_order says what agrees);
- fewer images than the modality reported in MPPS (a finding about the whole study).

The images stream through once: of each the analyzer keeps its identity and a SHA-256 of its
pixels, never the pixels. Instances without pixel data (structured reports, presentation
states, key object selections) are not images and are passed over. An image whose pixels
cannot be decoded (a compression no installed decoder reads, or corrupt data) still has its
header checked, counts towards the number of images, and is compared with the others by its
encoded bytes; the study gets one low-severity finding saying how many images went unchecked,
so an empty result never suggests they were looked at. Only a study none of whose images could
be decoded fails the analysis.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
from pydicom import Dataset
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import UID

from sidecar.analyses.findings import (
    AnalysisError,
    AnalyzerFinding,
    Box,
    ImageRef,
    Severity,
    StudyContext,
)
from sidecar.analyses.quality_order import (
    NOT_ACQUISITIONS,
    SECONDARY_CAPTURE_CLASS_PREFIX,
    body_parts_contradict,
    modality_contradicts,
)
from sidecar.analyses.quality_pixels import (
    CLIPPED_ENCLOSED,
    CLIPPED_TOTAL,
    Clipping,
    Flatness,
    clipping,
    exposed_field,
    flatness,
    pixel_layout,
)

CHECK_BLANK: Final = "blank or uniform image"
CHECK_CLIPPED: Final = "clipped image"
CHECK_EXPOSURE: Final = "exposure deviation index out of range"
CHECK_DUPLICATE: Final = "duplicate image"
CHECK_MODALITY: Final = "modality contradicts the order"
CHECK_BODY_PART: Final = "body part contradicts the order"
CHECK_COUNT: Final = "fewer images than the modality reported"
CHECK_UNREADABLE: Final = "pixel data could not be decoded"
CHECKS: Final = (
    CHECK_BLANK,
    CHECK_CLIPPED,
    CHECK_EXPOSURE,
    CHECK_DUPLICATE,
    CHECK_MODALITY,
    CHECK_BODY_PART,
    CHECK_COUNT,
)

#: IEC 62494-1 and AAPM TG-116: a deviation index beyond +-3 is an exposure more than twice
#: (10^0.3) or less than half the target for the exam.
DEVIATION_LIMIT: Final = 3.0

_PIXEL_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

_ACQUISITION = "Check the acquisition; repeat or resend the missing images."
_RECOMMENDATIONS: Final = {
    CHECK_BLANK: "Check the acquisition; repeat the image if it should show anatomy, or remove "
    "it from the study.",
    CHECK_CLIPPED: "Check exposure and processing; repeat if the clipped region hides anatomy "
    "needed for the diagnosis.",
    CHECK_MODALITY: "Check that the images belong to this order and patient before reading.",
    CHECK_BODY_PART: "Check that the right body part was imaged for this order, and that the "
    "images belong to it, before reading.",
    CHECK_COUNT: _ACQUISITION,
}
_OVEREXPOSED = (
    "Exposure above target (radiation dose): review the technique; repeat only if anatomy is "
    "burnt out."
)
_UNDEREXPOSED = (
    "Exposure below target: check the image for noise and repeat if it is not diagnostic."
)


class QualityAnalyzer:
    """The `quality` analyzer (see the module's docstring); satisfies findings.Analyzer."""

    name = "quality"
    version = "1.0"

    def analyze(self, images: Iterable[Dataset], context: StudyContext) -> list[AnalyzerFinding]:
        study = _Study(self.name, context)
        for dataset in images:
            study.add(dataset)
        return study.close()


class _Study:
    """What the analyzer keeps of a study while its images stream through."""

    def __init__(self, model: str, context: StudyContext) -> None:
        self.model = model
        self.context = context
        self.findings: list[AnalyzerFinding] = []
        self.seen: set[str] = set()
        self.decoded = 0
        self.undecodable: Counter[str] = Counter()
        self.first_with: dict[bytes, str] = {}  # pixel hash: the first image's description
        self.contradicted: set[tuple[str, str]] = set()  # (check, image's value) reported

    def add(self, ds: Dataset) -> None:
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            return  # not an image
        sop = str(ds.get("SOPInstanceUID") or "")
        if not sop or sop in self.seen:
            return  # the same instance twice is not a duplicate image
        self.seen.add(sop)
        image = ImageRef(
            study_instance_uid=str(ds.get("StudyInstanceUID") or self.context.study_instance_uid),
            series_instance_uid=str(ds.get("SeriesInstanceUID") or ""),
            sop_instance_uid=sop,
            sop_class_uid=str(ds.get("SOPClassUID") or ""),
        )
        self._header_checks(ds, image)
        try:
            measured = _measure(ds, acquisition=_is_acquisition(ds, image))
        except Exception:  # any decoding failure: this image goes unchecked, the study goes on
            self.undecodable[_transfer_syntax(ds)] += 1
            encoded = _encoded_bytes(ds)
            if encoded:
                self._duplicate(ds, image, hashlib.sha256(b"encoded" + encoded).digest())
            return
        self.decoded += 1
        self._pixel_findings(image, measured)
        if not measured.blank:  # blank images are all alike; the blank finding says enough
            self._duplicate(ds, image, measured.digest)

    def close(self) -> list[AnalyzerFinding]:
        images = len(self.seen)
        expected = self.context.performed_image_count
        if images and not self.decoded:
            syntaxes = ", ".join(sorted(self.undecodable))
            raise AnalysisError(
                f"none of the study's {images} images could be decoded (transfer syntax "
                f"{syntaxes}): nothing to check"
            )
        if not images and not expected:
            raise AnalysisError("the study holds no images to check")
        if expected is not None and images < expected:
            self._add(CHECK_COUNT, 1.0, Severity.MODERATE, _RECOMMENDATIONS[CHECK_COUNT], None)
        if self.undecodable:
            count = sum(self.undecodable.values())
            syntaxes = ", ".join(sorted(self.undecodable))
            self._add(
                CHECK_UNREADABLE,
                1.0,
                Severity.LOW,
                f"{count} of {images} images could not be decoded here (transfer syntax "
                f"{syntaxes}) and were not checked for blank, clipped or duplicate images; "
                "check them in the viewer.",
                None,
            )
        return self.findings

    def _header_checks(self, ds: Dataset, image: ImageRef) -> None:
        deviation = _deviation_index(ds)
        if deviation is not None and abs(deviation) > DEVIATION_LIMIT:
            over = deviation > 0
            self._add(
                CHECK_EXPOSURE,
                1.0,
                Severity.LOW if over else Severity.MODERATE,
                _OVEREXPOSED if over else _UNDEREXPOSED,
                image,
            )
        modality = str(ds.get("Modality") or "").strip()
        secondary = not _is_acquisition(ds, image)
        if not secondary and modality_contradicts(modality, self.context.ordered_modality):
            self._contradiction(CHECK_MODALITY, modality.upper(), 1.0, image)
        part = str(ds.get("BodyPartExamined") or "").strip()
        if not secondary and body_parts_contradict(part, self.context.ordered_body_part):
            # Confidence below 1: the comparison is exact, but what agrees rests on a
            # vocabulary of body part names that a site's own terms may outgrow.
            self._contradiction(CHECK_BODY_PART, part.upper(), 0.9, image)

    def _contradiction(self, check: str, value: str, confidence: float, image: ImageRef) -> None:
        """One finding per contradicting value, on the first image that carries it: every
        image of a wrong series says the same."""
        if (check, value) not in self.contradicted:
            self.contradicted.add((check, value))
            self._add(check, confidence, Severity.HIGH, _RECOMMENDATIONS[check], image)

    def _pixel_findings(self, image: ImageRef, measured: _Measured) -> None:
        """At most one blank and one clipped finding per image, on the first frame showing
        it (for a multi-frame image; all frames blank: the image)."""
        several = measured.frames > 1
        if measured.first_blank is not None:
            number, flat = measured.first_blank
            self._add(
                CHECK_BLANK,
                # Exactly uniform is certain; merely flat leaves room for a genuinely
                # featureless image (a phantom, a test exposure).
                1.0 if flat.uniform else 0.9,
                Severity.MODERATE,
                _RECOMMENDATIONS[CHECK_BLANK],
                _frame(image, number if several and not measured.blank else None),
            )
        if measured.clipped is not None:
            number, found = measured.clipped
            self._add(
                CHECK_CLIPPED,
                _clipped_confidence(found),
                Severity.MODERATE,
                _RECOMMENDATIONS[CHECK_CLIPPED],
                _frame(image, number if several else None),
                found.box if found.enclosed >= CLIPPED_ENCLOSED else None,
            )

    def _duplicate(self, ds: Dataset, image: ImageRef, digest: bytes) -> None:
        earlier = self.first_with.get(digest)
        if earlier is None:
            self.first_with[digest] = _describe(ds)
            return
        self._add(
            CHECK_DUPLICATE,
            1.0,
            Severity.MODERATE,
            f"Same pixel data as {earlier}: check whether the image was sent twice or stored "
            "in place of another; remove the copy or resend the missing image.",
            image,
        )

    def _add(
        self,
        check: str,
        confidence: float,
        severity: Severity,
        recommendation: str,
        image: ImageRef | None,
        box: Box | None = None,
    ) -> None:
        self.findings.append(
            AnalyzerFinding(self.model, check, confidence, severity, recommendation, image, box)
        )


@dataclass
class _Measured:
    """What the pixels of one image showed, frame by frame."""

    frames: int = 0
    blank_frames: int = 0
    first_blank: tuple[int, Flatness] | None = None
    clipped: tuple[int, Clipping] | None = None  # the first clipped frame, its worse end
    digest: bytes = b""  # SHA-256 of the decoded frames

    @property
    def blank(self) -> bool:
        return self.frames > 0 and self.blank_frames == self.frames


def _measure(ds: Dataset, *, acquisition: bool) -> _Measured:
    """Decodes `ds` one frame at a time (none kept, nothing cached on the dataset) and
    measures each: blank, clipped (acquisitions only, frames that are not blank), and the
    hash the duplicate check compares. Raises whatever decoding raises."""
    layout = pixel_layout(ds)
    measured = _Measured()
    hasher = hashlib.sha256(b"decoded")
    for number, frame in enumerate(iter_pixels(ds), start=1):
        measured.frames = number
        hasher.update(f"{frame.dtype.str} {frame.shape}".encode())
        hasher.update(np.ascontiguousarray(frame).data)
        field = exposed_field(frame, layout)
        flat = flatness(field)
        if flat.blank:
            measured.blank_frames += 1
            measured.first_blank = measured.first_blank or (number, flat)
        elif measured.clipped is None and acquisition:
            clipped = [c for c in clipping(field, layout) if c.clipped]
            if clipped:
                worse = max(clipped, key=lambda c: max(c.enclosed, c.total))
                measured.clipped = (number, worse)
    measured.digest = hasher.digest()
    return measured


def _is_acquisition(ds: Dataset, image: ImageRef) -> bool:
    """False for images that are not an acquisition of the patient (a secondary capture such
    as a dose screen): not compared with the order, and not checked for clipping (a screen
    capture is mostly black by design)."""
    if image.sop_class_uid.startswith(SECONDARY_CAPTURE_CLASS_PREFIX):
        return False
    return str(ds.get("Modality") or "").strip().upper() not in NOT_ACQUISITIONS


def _clipped_confidence(found: Clipping) -> float:
    """0.6 at the threshold, rising to 0.95 at twice it: the share is measured exactly, but a
    plateau just over the line may still be a mask or background the bench did not foresee,
    and the further above, the less likely."""
    margin = max(found.enclosed / CLIPPED_ENCLOSED, found.total / CLIPPED_TOTAL) - 1.0
    return round(min(0.95, 0.6 + 0.35 * max(0.0, margin)), 2)


def _frame(image: ImageRef, number: int | None) -> ImageRef:
    if number is None:
        return image
    return ImageRef(
        image.study_instance_uid,
        image.series_instance_uid,
        image.sop_instance_uid,
        image.sop_class_uid,
        number,
    )


def _deviation_index(ds: Dataset) -> float | None:
    value = ds.get("DeviationIndex")
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _describe(ds: Dataset) -> str:
    """An image by its series and instance numbers (nothing about the patient)."""
    series, instance = ds.get("SeriesNumber"), ds.get("InstanceNumber")
    if series is not None and instance is not None:
        return f"image {instance} of series {series}"
    return "an earlier image of the study"


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "unknown"
    return UID(str(uid)).name or str(uid)


def _encoded_bytes(ds: Dataset) -> bytes:
    for keyword in _PIXEL_KEYWORDS:
        value = ds.get(keyword)
        if isinstance(value, bytes):
            return value
    return b""

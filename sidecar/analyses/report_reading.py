"""A TID 1500 measurement report read back into findings: those sidecar.analyses
.structured_report writes, and those an external analyzer writes with highdicom or any other
library that follows the template.

Read from plain pydicom datasets (not through highdicom's parsers, which refuse a tree that
strays from their own shapes): a finding is a Measurement Group in "Imaging Measurements", or a
"Finding" item in the report's "Qualitative Evaluations". For each:

- its words: its TEXT "Finding", else the meaning of its CODE "Finding", else its Tracking
  Identifier;
- its model: the Algorithm Name of its TID 4019 algorithm identification, else the analyzer's;
- its image: the image its SCOORD region is SELECTED FROM, else the first image it names (a
  measurement's source, a finding's source image), with the series and study the report's
  evidence lists it under; its box: the bounding box of that region's points. A SCOORD3D region
  (patient coordinates) names no image and gives no box: mapping it onto a pixel grid needs
  the image's geometry, which the report does not hold;
- its confidence: "Certainty of Finding" (a ratio, or a percent), 1.0 when the analyzer gives
  none; its severity: a "Severity" code (this service's, SNOMED CT's, or one of seed 002's
  words), `default_severity` when it gives none; its recommendation: a "Recommendation", or "".

The analyzer is the report's device observer (TID 1004), else the first algorithm it names,
else its Manufacturer Model Name; its version, the first Algorithm Version, else Software
Versions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from typing import Final

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from sidecar.analyses import report_codes as c
from sidecar.analyses.findings import AnalyzerFinding, Box, ImageRef, Severity

# Every SR SOP Class's UID starts so (PS3.4 B.5: the "Structured Report" storage classes).
_SR_CLASS_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.88."
_UID_LENGTH: Final = 64  # PS3.5 9.1
_REPORT_TITLES: Final = {
    (code.scheme_designator, code.value) for code in codes.cid7021.concepts.values()
}


@dataclass(frozen=True)
class ReadReport:
    """What a report says: who wrote it and what it found."""

    analyzer_name: str
    analyzer_version: str
    findings: list[AnalyzerFinding]


def read_report(dataset: Dataset, *, default_severity: Severity = Severity.MODERATE) -> ReadReport:
    """The findings of a TID 1500 measurement report. Raises ValueError, saying what is missing,
    for a dataset that is not a Structured Report, an SR that is not a measurement report, a
    report that names an image its evidence does not list, and one whose content is malformed
    (an item without what its value type needs, a number that is not finite, a UID longer than
    DICOM's 64 characters): an external analyzer wrote it, and what it wrote is recorded."""
    try:
        return _read(dataset, default_severity)
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        missing = f" (no {exc.name})" if isinstance(exc, AttributeError) and exc.name else ""
        raise ValueError(
            f"the report's content is malformed{missing}: a content item lacks what its value"
            " type needs (PS3.3 C.17.3)"
        ) from None


def _read(dataset: Dataset, default_severity: Severity) -> ReadReport:
    root = _root(dataset)
    evidence = _evidence(dataset)
    top = _children(root)
    groups = [
        item
        for container in _named(top, c.IMAGING_MEASUREMENTS, "CONTAINER")
        for item in _named(_children(container), c.MEASUREMENT_GROUP, "CONTAINER")
    ]
    evaluations = [
        item
        for container in _named(top, c.QUALITATIVE_EVALUATIONS, "CONTAINER")
        for item in _children(container)
        if _is(item, c.FINDING) and item.ValueType in ("TEXT", "CODE")
    ]
    analyzer_name, analyzer_version = _analyzer(dataset, top, groups + evaluations)
    findings = [
        _finding(f"measurement group {n}", group, _children(group), None, evidence)
        for n, group in enumerate(groups, start=1)
    ]
    findings += [
        _finding(f"qualitative evaluation {n}", item, _children(item), _value(item), evidence)
        for n, item in enumerate(evaluations, start=1)
    ]
    return ReadReport(
        analyzer_name=analyzer_name,
        analyzer_version=analyzer_version,
        findings=[_complete(raw, analyzer_name, default_severity) for raw in findings],
    )


def _root(dataset: Dataset) -> Dataset:
    sop_class = str(dataset.get("SOPClassUID", ""))
    if not sop_class.startswith(_SR_CLASS_PREFIX):
        what = f"SOP Class {sop_class}" if sop_class else "no SOP Class UID"
        raise ValueError(
            f"not a DICOM Structured Report ({what}): a measurement report is an SR document"
        )
    if "ContentSequence" not in dataset:
        raise ValueError(
            "the Structured Report holds no content (no Content Sequence): only its header was "
            "given, as DICOMweb metadata that leaves sequences out gives it"
        )
    title = dataset.get("ConceptNameCodeSequence")
    templates = dataset.get("ContentTemplateSequence") or []
    template_ids = {str(t.get("TemplateIdentifier", "")) for t in templates}
    title_code = (title[0].CodingSchemeDesignator, title[0].CodeValue) if title else None
    if "1500" not in template_ids and title_code not in _REPORT_TITLES:
        named = (
            f"its title is {title[0].get('CodeMeaning', '')!r} ({title_code[0]} {title_code[1]})"
            if title and title_code
            else "it has no document title"
        )
        raise ValueError(
            "the Structured Report is not a TID 1500 measurement report: "
            f"{named}, not a measurement report title (CID 7021), and it names no template 1500"
        )
    top = _children(dataset)
    if not _named(top, c.IMAGING_MEASUREMENTS, "CONTAINER") and not _named(
        top, c.QUALITATIVE_EVALUATIONS, "CONTAINER"
    ):
        raise ValueError(
            "the measurement report holds neither Imaging Measurements (DCM 126010) nor "
            "Qualitative Evaluations (UMLS C0034375)"
        )
    return dataset


@dataclass(frozen=True)
class _Raw:
    """A finding as read, before the analyzer-wide defaults fill its gaps."""

    model: str | None
    finding: str
    confidence: float | None
    severity: Severity | None
    recommendation: str
    image: ImageRef | None
    box: Box | None


def _finding(
    where: str,
    node: Dataset,
    below: list[Dataset],
    words: str | None,
    evidence: dict[str, tuple[str, str]],
) -> _Raw:
    if words is None:
        words = _first_value(below, c.FINDING) or _first_value(below, c.TRACKING_IDENTIFIER)
    if not words:
        raise ValueError(f"{where} names no finding: no Finding item and no Tracking Identifier")
    image, box = _where(where, below, evidence)
    return _Raw(
        model=_first_value(below, c.ALGORITHM_NAME),
        finding=words,
        confidence=_confidence(below),
        severity=_severity(below),
        recommendation=_first_value(below, c.RECOMMENDATION) or "",
        image=image,
        box=box,
    )


def _complete(raw: _Raw, analyzer_name: str, default_severity: Severity) -> AnalyzerFinding:
    numbers = [raw.confidence or 0.0, *(astuple(raw.box) if raw.box else ())]
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError("a finding has a certainty or a region that is not a finite number")
    return AnalyzerFinding(
        model=raw.model or analyzer_name,
        finding=raw.finding,
        confidence=raw.confidence if raw.confidence is not None else 1.0,
        severity=raw.severity or default_severity,
        recommendation=raw.recommendation,
        image=raw.image,
        box=raw.box,
    )


def _where(
    where: str, below: list[Dataset], evidence: dict[str, tuple[str, str]]
) -> tuple[ImageRef | None, Box | None]:
    """The finding's image and box: its 2D region's, else the first image it names."""
    for item in below:
        if item.ValueType == "SCOORD":
            source = next((i for i in _children(item) if i.ValueType == "IMAGE"), None)
            if source is not None:
                return _image(where, source, evidence), _bounding_box(item)
    for item in _descendants(below):
        if item.ValueType == "IMAGE":
            return _image(where, item, evidence), None
    return None, None


def _image(where: str, item: Dataset, evidence: dict[str, tuple[str, str]]) -> ImageRef:
    reference = item.ReferencedSOPSequence[0]
    instance_uid = str(reference.ReferencedSOPInstanceUID)
    if instance_uid not in evidence:
        raise ValueError(
            f"{where} names image {instance_uid}, which the report's evidence (Current "
            "Requested Procedure Evidence Sequence) does not list: its series is unknown"
        )
    study_uid, series_uid = evidence[instance_uid]
    frames = reference.get("ReferencedFrameNumber")
    frame = None
    if frames is not None and frames != "":
        frame = int(frames[0]) if isinstance(frames, Sequence) else int(frames)
        if frame < 1:
            raise ValueError(f"{where} names frame {frame}: frames are numbered from 1")
    found = ImageRef(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=instance_uid,
        sop_class_uid=str(reference.ReferencedSOPClassUID),
        frame=frame,
    )
    uids = (found.study_instance_uid, found.series_instance_uid, instance_uid, found.sop_class_uid)
    if any(len(uid) > _UID_LENGTH for uid in uids):
        raise ValueError(f"{where} names its image with a UID longer than {_UID_LENGTH} characters")
    return found


def _bounding_box(scoord: Dataset) -> Box:
    data = [float(v) for v in scoord.GraphicData]
    columns, rows = data[0::2], data[1::2]
    if scoord.get("GraphicType") == "CIRCLE" and len(data) == 4:
        # A circle is its centre and one point of its edge.
        radius = ((columns[1] - columns[0]) ** 2 + (rows[1] - rows[0]) ** 2) ** 0.5
        return Box(x=columns[0] - radius, y=rows[0] - radius, width=2 * radius, height=2 * radius)
    left, top = min(columns), min(rows)
    return Box(x=left, y=top, width=max(columns) - left, height=max(rows) - top)


def _confidence(below: list[Dataset]) -> float | None:
    for item in _named(below, c.CERTAINTY, "NUM"):
        measured = item.get("MeasuredValueSequence")
        if not measured:
            continue
        value = measured[0]
        number = (
            float(value.FloatingPointValue)
            if "FloatingPointValue" in value
            else float(value.NumericValue)
        )
        units = value.get("MeasurementUnitsCodeSequence")
        if units and units[0].CodeValue == c.PERCENT.value:
            number /= 100.0
        return number
    return None


def _severity(below: list[Dataset]) -> Severity | None:
    for item in _named(below, c.SEVERITY, "CODE"):
        value = item.ConceptCodeSequence[0]
        severity = c.severity_of(
            str(value.CodingSchemeDesignator),
            str(value.CodeValue),
            str(value.get("CodeMeaning", "")),
        )
        if severity is not None:
            return severity
    return None


def _analyzer(dataset: Dataset, top: list[Dataset], findings: list[Dataset]) -> tuple[str, str]:
    below_findings = [item for node in findings for item in _children(node)]
    name = (
        _first_value(top, c.DEVICE_OBSERVER_NAME)
        or _first_value(below_findings, c.ALGORITHM_NAME)
        or str(dataset.get("ManufacturerModelName", "") or "")
    )
    if not name:
        raise ValueError(
            "the measurement report names no analyzer: no Device Observer Name (DCM 121013), "
            "no Algorithm Name (DCM 111001) and no Manufacturer Model Name"
        )
    versions = dataset.get("SoftwareVersions", "") or ""
    software = versions[0] if not isinstance(versions, str) else versions
    version = _first_value(below_findings, c.ALGORITHM_VERSION) or str(software)
    return name, version


def _evidence(dataset: Dataset) -> dict[str, tuple[str, str]]:
    """Each listed instance's study and series, by SOP Instance UID."""
    found: dict[str, tuple[str, str]] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in dataset.get(keyword) or []:
            for series in study.get("ReferencedSeriesSequence") or []:
                for instance in series.get("ReferencedSOPSequence") or []:
                    found.setdefault(
                        str(instance.ReferencedSOPInstanceUID),
                        (str(study.StudyInstanceUID), str(series.SeriesInstanceUID)),
                    )
    return found


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _descendants(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _descendants(_children(item))


def _is(item: Dataset, code: Code) -> bool:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return False
    name = names[0]
    return bool(
        name.get("CodeValue") == code.value
        and name.get("CodingSchemeDesignator") == code.scheme_designator
    )


def _named(items: list[Dataset], code: Code, value_type: str) -> list[Dataset]:
    return [item for item in items if item.get("ValueType") == value_type and _is(item, code)]


def _value(item: Dataset) -> str:
    if item.ValueType == "CODE":
        return str(item.ConceptCodeSequence[0].get("CodeMeaning", ""))
    return str(item.get("TextValue", ""))


def _first_value(items: list[Dataset], code: Code) -> str | None:
    for item in items:
        if item.get("ValueType") in ("TEXT", "CODE") and _is(item, code):
            return _value(item) or None
    return None

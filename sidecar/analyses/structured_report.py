"""An analysis' findings as a DICOM Structured Report, stored in the study beside its images:
a Comprehensive SR holding a TID 1500 Imaging Measurement Report, written with highdicom.
`read_report` (sidecar.analyses.report_reading) reads one back into findings, whoever wrote it.

The report, as written here:

- the document: Comprehensive SR Storage (1.2.840.10008.5.1.4.1.1.88.33), in the images' study
  (their Study Instance UID, patient and study attributes), a new series of its own, new UIDs,
  PRELIMINARY and UNVERIFIED (a radiologist has not reviewed it), the images as its evidence;
  Manufacturer Model Name and Software Versions are the analyzer's name and version;
- the analyzer as the device observer (TID 1004, its name);
- each finding with a box: one Measurement Group (TID 1410, planar ROI) in "Imaging
  Measurements", holding a Tracking Identifier (the finding's words) and a Tracking Unique
  Identifier, the algorithm (TID 4019: the finding's model and the analyzer's version), the box
  as a closed POLYLINE SCOORD "Image Region" of five points in the image's pixel space, SELECTED
  FROM the image (its SOP Class and Instance UIDs, the frame when given), the confidence as the
  NUM "Certainty of Finding" (DCM 111012) in UCUM {ratio} (with its exact Floating Point Value),
  the severity as a CODE qualitative evaluation "Severity" (SCT 246112005), and TEXT items
  "Finding" (DCM 121071, the finding's words) and "Recommendation" (DCM 121075);
- each finding without a box (about a whole image, or about the whole study): a TEXT "Finding"
  item in the report's "Qualitative Evaluations" container (UMLS C0034375), carrying the same
  algorithm, severity, confidence and recommendation below it, and its image (INFERRED FROM,
  "Source image") when it has one;
- always, in "Qualitative Evaluations": "CAD Processing and Findings Summary" (DCM 111017), with
  or without findings, so a report of a study where nothing was found says so.

The codes: sidecar.analyses.report_codes. There is no Image Library (TID 1600): highdicom
builds its entries from attributes an image header may lack (a CR's Patient Orientation), and
the regions' own references are what OHIF finds the images by. Coordinates are 32-bit floats
(SCOORD Graphic Data, VR FL): whole and half pixels, which analyzers give, read back exactly.

What makes OHIF (v3.12, extension cornerstone-dicom-sr, read in the viewer's own bundle) show
the box: it takes Basic Text, Enhanced, Comprehensive and Comprehensive 3D SR series; it treats
the document as a measurement report when the document title's code value is 126000 (Imaging
Measurement Report); it reads the groups named 125007 (Measurement Group) in the container named
126010 (Imaging Measurements), keyed by their Tracking Unique Identifier (112040) and labelled by
their Tracking Identifier (112039): a group without either breaks its loading. A group with a
SCOORD at its top level (POINT, MULTIPOINT, POLYLINE, CIRCLE or ELLIPSE) is drawn on the image
its SELECTED FROM reference names (Referenced SOP Instance UID and frame) once that image's
series is loaded, with its NUM items as the box's text ("Certainty of Finding: 0.93 {ratio}").
A group with no SCOORD at all has no coordinates: OHIF 3.12 then fails while placing the groups
(it reads coords[0] of each), and draws no box at all (seen in headless OHIF, with such a group
before the boxed one and after it). This is why findings without a box stay out of "Imaging
Measurements", in "Qualitative Evaluations", which OHIF does not read. An SR without any box
has no measurement for OHIF's SR viewport to open on; OHIF shows no overlay for it, as there is
none to show.

OHIF reads the content tree from the DICOMweb series metadata; Orthanc's DICOMweb 1.7 in
`Extrapolate` mode (orthanc/orthanc.json) reports no sequences there, so OHIF would list the
report's series and draw nothing: both viewer fronts answer a report's series metadata whole
themselves (sidecar.viewer.series_metadata; tests/analyses/test_structured_report.py opens a
report in headless OHIF through each).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import numpy as np
from highdicom import UID
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageContentItem,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    Measurement,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from sidecar.analyses import report_codes as c
from sidecar.analyses.findings import AnalyzerFinding, Box
from sidecar.analyses.report_reading import ReadReport, read_report

__all__ = ["ReadReport", "build_report", "read_report"]

# highdicom logs each attribute module it copies into a report at INFO, with the image's UID:
# several lines per report, none a reader of the service's log needs.
logging.getLogger("highdicom").setLevel(logging.WARNING)

DEFAULT_SERIES_NUMBER = 9000  # after the modality's series, where viewers list derived series
DEFAULT_MANUFACTURER = "Radiology integration sidecar"

# Attributes of the first image highdicom copies (Patient and General Study modules). Each is
# type 2 in every image IOD, so present, if empty; one a header lacks is written empty rather
# than failing the report.
_TYPE_2_HEADER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

_CONTAINS = RelationshipTypeValues.CONTAINS
_HAS_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES
_HAS_CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD


def build_report(
    findings: Sequence[AnalyzerFinding],
    images: Sequence[Dataset],
    *,
    analyzer_name: str,
    analyzer_version: str,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_description: str | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    institution_name: str | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """The findings as a new SR document in the images' study. `images` are the images the
    analyzer looked at, their headers being enough (pixel data is not read): the first gives
    the patient and study, all of them are the report's evidence, and each image a finding
    names must be one of them. Raises ValueError for findings that cannot be written as they
    are (a box without its image, an image that is not among `images`, a confidence outside 0 to
    1, no words) and for images of more than one study."""
    if not images:
        raise ValueError("a report needs the images it is about: none were given")
    if not analyzer_name.strip() or not analyzer_version.strip():
        raise ValueError("a report names its analyzer: analyzer_name and analyzer_version")
    study_uid = str(images[0].StudyInstanceUID)
    studies = {str(image.StudyInstanceUID) for image in images}
    if len(studies) > 1:
        raise ValueError(f"the images belong to {len(studies)} studies; a report is about one")
    known_images = {str(image.SOPInstanceUID) for image in images}
    for number, finding in enumerate(findings, start=1):
        _check(number, finding, study_uid, known_images)

    groups = [
        _measurement_group(finding, analyzer_version)
        for finding in findings
        if finding.box is not None
    ]
    evaluations = [
        _evaluation(finding, analyzer_version) for finding in findings if finding.box is None
    ]
    content = _document_content(
        groups, evaluations, analyzer_name, manufacturer, found=bool(findings)
    )
    when = now if now is not None else dt.datetime.now()
    report = ComprehensiveSR(
        evidence=[_with_type_2_header(images[0]), *images[1:]],
        content=content,
        series_instance_uid=UID(),
        series_number=series_number,
        sop_instance_uid=UID(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,  # a radiologist accepts or rejects each finding
        is_verified=False,
        institution_name=institution_name,
        series_description=series_description or f"AI results: {analyzer_name}"[:64],
        manufacturer_model_name=analyzer_name[:64],
        software_versions=analyzer_version[:64],
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        coding_schemes=[c.local_scheme_item()],
        specific_character_set="ISO_IR 192",  # findings' words in any language
    )
    return report


def _check(number: int, finding: AnalyzerFinding, study_uid: str, known: set[str]) -> None:
    where = f"finding {number} ({finding.model})"
    if not finding.finding.strip():
        raise ValueError(f"{where} has no words: a finding names what was found")
    if not 0.0 <= finding.confidence <= 1.0:
        raise ValueError(f"{where} has confidence {finding.confidence}, not between 0 and 1")
    if finding.box is not None:
        if finding.image is None:
            raise ValueError(f"{where} has a box but no image: a box is a region of an image")
        box = finding.box
        corners = (box.x, box.y, box.width, box.height)
        if not all(np.isfinite(corners)) or box.width < 0 or box.height < 0:
            raise ValueError(f"{where} has a box that is no rectangle: {box}")
    if finding.image is not None:
        if finding.image.study_instance_uid != study_uid:
            raise ValueError(f"{where} is about an image of another study")
        if finding.image.sop_instance_uid not in known:
            raise ValueError(f"{where} is about an image that is not among the report's images")
        if finding.image.frame is not None and finding.image.frame < 1:
            raise ValueError(f"{where} names frame {finding.image.frame}; frames count from 1")


def _with_type_2_header(image: Dataset) -> Dataset:
    """The first image, with any missing type 2 patient or study attribute present and empty:
    a new dataset holding the image's elements (their values, pixel data included, are not
    copied), so that the caller's image is left as it was."""
    header = Dataset()
    header.update(image)
    for keyword in _TYPE_2_HEADER:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _measurement_group(
    finding: AnalyzerFinding, analyzer_version: str
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the finding's box on its image, and what the finding says."""
    assert finding.image is not None and finding.box is not None  # checked by _check
    image = finding.image
    source = SourceImageForRegion(
        referenced_sop_class_uid=image.sop_class_uid,
        referenced_sop_instance_uid=image.sop_instance_uid,
        referenced_frame_numbers=[image.frame] if image.frame is not None else None,
    )
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=UID(), identifier=finding.finding),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=_closed_polyline(finding.box),
            source_image=source,
        ),
        algorithm_id=AlgorithmIdentification(name=finding.model, version=analyzer_version),
        measurements=[Measurement(name=c.CERTAINTY, value=float(finding.confidence), unit=c.RATIO)],
        qualitative_evaluations=[
            QualitativeEvaluation(name=c.SEVERITY, value=c.SEVERITY_CODES[finding.severity])
        ],
    )
    group[0].ContentSequence.extend(_words(finding))
    return group


def _closed_polyline(box: Box) -> np.ndarray:
    """The rectangle as five (column, row) points, the last the first again: a POLYLINE whose
    first and last points are the same is a closed region."""
    left, top = box.x, box.y
    right, bottom = box.x + box.width, box.y + box.height
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float32,
    )


def _words(finding: AnalyzerFinding) -> list[Dataset]:
    """The finding's words and recommendation, as they are (TEXT), for a measurement group."""
    items: list[Dataset] = [
        TextContentItem(name=c.FINDING, value=finding.finding, relationship_type=_CONTAINS)
    ]
    if finding.recommendation:
        items.append(
            TextContentItem(
                name=c.RECOMMENDATION,
                value=finding.recommendation,
                relationship_type=_CONTAINS,
            )
        )
    return items


def _evaluation(finding: AnalyzerFinding, analyzer_version: str) -> TextContentItem:
    """A finding without a box: its words, with what it says below them."""
    item = TextContentItem(name=c.FINDING, value=finding.finding, relationship_type=_CONTAINS)
    below = ContentSequence(
        [
            *AlgorithmIdentification(name=finding.model, version=analyzer_version),
            CodeContentItem(
                name=c.SEVERITY,
                value=c.SEVERITY_CODES[finding.severity],
                relationship_type=_HAS_PROPERTIES,
            ),
            NumContentItem(
                name=c.CERTAINTY,
                value=float(finding.confidence),
                unit=c.RATIO,
                relationship_type=_HAS_PROPERTIES,
            ),
        ]
    )
    if finding.recommendation:
        below.append(
            TextContentItem(
                name=c.RECOMMENDATION,
                value=finding.recommendation,
                relationship_type=_HAS_PROPERTIES,
            )
        )
    if finding.image is not None:
        below.append(
            ImageContentItem(
                name=c.SOURCE_IMAGE,
                referenced_sop_class_uid=finding.image.sop_class_uid,
                referenced_sop_instance_uid=finding.image.sop_instance_uid,
                referenced_frame_numbers=(
                    [finding.image.frame] if finding.image.frame is not None else None
                ),
                relationship_type=RelationshipTypeValues.INFERRED_FROM,
            )
        )
    item.ContentSequence = below
    return item


def _document_content(
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations],
    evaluations: list[TextContentItem],
    analyzer_name: str,
    manufacturer: str,
    *,
    found: bool,
) -> ContainerContentItem:
    """The TID 1500 root, built here rather than by highdicom's MeasurementReport, which
    requires at least one measurement group: TID 1500 asks for "Imaging Measurements" or
    "Qualitative Evaluations", and a report whose findings have no box has only the latter."""
    root = ContainerContentItem(name=c.MEASUREMENT_REPORT, template_id="1500")
    device = DeviceObserverIdentifyingAttributes(
        # One UID per analyzer name: the same analyzer is the same device in every report.
        uid=generate_uid(entropy_srcs=["sidecar analyzer", analyzer_name]),
        name=analyzer_name,
        manufacturer_name=manufacturer,
        model_name=analyzer_name,
    )
    content = ContentSequence(
        [
            *LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
            *ObservationContext(
                observer_device_context=ObserverContext(
                    observer_type=codes.cid270.Device,
                    observer_identifying_attributes=device,
                )
            ),
            CodeContentItem(
                name=codes.DCM.ProcedureReported,
                value=c.IMAGING_PROCEDURE,
                relationship_type=_HAS_CONCEPT_MOD,
            ),
        ]
    )
    if groups:
        measurements = ContainerContentItem(
            name=c.IMAGING_MEASUREMENTS, relationship_type=_CONTAINS
        )
        measurements.ContentSequence = ContentSequence([item for g in groups for item in g])
        content.append(measurements)
    summary = CodeContentItem(
        name=c.PROCESSING_SUMMARY,
        value=c.WITH_FINDINGS if found else c.WITHOUT_FINDINGS,
        relationship_type=_CONTAINS,
    )
    qualitative = ContainerContentItem(name=c.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS)
    qualitative.ContentSequence = ContentSequence([summary, *evaluations])
    content.append(qualitative)
    root.ContentSequence = content
    return root

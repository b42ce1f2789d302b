"""The coded concepts an AI result report is written and read with (sidecar.analyses
.structured_report writes them, .report_reading reads them back), in one place so both agree.

Concept names come from DICOM's own scheme (DCM), SNOMED CT (SCT), UMLS and UCUM, each one as
pydicom's code dictionary spells it. Severity's values are the one exception: seed 002's four
words (low, moderate, high, critical) have no standard scale that matches them (SNOMED CT's
severity values, CID 3716, are mild, moderate, severe and fatal), so they are coded in a local
scheme of this service, which the report names in its Coding Scheme Identification Sequence
(PS3.16 section 8: a local scheme's designator begins with "99").
"""

from __future__ import annotations

from typing import Final

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from sidecar.analyses.findings import Severity

# The report and its two containers (TID 1500); OHIF looks for the first two by these codes.
MEASUREMENT_REPORT: Final = codes.DCM.ImagingMeasurementReport  # DCM 126000
IMAGING_MEASUREMENTS: Final = codes.DCM.ImagingMeasurements  # DCM 126010
MEASUREMENT_GROUP: Final = codes.DCM.MeasurementGroup  # DCM 125007
QUALITATIVE_EVALUATIONS: Final = Code("C0034375", "UMLS", "Qualitative Evaluations")

# What each finding carries.
FINDING: Final = codes.DCM.Finding  # DCM 121071, the finding's words as TEXT
RECOMMENDATION: Final = codes.DCM.Recommendation  # DCM 121075, TEXT
CERTAINTY: Final = codes.DCM.CertaintyOfFinding  # DCM 111012, NUM: the confidence
RATIO: Final = codes.UCUM.Ratio  # UCUM {ratio}: confidence from 0 to 1
PERCENT: Final = codes.UCUM.Percent  # read only: a confidence some analyzers give in percent
SEVERITY: Final = Code("246112005", "SCT", "Severity")
SOURCE_IMAGE: Final = codes.DCM.SourceImage  # DCM 121324, the image of a finding without a box
TRACKING_IDENTIFIER: Final = codes.DCM.TrackingIdentifier  # DCM 112039
ALGORITHM_NAME: Final = codes.DCM.AlgorithmName  # DCM 111001 (TID 4019)
ALGORITHM_VERSION: Final = codes.DCM.AlgorithmVersion  # DCM 111003 (TID 4019)
DEVICE_OBSERVER_NAME: Final = codes.DCM.DeviceObserverName  # DCM 121013 (TID 1004)

# What the analyzer did, whether or not it found anything (CID 6047).
PROCESSING_SUMMARY: Final = codes.DCM.CADProcessingAndFindingsSummary  # DCM 111017
WITH_FINDINGS: Final = codes.DCM.AllAlgorithmsSucceededWithFindings  # DCM 111242
WITHOUT_FINDINGS: Final = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # DCM 111241

# The procedure the report is about (TID 1500 row "Procedure reported"): an analyzer looks at
# whatever imaging the study holds, so the general concept.
IMAGING_PROCEDURE: Final = codes.SCT.ImagingProcedure  # SCT 363679005

LOCAL_SCHEME: Final = "99RADSIDECAR"
SEVERITY_CODES: Final = {s: Code(s.value, LOCAL_SCHEME, s.value.capitalize()) for s in Severity}


def local_scheme_item() -> CodingSchemeIdentificationItem:
    """The local scheme's entry in a report's Coding Scheme Identification Sequence (a new
    item for each report: items are datasets, which a report may change)."""
    return CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME,
        name="Radiology integration sidecar: AI finding severity",
        responsible_organization="Radiology integration sidecar",
    )


# Severity values other analyzers may write, read as the nearest of seed 002's words.
_SEVERITY_BY_CODE: Final = {
    ("SCT", "255604002"): Severity.LOW,  # Mild
    ("SCT", "62482003"): Severity.LOW,  # Low
    ("SCT", "6736007"): Severity.MODERATE,  # Moderate
    ("SCT", "24484000"): Severity.HIGH,  # Severe
    ("SCT", "75540009"): Severity.HIGH,  # High
    ("SCT", "399166001"): Severity.CRITICAL,  # Fatal
}


def severity_of(scheme: str, value: str, meaning: str) -> Severity | None:
    """The severity a coded value names: this service's own codes, SNOMED CT's severity values,
    or a meaning that is one of seed 002's words; None when it names none of them."""
    if scheme == LOCAL_SCHEME:
        try:
            return Severity(value)
        except ValueError:
            return None
    known = _SEVERITY_BY_CODE.get((scheme, value))
    if known is not None:
        return known
    try:
        return Severity(meaning.strip().lower())
    except ValueError:
        return None

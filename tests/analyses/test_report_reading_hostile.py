"""A report an external analyzer stored is read back before its work item completes
(sidecar.analyses.workitem_results): whatever it holds, reading it answers its findings or a
ValueError saying what is wrong (the work item's completion is then refused with 409), never
another error (a 500 to the analyzer) nor a number the database or the API's JSON cannot hold
(NaN, infinity) nor a UID longer than DICOM allows (a finding's columns hold 64 characters)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from sidecar.analyses.findings import AnalyzerFinding, Box, ImageRef, Severity
from sidecar.analyses.structured_report import build_report, read_report

pytestmark = pytest.mark.one_database


def image(study_uid: str, series_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.PatientName = "CR", "MRN-HOSTILE-1", "DOE^JANE"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20270302", "101500", "ACC-H-1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Rows, ds.Columns = 1, number, 64, 64
    return ds


@pytest.fixture
def report() -> Dataset:
    study_uid, series_uid = generate_uid(), generate_uid()
    images = [image(study_uid, series_uid, 1), image(study_uid, series_uid, 2)]
    first = images[0]
    ref = ImageRef(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=str(first.SOPInstanceUID),
        sop_class_uid=str(first.SOPClassUID),
    )
    findings = [
        AnalyzerFinding(
            model="ext",
            finding="nodule",
            confidence=0.75,
            severity=Severity.HIGH,
            recommendation="follow up",
            image=ref,
            box=Box(4, 5, 10, 12),
        )
    ]
    return build_report(findings, images, analyzer_name="ext", analyzer_version="1")


def items(dataset: Dataset) -> Iterator[Dataset]:
    for item in dataset.get("ContentSequence") or []:
        yield item
        yield from items(item)


def first(dataset: Dataset, value_type: str) -> Dataset:
    return next(item for item in items(dataset) if item.get("ValueType") == value_type)


def nan_certainty(report: Dataset) -> None:
    for item in items(report):
        for value in item.get("MeasuredValueSequence") or []:
            value.FloatingPointValue = float("nan")


def infinite_box(report: Dataset) -> None:
    region = first(report, "SCOORD")
    region.GraphicData = [float("inf")] * len(region.GraphicData)


def region_without_points(report: Dataset) -> None:
    del first(report, "SCOORD").GraphicData


def region_without_value_type(report: Dataset) -> None:
    del first(report, "SCOORD").ValueType


def image_without_reference(report: Dataset) -> None:
    del first(report, "IMAGE").ReferencedSOPSequence


def empty_severity(report: Dataset) -> None:
    for item in items(report):
        if item.get("ValueType") == "CODE" and "ConceptCodeSequence" in item:
            item.ConceptCodeSequence = []


def certainty_without_number(report: Dataset) -> None:
    for item in items(report):
        for value in item.get("MeasuredValueSequence") or []:
            for keyword in ("FloatingPointValue", "NumericValue"):
                if keyword in value:
                    delattr(value, keyword)


def evidence_without_study(report: Dataset) -> None:
    del report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID


def overlong_series_uid(report: Dataset) -> None:
    for study in report.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            series.SeriesInstanceUID = "1." + "2" * 200


def frame_zero(report: Dataset) -> None:
    first(report, "IMAGE").ReferencedSOPSequence[0].ReferencedFrameNumber = 0


@pytest.mark.parametrize(
    "spoil",
    [
        nan_certainty,
        infinite_box,
        region_without_points,
        region_without_value_type,
        image_without_reference,
        empty_severity,
        certainty_without_number,
        evidence_without_study,
        overlong_series_uid,
        frame_zero,
    ],
)
def test_a_malformed_report_is_refused_with_a_reason(
    report: Dataset, spoil: Callable[[Dataset], None]
) -> None:
    assert read_report(copy.deepcopy(report)).findings  # as written, it reads
    spoil(report)
    with pytest.raises(ValueError) as refused:
        read_report(report)
    assert str(refused.value)
    assert "DOE" not in str(refused.value) and "MRN" not in str(refused.value)

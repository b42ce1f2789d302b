"""The built-in `quality` analyzer on generated images (tests/support/quality_images.py): each
check finds the defect it is for and stays quiet on clean images with the hard cases a naive
check flags; the images stream through once and are not kept; instances without pixels are
passed over; MONOCHROME1, signed and odd bit depths are read as stored. No database, no
Orthanc: the analyzer is pure logic over pydicom datasets.
"""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from sidecar.analyses.findings import AnalysisError, Analyzer, AnalyzerFinding, Severity
from sidecar.analyses.quality import CHECK_UNREADABLE, CHECKS, QualityAnalyzer
from sidecar.analyses.quality_order import body_parts_contradict, modality_contradicts

from quality_images import (
    CHECK_BLANK,
    CHECK_BODY_PART,
    CHECK_CLIPPED,
    CHECK_COUNT,
    CHECK_DUPLICATE,
    CHECK_EXPOSURE,
    CHECK_MODALITY,
    Case,
    ImageFactory,
    StudyBuilder,
)

pytestmark = pytest.mark.one_database


def analyze(case: Case) -> list[AnalyzerFinding]:
    return QualityAnalyzer().analyze(case.images, case.context)


def study(seed: int, modality: str | None = "CR", body_part: str | None = "CHEST") -> StudyBuilder:
    return ImageFactory(seed).study("test", ordered_modality=modality, ordered_body_part=body_part)


def only(findings: list[AnalyzerFinding], check: str) -> AnalyzerFinding:
    matching = [f for f in findings if f.finding == check]
    assert len(matching) == 1, findings
    return matching[0]


def test_the_analyzer_is_an_analyzer_named_quality() -> None:
    analyzer: Analyzer = QualityAnalyzer()
    assert analyzer.name == "quality"
    assert analyzer.version


# --- clean studies ---------------------------------------------------------------------------


def clean_chests(builder: StudyBuilder) -> None:
    builder.chest()
    builder.chest(dark_background=True, collimation=True)
    builder.chest(dark_background=True, collimation="oblique", monochrome1=True)
    builder.chest(dense_bone=True, dark_background=True)
    builder.chest(bits=10, signed=True, dark_background=True)
    builder.chest(bits=15, deviation_index=-3.0)
    builder.chest(bits=16, deviation_index=3.0, modality="DX")


def clean_hands(builder: StudyBuilder) -> None:
    builder.hand()
    builder.hand(monochrome1=True, bits=14)


def clean_mammograms(builder: StudyBuilder) -> None:
    for view, extent in enumerate((0.35, 0.5, 0.65, 0.8)):
        builder.mammogram(extent=extent, mlo=view >= 2, right=view % 2 == 1, bits=14)


def clean_cts(builder: StudyBuilder) -> None:
    builder.ct_series(3, storage="unsigned12", region="chest")
    builder.ct_series(3, storage="signed16", region="chest", metal=True)
    builder.ct_series(3, storage="signed12", region="chest", metal=True, series="bone")
    builder.structured_report()
    builder.screen_capture()


@pytest.mark.parametrize(
    ("fill", "modality", "body_part"),
    [
        (clean_chests, "CR", "Chest PA"),
        (clean_hands, "DX", "Left hand"),
        (clean_mammograms, "MG", "BREAST"),
        (clean_cts, "CT", "THORAX"),
        (clean_cts, "PT", "WHOLEBODY"),
        (clean_chests, None, None),
    ],
)
def test_clean_studies_raise_no_finding(
    fill: Callable[[StudyBuilder], None], modality: str | None, body_part: str | None
) -> None:
    builder = study(1, modality, body_part)
    fill(builder)
    case = builder.case(performed=sum(1 for ds in builder.images if "PixelData" in ds))
    assert analyze(case) == []


# --- blank or uniform ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "confidence"),
    [
        ({"level": 0.0}, 1.0),
        ({"level": 0.6, "bits": 10}, 1.0),
        ({"noise": 0.002}, 0.9),
        ({"noise": 0.02, "bits": 16}, 0.9),
        ({"noise": 0.003, "marker": True, "window": True}, 0.9),
    ],
)
def test_a_blank_image_is_found(options: dict[str, object], confidence: float) -> None:
    builder = study(2)
    builder.chest()
    blank = builder.blank(**options)  # type: ignore[arg-type]
    finding = only(analyze(builder.case()), CHECK_BLANK)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == blank.SOPInstanceUID
    assert finding.image.series_instance_uid == blank.SeriesInstanceUID
    assert finding.image.study_instance_uid == blank.StudyInstanceUID
    assert finding.image.sop_class_uid == blank.SOPClassUID
    assert (finding.confidence, finding.severity, finding.box) == (
        confidence,
        Severity.MODERATE,
        None,
    )
    assert finding.model == "quality"


def repaint(ds: Dataset, pixels: NDArray[Any]) -> Dataset:
    """`ds` with `pixels` in place of its pixel data, stored as before."""
    ds.PixelData = pixels.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    return ds


def test_a_failed_exposure_inside_a_shutter_is_blank() -> None:
    builder = study(24)
    blank = builder.blank(level=0.02, noise=0.002)
    pixels = blank.pixel_array.copy()
    pixels[:30], pixels[-20:], pixels[:, :25], pixels[:, -30:] = 4095, 4095, 4095, 4095
    repaint(blank, pixels)
    assert only(analyze(builder.case()), CHECK_BLANK)


def test_a_ct_reconstruction_with_nothing_in_it_is_blank_inside_its_padding() -> None:
    builder = study(25, "CT", "HEAD")
    rng = np.random.default_rng(25)
    hu = rng.normal(-1000.0, 12.0, (128, 128))
    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    builder.ct_image(hu, x * x + y * y <= 0.98, storage="signed16", body_part="HEAD")
    assert only(analyze(builder.case()), CHECK_BLANK)


def test_identical_blank_images_are_blank_not_duplicates() -> None:
    builder = study(3)
    builder.blank(level=0.0)
    builder.blank(level=0.0)
    findings = analyze(builder.case())
    assert [f.finding for f in findings] == [CHECK_BLANK, CHECK_BLANK]


def test_one_blank_frame_of_a_multi_frame_image_is_named() -> None:
    builder = study(4, "XA", "CHEST")
    rng = np.random.default_rng(4)
    clean = builder.chest().pixel_array.astype(np.int64)
    builder.images.clear()
    flat = np.full_like(clean, 300) + rng.integers(0, 3, clean.shape)
    cine = builder.cine([clean, flat, clean])
    finding = only(analyze(builder.case()), CHECK_BLANK)
    assert finding.image is not None
    assert (finding.image.sop_instance_uid, finding.image.frame) == (cine.SOPInstanceUID, 2)
    all_blank = study(5, "XA", "CHEST")
    all_blank.cine([flat, flat])
    finding = only(analyze(all_blank.case()), CHECK_BLANK)
    assert finding.image is not None and finding.image.frame is None


# --- clipped ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"clip": 0.5},
        {"clip": 0.4, "dark_background": True, "collimation": True},
        {"clip": 0.5, "monochrome1": True},  # burnt out at the stored maximum
        {"clip": 0.5, "signed": True, "bits": 12},
        {"clip": 0.5, "bits": 10},
        {"clip": 0.5, "bits": 14, "monochrome1": True, "collimation": "oblique"},
        {"clip": 0.5, "bits": 15},
        {"stretch": 4.0},
    ],
)
def test_burnt_out_lungs_are_clipped(options: dict[str, object]) -> None:
    builder = study(6)
    builder.chest(dark_background=True)
    clipped = builder.chest(**options)  # type: ignore[arg-type]
    finding = only(analyze(builder.case()), CHECK_CLIPPED)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == clipped.SOPInstanceUID
    assert finding.severity == Severity.MODERATE
    assert 0.6 <= finding.confidence <= 0.95
    box = finding.box
    assert box is not None  # around the lungs: inside the image, off its edges
    assert box.x > 0 and box.x + box.width < clipped.Columns
    assert box.y > 0 and box.y + box.height < clipped.Rows
    assert box.width * box.height > 0.1 * clipped.Rows * clipped.Columns


def test_saturated_dense_breast_tissue_is_clipped() -> None:
    builder = study(7, "MG", "BREAST")
    builder.mammogram(extent=0.5)
    clipped = builder.mammogram(extent=0.7, clip=(0.5, "maximum"))
    finding = only(analyze(builder.case()), CHECK_CLIPPED)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == clipped.SOPInstanceUID


def test_a_plateau_below_the_stored_maximum_is_not_clipping() -> None:
    """The same burnt-out pixels declared in 16 bits: 4095 is no limit there."""
    builder = study(8)
    clipped = builder.chest(clip=0.5, monochrome1=True)
    assert only(analyze(builder.case()), CHECK_CLIPPED)
    wider = copy.deepcopy(clipped)
    wider.BitsStored, wider.HighBit = 16, 15
    unclipped = study(9)
    unclipped.images.append(wider)
    assert analyze(unclipped.case()) == []


def test_an_image_almost_all_at_one_limit_is_clipped_wherever_the_plateau_lies() -> None:
    """Only the top rows still show anything: no silhouette surrounds the plateau, but no
    background covers nearly all of an image either."""
    builder = study(26)
    image = builder.chest()
    pixels = image.pixel_array.copy()
    pixels[14:] = 0
    repaint(image, pixels)
    finding = only(analyze(builder.case()), CHECK_CLIPPED)
    assert finding.box is None


def test_ct_air_and_padding_at_the_stored_minimum_are_not_clipping() -> None:
    builder = study(10, "CT", "CHEST")
    slices = builder.ct_series(2, storage="unsigned12")
    for ds in slices:  # air clamped at -1024 HU, stored 0, padding 0 outside the field of view
        pixels = ds.pixel_array.copy()
        pixels[pixels < 200] = 0
        repaint(ds, pixels)
        del ds.PixelPaddingValue
    assert analyze(builder.case()) == []


# --- exposure deviation index ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("deviation", "severity"),
    [(-3.5, Severity.MODERATE), (-6.0, Severity.MODERATE), (3.1, Severity.LOW), (5, Severity.LOW)],
)
def test_a_deviation_index_beyond_3_is_found(deviation: float, severity: Severity) -> None:
    builder = study(11)
    builder.chest(deviation_index=1.0)
    image = builder.chest(deviation_index=deviation)
    finding = only(analyze(builder.case()), CHECK_EXPOSURE)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == image.SOPInstanceUID
    assert (finding.confidence, finding.severity, finding.box) == (1.0, severity, None)


def test_an_under_exposed_noisy_image_is_neither_blank_nor_clipped() -> None:
    builder = study(27)
    builder.chest(deviation_index=-6.0, dark_background=True)  # four times the dose's noise
    builder.chest(deviation_index=-6.0, bits=16)
    assert [f.finding for f in analyze(builder.case())] == [CHECK_EXPOSURE, CHECK_EXPOSURE]


def test_a_deviation_index_within_3_absent_or_unreadable_is_no_finding() -> None:
    builder = study(12)
    for deviation in (-3.0, 3.0, 2.99, None):
        builder.chest(deviation_index=deviation)
    unreadable = builder.chest(deviation_index=None)
    unreadable.add_new("DeviationIndex", "DS", None)
    assert analyze(builder.case()) == []


# --- duplicates ------------------------------------------------------------------------------


def test_a_copy_under_another_uid_is_a_duplicate_on_the_later_image() -> None:
    builder = study(13)
    first = builder.chest()
    builder.chest()
    same_series = builder.copy_of(first)
    other_series = builder.copy_of(first, new_series=True)
    findings = [f for f in analyze(builder.case()) if f.finding == CHECK_DUPLICATE]
    assert [f.image.sop_instance_uid for f in findings if f.image] == [
        same_series.SOPInstanceUID,
        other_series.SOPInstanceUID,
    ]
    for finding in findings:
        assert "image 1 of series 1" in finding.recommendation
        for identifying in (first.PatientName, first.PatientID, first.AccessionNumber):
            assert str(identifying) not in finding.recommendation
        assert (finding.confidence, finding.severity) == (1.0, Severity.MODERATE)


def test_the_same_instance_twice_or_a_repeat_exposure_is_no_duplicate() -> None:
    builder = study(14)
    first = builder.chest()
    builder.images.append(first)  # delivered twice: one instance
    near = copy.deepcopy(first)  # the same view, one pixel different
    pixels = near.pixel_array.copy()
    pixels[100, 100] += 1
    repaint(near, pixels)
    near.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    builder.images.append(near)
    assert analyze(builder.case(performed=2)) == []


# --- the order -------------------------------------------------------------------------------


def test_images_of_another_modality_are_reported_once() -> None:
    builder = study(15, "MR", "CHEST")
    slices = builder.ct_series(4)
    finding = only(analyze(builder.case()), CHECK_MODALITY)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == slices[0].SOPInstanceUID
    assert (finding.confidence, finding.severity) == (1.0, Severity.HIGH)


def test_images_of_another_body_part_are_reported_once() -> None:
    builder = study(16, "CT", "HEAD")
    slices = builder.ct_series(4, region="chest")
    finding = only(analyze(builder.case()), CHECK_BODY_PART)
    assert finding.image is not None
    assert finding.image.sop_instance_uid == slices[0].SOPInstanceUID
    assert (finding.confidence, finding.severity) == (0.9, Severity.HIGH)


@pytest.mark.parametrize(
    ("image", "ordered", "contradicts"),
    [
        ("CT", "MR", True),
        ("CT", "mri", True),
        ("CR", "US", True),
        ("MG", "CR", True),
        ("CR", "DX", False),
        ("DX", "XR", False),
        ("RF", "XA", False),
        ("CT", "PT", False),
        ("CT", "NM", False),
        ("ct", "CT", False),
        ("OT", "MR", False),
        ("CT", None, False),
        (None, "CT", False),
    ],
)
def test_modality_against_the_order(
    image: str | None, ordered: str | None, contradicts: bool
) -> None:
    assert modality_contradicts(image, ordered) is contradicts


@pytest.mark.parametrize(
    ("examined", "ordered", "contradicts"),
    [
        ("CHEST", "HEAD", True),
        ("HAND", "KNEE", True),
        ("FOOT", "KNEE", True),
        ("CSPINE", "LSPINE", True),
        ("BREAST", "CHEST", True),
        ("PELVIS", "Chest", True),
        ("CHEST", "chest", False),
        ("CHEST", "THORAX", False),
        ("LUNG", "Chest PA", False),
        ("ABDOMENPELVIS", "ABDOMEN", False),
        ("CHESTABDPELVIS", "CHEST", False),
        ("TSPINE", "CHEST", False),
        ("KNEE", "LEFT KNEE", False),
        ("HAND", "UPPEREXTREMITY", False),
        ("SKULL", "BRAIN", False),
        ("CHEST", "PORTABLE", False),  # names no region: no judgement
        ("CHEST", None, False),
        (None, "CHEST", False),
        ("", "CHEST", False),
    ],
)
def test_body_part_against_the_order(
    examined: str | None, ordered: str | None, contradicts: bool
) -> None:
    assert body_parts_contradict(examined, ordered) is contradicts


# --- image count -----------------------------------------------------------------------------


def test_fewer_images_than_mpps_reported_is_a_study_finding() -> None:
    builder = study(17)
    builder.chest()
    builder.chest()
    builder.structured_report()  # not an image: does not make up for a missing one
    finding = only(analyze(builder.case(performed=3)), CHECK_COUNT)
    assert (finding.image, finding.box, finding.severity) == (None, None, Severity.MODERATE)
    assert finding.recommendation == "Check the acquisition; repeat or resend the missing images."
    for performed in (2, 1, None):
        assert analyze(builder.case(performed=performed)) == []


def test_a_study_whose_images_never_came_reports_them_missing() -> None:
    builder = study(18)
    builder.structured_report()
    assert [f.finding for f in analyze(builder.case(performed=2))] == [CHECK_COUNT]
    with pytest.raises(AnalysisError, match="no images"):
        analyze(builder.case())


# --- streaming, non-images, undecodable pixels -----------------------------------------------


def test_images_stream_through_once_and_are_not_kept() -> None:
    """Each image is let go before the one after the next arrives (the loop's own variable
    holds the last one until the next is in)."""
    builder = study(19)
    builder.chest()
    builder.chest(dark_background=True)
    builder.blank()
    builder.chest(collimation=True)
    case = builder.case()
    builder.images.clear()
    seen: list[weakref.ref[Dataset]] = []

    def arriving() -> Iterator[Dataset]:
        while case.images:
            gc.collect()
            assert all(ref() is None for ref in seen[:-1])
            ds = case.images.pop(0)
            seen.append(weakref.ref(ds))
            yield ds

    findings = QualityAnalyzer().analyze(arriving(), case.context)
    assert [f.finding for f in findings] == [CHECK_BLANK]
    assert len(seen) == 4


def test_instances_without_pixel_data_are_passed_over() -> None:
    builder = study(20)
    builder.chest()
    report = builder.structured_report()
    for keyword in ("ContentSequence", "ReferencedSOPSequence"):
        report.add_new(keyword, "SQ", [])
    builder.structured_report().Modality = "KO"
    builder.structured_report().Modality = "PR"
    assert analyze(builder.case(performed=1)) == []


def undecodable(ds: Dataset) -> Dataset:
    """`ds` as a JPEG Lossless image whose one fragment is not JPEG at all."""
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_an_undecodable_image_is_noted_and_its_header_still_checked() -> None:
    builder = study(21)
    builder.chest()
    builder.chest()
    broken = undecodable(builder.chest(deviation_index=-5.0))
    findings = analyze(builder.case(performed=3))
    assert [f.finding for f in findings] == [CHECK_EXPOSURE, CHECK_UNREADABLE]
    assert findings[0].image is not None
    assert findings[0].image.sop_instance_uid == broken.SOPInstanceUID
    note = findings[1]
    assert (note.image, note.severity, note.confidence) == (None, Severity.LOW, 1.0)
    assert "1 of 3 images" in note.recommendation
    assert "JPEG Lossless" in note.recommendation


def test_a_study_none_of_whose_images_decodes_fails() -> None:
    builder = study(22)
    undecodable(builder.chest())
    undecodable(builder.chest())
    with pytest.raises(AnalysisError, match=r"none of the study's 2 images could be decoded"):
        analyze(builder.case())


def test_every_finding_names_its_check() -> None:
    builder = study(23, "MR", "HEAD")
    first = builder.chest(deviation_index=4.0)
    builder.blank()
    builder.chest(clip=0.6)
    builder.copy_of(first)
    findings = analyze(builder.case(missing=1))
    assert {f.finding for f in findings} == set(CHECKS)
    assert all(f.severity != Severity.CRITICAL for f in findings)

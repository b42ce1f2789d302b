"""Operator-supplied ONNX models: registered from their manifests, refused when their file is
not the one the manifest's checksum names or their graph not the one it describes, and run on
real DICOM images (written and read back with pydicom) within their intended use only.

The models are tiny graphs built by the tests (tests/support/onnx_graphs.py) whose scores can
be computed by hand from the pixels, so every number asserted here is the one expected."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from sidecar.analyses.findings import (
    AnalysisError,
    Analyzer,
    Box,
    ImageRef,
    Severity,
    StudyContext,
)
from sidecar.analyses.onnx_models import (
    ModelDirectoryError,
    ModelUnavailable,
    OutsideIntendedUse,
    load_catalog,
    load_models,
    model_catalog,
)
from sidecar.core.settings import Settings

from dicom_factory import make_study
from onnx_graphs import (
    CLASSIFIER_MANIFEST,
    DETECTOR_MANIFEST,
    brightness_score,
    classifier,
    detector,
    install,
    radiograph,
    share,
)

pytestmark = pytest.mark.one_database

CONTEXT = StudyContext(study_instance_uid="1.2.3")


def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_every_manifest_of_the_directory_registers_its_model_under_its_name(
    tmp_path: Path,
) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST, version="2.1")
    install(models_dir(tmp_path), detector([[0, 0, 1, 1]]), DETECTOR_MANIFEST)

    models = load_models(models_dir(tmp_path))

    assert sorted(models) == ["brightness", "finder"]
    analyzer: Analyzer = models["brightness"]
    assert (analyzer.name, analyzer.version) == ("brightness", "2.1")
    catalog = model_catalog(Settings(ai_models_dir=models_dir(tmp_path)))
    assert sorted(catalog.analyzers) == ["brightness", "finder"]
    assert catalog.refused == {}


def test_without_a_models_directory_there_is_no_model_and_a_missing_one_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, classifier(), CLASSIFIER_MANIFEST)  # not to be found: no directory is set
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AI_MODELS_DIR", "")  # as compose passes a variable left unset
    assert model_catalog(Settings()).analyzers == {}
    with pytest.raises(ModelUnavailable, match="no model is registered as brightness"):
        model_catalog(Settings()).get("brightness")
    with pytest.raises(ModelDirectoryError, match="is not a directory"):
        load_catalog(tmp_path / "nowhere")


def test_a_bright_image_is_reported_with_the_labels_words_on_that_image(tmp_path: Path) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    bright = radiograph(tmp_path, share(0.75))
    dark = radiograph(tmp_path, share(0.25))  # "dark" has no threshold: never reported

    findings = load_models(models_dir(tmp_path))["brightness"].analyze([bright, dark], CONTEXT)

    assert len(findings) == 1
    found = findings[0]
    assert (found.model, found.finding, found.severity, found.recommendation) == (
        "brightness",
        "Bright image",
        Severity.MODERATE,
        "Check the exposure",
    )
    assert found.confidence == pytest.approx(brightness_score(0.75), abs=1e-5)
    assert found.box is None
    assert found.image == ImageRef(
        study_instance_uid=bright.StudyInstanceUID,
        series_instance_uid=bright.SeriesInstanceUID,
        sop_instance_uid=bright.SOPInstanceUID,
        sop_class_uid=bright.SOPClassUID,
    )


@pytest.mark.parametrize(
    ("fraction", "severity"),
    [
        (0.90625, Severity.CRITICAL),  # score 0.9997: at or above the critical threshold 0.999
        (0.75, Severity.MODERATE),  # 0.9933: reported, at the label's own severity
        (0.53125, Severity.MODERATE),  # 0.6514: just above the report threshold 0.5
        (0.46875, None),  # 0.3486: below it, not reported
    ],
)
def test_thresholds_decide_what_is_reported_and_what_is_critical(
    tmp_path: Path, fraction: float, severity: Severity | None
) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    image = radiograph(tmp_path, share(fraction))

    findings = load_models(models_dir(tmp_path))["brightness"].analyze([image], CONTEXT)

    assert [f.severity for f in findings] == ([severity] if severity else [])
    for found in findings:
        assert found.confidence == pytest.approx(brightness_score(fraction), abs=1e-5)


def test_monochrome1_is_inverted_unless_the_manifest_says_not_to(tmp_path: Path) -> None:
    # Mostly low stored values: shown white in MONOCHROME1, so bright to a model trained on
    # MONOCHROME2 images.
    pixels = share(0.25)
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    inverted = load_models(models_dir(tmp_path))["brightness"]
    as_stored = {**CLASSIFIER_MANIFEST["input"], "invertMonochrome1": False}
    install(tmp_path / "raw", classifier(), CLASSIFIER_MANIFEST, input=as_stored)
    not_inverted = load_models(tmp_path / "raw")["brightness"]
    image = radiograph(tmp_path, pixels, photometric="MONOCHROME1")

    [found] = inverted.analyze([image], CONTEXT)
    assert found.confidence == pytest.approx(brightness_score(0.75), abs=1e-5)
    assert not_inverted.analyze([image], CONTEXT) == []


def test_the_window_applies_to_modality_values_after_the_rescale(tmp_path: Path) -> None:
    # CT stored values with intercept -1024: 1264 is +240 HU (at the top of a 40/400 window,
    # so 1), 1024 is 0 HU ((0 - (40 - 0.5 - 199.5)) / 399 of the way up).
    pixels = np.full((64, 64), 1024, dtype=np.uint16)
    pixels[:48] = 1264
    image = radiograph(tmp_path, pixels, modality="CT", rescale=(1.0, -1024.0))
    spec = {
        **CLASSIFIER_MANIFEST["input"],
        "window": {"center": 40, "width": 400},
        "normalisation": "none",
    }
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST, input=spec, modalities=["CT"])

    [found] = load_models(models_dir(tmp_path))["brightness"].analyze([image], CONTEXT)

    mean = 0.75 * 1.0 + 0.25 * (160 / 399)
    assert found.confidence == pytest.approx(brightness_score(mean), abs=1e-5)


def test_a_channels_last_three_channel_model_gets_the_grey_image_in_each_channel(
    tmp_path: Path,
) -> None:
    install(
        models_dir(tmp_path),
        classifier(shape=[1, 32, 32, 3]),
        CLASSIFIER_MANIFEST,
        input={**CLASSIFIER_MANIFEST["input"], "layout": "NHWC", "shape": [1, 32, 32, 3]},
    )
    [found] = load_models(models_dir(tmp_path))["brightness"].analyze(
        [radiograph(tmp_path, share(0.625))], CONTEXT
    )
    assert found.confidence == pytest.approx(brightness_score(0.625), abs=1e-5)


def test_each_frame_of_a_multi_frame_image_is_scored_on_its_own(tmp_path: Path) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    image = radiograph(tmp_path, np.stack([share(0.25), share(0.75), share(0.25)]))

    findings = load_models(models_dir(tmp_path))["brightness"].analyze([image], CONTEXT)

    assert [f.image.frame for f in findings if f.image] == [2]


BOX_CASES = {
    "fractions, corners": ({"coordinates": "normalised"}, [0.25, 0.5, 0.75, 1.0]),
    "input pixels, corners": ({"coordinates": "input"}, [8, 16, 24, 32]),
    "input pixels, width": ({"coordinates": "input", "boxFormat": "xywh"}, [8, 16, 16, 16]),
}


@pytest.mark.parametrize(("detector_spec", "box"), BOX_CASES.values(), ids=BOX_CASES.keys())
def test_a_box_is_mapped_back_onto_the_image_it_was_found_on(
    tmp_path: Path, detector_spec: dict[str, str], box: list[float]
) -> None:
    # A 128 x 256 image resized to the model's 32 x 32: a quarter to three quarters across,
    # the lower half down, is columns 64 to 192 and rows 64 to 128 of the image.
    spec = {**DETECTOR_MANIFEST["detector"], **detector_spec}
    install(models_dir(tmp_path), detector([box]), DETECTOR_MANIFEST, detector=spec)
    image = radiograph(tmp_path, share(0.75, rows=128, columns=256))

    [found] = load_models(models_dir(tmp_path))["finder"].analyze([image], CONTEXT)

    assert found.box == Box(x=64.0, y=64.0, width=128.0, height=64.0)
    assert found.confidence == pytest.approx(0.75, abs=1e-5)
    assert found.image is not None and found.image.sop_instance_uid == image.SOPInstanceUID


def test_a_box_is_kept_within_the_image_and_one_wholly_outside_is_dropped(
    tmp_path: Path,
) -> None:
    boxes = [[0.5, 0.5, 1.5, 1.2], [1.1, 1.1, 1.5, 1.5]]
    manifest = {**DETECTOR_MANIFEST, "thresholds": {"bright": {"report": 0.1}}}
    install(models_dir(tmp_path), detector(boxes), manifest)
    image = radiograph(tmp_path, share(0.75, rows=100, columns=200))

    findings = load_models(models_dir(tmp_path))["finder"].analyze([image], CONTEXT)

    assert [f.box for f in findings] == [Box(x=100.0, y=50.0, width=100.0, height=50.0)]


def test_a_detector_reports_its_strongest_boxes_up_to_its_limit(tmp_path: Path) -> None:
    # Box 0 ("bright") scores the mean, box 1 ("dark") one minus it.
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    install(models_dir(tmp_path), detector(boxes), DETECTOR_MANIFEST)
    install(
        tmp_path / "one",
        detector(boxes),
        DETECTOR_MANIFEST,
        detector={**DETECTOR_MANIFEST["detector"], "maxDetections": 1},
        thresholds={"bright": {"report": 0.1}, "dark": {"report": 0.1}},
    )
    dark = radiograph(tmp_path, share(0.25))

    [found] = load_models(models_dir(tmp_path))["finder"].analyze([dark], CONTEXT)
    assert (found.finding, found.severity, found.box) == (
        "Dark image",
        Severity.LOW,
        Box(x=32.0, y=32.0, width=32.0, height=32.0),
    )
    assert found.confidence == pytest.approx(0.75, abs=1e-5)
    limited = load_models(tmp_path / "one")["finder"].analyze([dark], CONTEXT)
    assert [f.finding for f in limited] == ["Dark image"]


def test_images_outside_the_intended_use_are_skipped_not_scored(tmp_path: Path) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    model = load_models(models_dir(tmp_path))["brightness"]
    pixels = share(0.75)
    chest = radiograph(tmp_path, pixels)
    abdomen = radiograph(tmp_path, pixels, body_part="ABDOMEN")
    unstated = radiograph(tmp_path, pixels, body_part=None)
    ct = dcmread(make_study(tmp_path / "ct", series_count=1, instances_per_series=1).files[0])
    study = [chest, abdomen, unstated, ct]

    scored = model.analyze(study, CONTEXT)
    assert [f.image.sop_instance_uid for f in scored if f.image] == [chest.SOPInstanceUID]

    # A body part nobody stated on the image is the order's.
    chest_order = StudyContext(study_instance_uid="1.2.3", ordered_body_part="CHEST")
    scored = model.analyze(study, chest_order)
    assert [f.image.sop_instance_uid for f in scored if f.image] == [
        chest.SOPInstanceUID,
        unstated.SOPInstanceUID,
    ]


def test_a_study_with_no_image_the_model_is_for_fails_rather_than_reads_as_normal(
    tmp_path: Path,
) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    model = load_models(models_dir(tmp_path))["brightness"]
    ct = make_study(tmp_path / "ct", series_count=1, instances_per_series=2)

    with pytest.raises(
        OutsideIntendedUse,
        match=r"brightness is for CR/DX CHEST images, and this study has none \(2 images skipped\)",
    ):
        model.analyze([dcmread(path) for path in ct.files], CONTEXT)


def test_a_model_giving_scores_outside_0_to_1_fails_the_analysis_saying_so(
    tmp_path: Path,
) -> None:
    logits = {**CLASSIFIER_MANIFEST["classifier"], "activation": "none"}
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST, classifier=logits)
    model = load_models(models_dir(tmp_path))["brightness"]

    with pytest.raises(AnalysisError, match=r"scores outside 0 to 1.*activation"):
        model.analyze([radiograph(tmp_path, share(0.75))], CONTEXT)


def test_a_model_whose_file_is_not_its_manifests_checksum_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = models_dir(tmp_path)
    install(directory, detector([[0, 0, 1, 1]]), DETECTOR_MANIFEST)
    manifest = install(directory, classifier(), CLASSIFIER_MANIFEST)
    swapped = classifier(shape=[1, 1, 32, 32])  # a model that would run, but another one
    (directory / "brightness.onnx").write_bytes(swapped)

    with caplog.at_level(logging.ERROR, logger="sidecar.analyses.onnx_models"):
        catalog = load_catalog(directory)

    assert sorted(catalog.analyzers) == ["finder"]  # the others are still there
    reason = catalog.refused["brightness"]
    assert hashlib.sha256(swapped).hexdigest()[:12] in reason
    assert manifest["sha256"][:12] in reason
    with pytest.raises(ModelUnavailable, match="model brightness is not available: its file"):
        catalog.get("brightness")
    assert any("brightness refused" in r.getMessage() for r in caplog.records)


def test_a_model_without_its_file_is_refused(tmp_path: Path) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST)
    (models_dir(tmp_path) / "brightness.onnx").unlink()

    catalog = load_catalog(models_dir(tmp_path))

    assert catalog.analyzers == {}
    assert "its file brightness.onnx cannot be read" in catalog.refused["brightness"]


GRAPH_MISMATCHES = {
    "input name": (classifier(input_name="pixels"), {}, "has no input image (its inputs: pixels)"),
    "input size": (classifier(shape=[1, 1, 64, 64]), {}, "has shape [1, 1, 64, 64]"),
    "layout": (
        classifier(),
        {"input": {"name": "image", "layout": "NHWC", "shape": [1, 32, 32, 1]}},
        "the manifest's is [1, 32, 32, 1] (NHWC)",
    ),
    "output": (classifier(output="logits"), {}, "has no output scores (its outputs: logits)"),
    "labels": (
        classifier(),
        {"labels": CLASSIFIER_MANIFEST["labels"][:1], "thresholds": {"bright": {"report": 0.5}}},
        "gives 2 scores, the manifest has 1 labels",
    ),
    "not ONNX": (b"not a model", {}, "ONNX Runtime cannot load brightness.onnx"),
}


@pytest.mark.parametrize(
    ("model", "changes", "reason"), GRAPH_MISMATCHES.values(), ids=GRAPH_MISMATCHES.keys()
)
def test_a_graph_that_is_not_what_its_manifest_describes_is_refused(
    tmp_path: Path, model: bytes, changes: dict[str, object], reason: str
) -> None:
    install(models_dir(tmp_path), model, CLASSIFIER_MANIFEST, **changes)

    catalog = load_catalog(models_dir(tmp_path))

    assert catalog.analyzers == {}
    assert reason in catalog.refused["brightness"]


def test_two_manifests_naming_one_model_both_refuse_it(tmp_path: Path) -> None:
    directory = models_dir(tmp_path)
    install(directory, classifier(), CLASSIFIER_MANIFEST)
    copy = json.loads((directory / "brightness.json").read_text())
    (directory / "brightness-copy.json").write_text(json.dumps(copy))

    catalog = load_catalog(directory)

    assert catalog.analyzers == {}
    assert "brightness-copy.json, brightness.json all name it" in catalog.refused["brightness"]


def test_a_manifest_that_is_not_valid_refuses_its_model_naming_the_field(tmp_path: Path) -> None:
    install(models_dir(tmp_path), classifier(), CLASSIFIER_MANIFEST, treshold=0.5)

    catalog = load_catalog(models_dir(tmp_path))

    with pytest.raises(ModelUnavailable, match="treshold: Extra inputs are not permitted"):
        catalog.get("brightness")

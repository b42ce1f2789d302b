"""An operator model's manifest: a valid one is read as written, and one that is not valid is
refused with a message naming the manifest file and the field (as spelt in the manifest), so
that the operator knows what to fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.analyses.findings import Severity
from sidecar.analyses.model_manifest import (
    FixedWindow,
    ManifestError,
    MeanStd,
    declared_name,
    read_manifest,
)

from onnx_graphs import CLASSIFIER_MANIFEST, DETECTOR_MANIFEST

pytestmark = pytest.mark.one_database


def write(tmp_path: Path, manifest: Any, name: str = "model.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def test_a_valid_manifest_is_read_as_written(tmp_path: Path) -> None:
    manifest = copy.deepcopy(CLASSIFIER_MANIFEST)
    manifest["input"] = {
        "name": "image",
        "layout": "NHWC",
        "shape": [1, 224, 192, 3],
        "window": {"center": -600, "width": 1500},
        "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "invertMonochrome1": False,
    }

    read = read_manifest(write(tmp_path, manifest))

    assert (read.name, read.version, read.file) == ("brightness", "1.0.0", "brightness.onnx")
    spec = read.input
    assert (spec.height, spec.width, spec.channels) == (224, 192, 3)
    assert spec.window == FixedWindow(center=-600, width=1500)
    assert isinstance(spec.normalisation, MeanStd) and spec.normalisation.std[2] == 0.225
    assert spec.invert_monochrome1 is False
    assert read.labels[0].severity is Severity.MODERATE
    assert read.label_threshold(1) == (read.labels[1], None)  # "dark": never reported
    assert (read.modalities, read.body_parts) == (["CR", "DX"], ["CHEST"])
    assert read.intended_use.startswith("Frontal chest radiographs")
    detector = read_manifest(write(tmp_path, DETECTOR_MANIFEST)).detector
    assert detector is not None
    assert (detector.box_format, detector.coordinates, detector.max_detections) == (
        "xyxy",
        "normalised",
        10,
    )


def changed(path: str, value: Any, base: dict[str, Any] = CLASSIFIER_MANIFEST) -> dict[str, Any]:
    """The manifest with the field at dotted `path` set to `value` (deleted for DELETE)."""
    manifest = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = manifest
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return manifest


DELETE = object()

INVALID = {
    "no checksum": (changed("sha256", DELETE), "sha256: Field required"),
    "short checksum": (changed("sha256", "abc123"), "sha256: String should match pattern"),
    "misspelt field": (changed("treshold", 0.5), "treshold: Extra inputs are not permitted"),
    "name not a token": (changed("name", "Chest XR"), "name: String should match pattern"),
    "built-in name": (changed("name", "quality"), "name: 'quality' is a built-in analyzer's"),
    "file with a path": (changed("file", "../model.onnx"), "file: a file name in the manifest"),
    "batch of two": (changed("input.shape", [2, 1, 32, 32]), "input.shape: the batch size"),
    "four channels": (
        changed("input.shape", [1, 4, 32, 32]),
        "input.shape: NCHW puts channels second, and they must be 1 or 3, not 4",
    ),
    "no input name": (changed("input.name", DELETE), "input.name: Field required"),
    "unknown layout": (changed("input.layout", "NCWH"), "input.layout: Input should be 'NCHW'"),
    "float64": (changed("input.dtype", "float64"), "input.dtype: Input should be 'float32'"),
    "window of a word": (changed("input.window", "lung"), "input.window: Input should be 'image'"),
    "window without width": (
        changed("input.window", {"center": 40}),
        "input.window.width: Field required",
    ),
    "mean per channel": (
        changed("input.normalisation", {"mean": [0.4, 0.5], "std": [0.2]}),
        "input.normalisation.mean: one value, or one per channel (1)",
    ),
    "zero std": (
        changed("input.normalisation", {"mean": [0.5], "std": [0]}),
        "input.normalisation.std.0: Input should be greater than 0",
    ),
    "unknown activation": (
        changed("classifier.activation", "relu"),
        "classifier.activation: Input should be 'none', 'sigmoid' or 'softmax'",
    ),
    "no outputs": (changed("classifier", DELETE), "a classifier, a detector or both"),
    "unknown severity": (
        changed("labels", [{**CLASSIFIER_MANIFEST["labels"][0], "severity": "grave"}]),
        "labels.0.severity: Input should be 'low', 'moderate', 'high' or 'critical'",
    ),
    "label twice": (
        changed("labels", CLASSIFIER_MANIFEST["labels"][:1] * 2),
        "labels: each label's name must be unique",
    ),
    "threshold of no label": (
        changed("thresholds", {"brigth": {"report": 0.5}}),
        "thresholds: brigth is not a label's name",
    ),
    "threshold above 1": (
        changed("thresholds.bright", {"report": 1.5}),
        "thresholds.bright.report: Input should be less than or equal to 1",
    ),
    "critical below report": (
        changed("thresholds.bright", {"report": 0.8, "critical": 0.6}),
        "thresholds.bright: critical must not be below report",
    ),
    "no threshold": (changed("thresholds", {}), "thresholds: Dictionary should have at least 1"),
    "boxes of unnamed labels": (
        changed("detector.labels", DELETE, DETECTOR_MANIFEST),
        "detector.labels: an output of label ids is needed with two labels",
    ),
    "no modality": (changed("modalities", []), "modalities: List should have at least 1 item"),
    "modality in lower case": (changed("modalities", ["cr"]), "modalities.0: String should"),
    "no intended use": (changed("intendedUse", DELETE), "intendedUse: Field required"),
}


@pytest.mark.parametrize(("manifest", "message"), INVALID.values(), ids=INVALID.keys())
def test_a_manifest_that_is_not_valid_is_refused_naming_the_field(
    tmp_path: Path, manifest: dict[str, Any], message: str
) -> None:
    with pytest.raises(ManifestError) as refused:
        read_manifest(write(tmp_path, manifest, "chest.json"))

    assert str(refused.value).startswith("manifest chest.json: ")
    assert message in str(refused.value)


def test_a_manifest_that_is_not_json_is_refused_saying_where(tmp_path: Path) -> None:
    path = tmp_path / "chest.json"
    path.write_text('{\n  "name": "chest",\n  "version": 1,,\n}', encoding="utf-8")

    with pytest.raises(ManifestError, match=r"manifest chest.json: not JSON \(line 3, column"):
        read_manifest(path)
    assert declared_name(path) == "chest"  # its file's stem: the name cannot be read


def test_a_refused_manifest_is_known_by_the_name_it_gives_when_that_can_be_read(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, changed("sha256", DELETE), "model-v2.json")
    assert declared_name(path) == "brightness"
    assert declared_name(write(tmp_path, ["not", "an", "object"], "odd.json")) == "odd"

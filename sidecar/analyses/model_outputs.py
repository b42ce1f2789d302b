"""How an operator model's outputs become findings, as its manifest says: per-label scores of a
classifier, boxes of a detector mapped back onto the image they were found on. A model that
answers something else than its manifest promises fails the analysis with a message saying
what, rather than being read wrongly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sidecar.analyses.findings import AnalysisError, Box, Severity
from sidecar.analyses.model_manifest import ClassifierSpec, DetectorSpec, ModelManifest

# Scores a hair outside 0..1 are float rounding, not a wrong activation.
_SCORE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Detection:
    """One label the model reports on one image (or frame), before it names the image."""

    label_index: int
    score: float
    severity: Severity
    box: Box | None = None


def output_names(manifest: ModelManifest) -> list[str]:
    """The outputs the manifest reads, in a fixed order."""
    names: list[str] = []
    if manifest.classifier is not None:
        names.append(manifest.classifier.output)
    if manifest.detector is not None:
        detector = manifest.detector
        names += [detector.boxes, detector.scores]
        if detector.labels is not None:
            names.append(detector.labels)
    return list(dict.fromkeys(names))


def detections(
    manifest: ModelManifest, outputs: Mapping[str, NDArray[np.generic]], image_size: tuple[int, int]
) -> list[Detection]:
    """What the model reports on one image of `image_size` (rows, columns): labels scoring at
    least their threshold, strongest first."""
    found: list[Detection] = []
    if manifest.classifier is not None:
        found += _classified(manifest, manifest.classifier, outputs[manifest.classifier.output])
    if manifest.detector is not None:
        found += _detected(manifest, manifest.detector, outputs, image_size)
    return found


def _classified(
    manifest: ModelManifest, spec: ClassifierSpec, output: NDArray[np.generic]
) -> list[Detection]:
    logits = np.asarray(output, dtype=np.float64).reshape(-1)
    if logits.size != len(manifest.labels):
        raise AnalysisError(
            f"model {manifest.name}: output {spec.output} gave {logits.size} scores for "
            f"{len(manifest.labels)} labels"
        )
    if spec.activation == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    elif spec.activation == "softmax":
        shifted = np.exp(logits - logits.max())
        scores = shifted / shifted.sum()
    else:
        scores = logits
    _check_scores(manifest, spec.output, scores)
    found = []
    for index, score in enumerate(scores):
        detection = _reported(manifest, index, float(score))
        if detection is not None:
            found.append(detection)
    return sorted(found, key=lambda d: -d.score)


def _detected(
    manifest: ModelManifest,
    spec: DetectorSpec,
    outputs: Mapping[str, NDArray[np.generic]],
    image_size: tuple[int, int],
) -> list[Detection]:
    raw_boxes = np.asarray(outputs[spec.boxes], dtype=np.float64)
    if raw_boxes.size % 4:
        raise AnalysisError(
            f"model {manifest.name}: output {spec.boxes} is not boxes of four numbers "
            f"(shape {list(raw_boxes.shape)})"
        )
    boxes = raw_boxes.reshape(-1, 4)
    scores = np.asarray(outputs[spec.scores], dtype=np.float64).reshape(-1)
    if spec.labels is None:
        labels = np.zeros(len(boxes), dtype=np.int64)
    else:
        labels = np.rint(np.asarray(outputs[spec.labels], dtype=np.float64)).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise AnalysisError(
            f"model {manifest.name}: {len(boxes)} boxes, {len(scores)} scores and "
            f"{len(labels)} label ids do not pair up"
        )
    _check_scores(manifest, spec.scores, scores)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(manifest.labels)):
        raise AnalysisError(
            f"model {manifest.name}: output {spec.labels} names a label id outside 0 to "
            f"{len(manifest.labels) - 1}"
        )
    found: list[Detection] = []
    for index in np.argsort(-scores, kind="stable"):
        if len(found) == spec.max_detections:
            break
        box = _image_box(spec, manifest, boxes[index], image_size)
        detection = _reported(manifest, int(labels[index]), float(scores[index]))
        if box is not None and detection is not None:
            found.append(Detection(detection.label_index, detection.score, detection.severity, box))
    return found


def _reported(manifest: ModelManifest, index: int, score: float) -> Detection | None:
    """The label at its severity when it reaches its threshold; None when it does not (or has
    no threshold: a class never reported)."""
    label, threshold = manifest.label_threshold(index)
    if threshold is None or score < threshold.report:
        return None
    critical = threshold.critical is not None and score >= threshold.critical
    return Detection(index, min(score, 1.0), Severity.CRITICAL if critical else label.severity)


def _check_scores(manifest: ModelManifest, output: str, scores: NDArray[np.float64]) -> None:
    if scores.size and (
        not np.all(np.isfinite(scores))
        or scores.min() < -_SCORE_TOLERANCE
        or scores.max() > 1 + _SCORE_TOLERANCE
    ):
        raise AnalysisError(
            f"model {manifest.name}: output {output} gave scores outside 0 to 1 (from "
            f"{scores.min():.3g} to {scores.max():.3g}); does its manifest need an activation?"
        )


def _image_box(
    spec: DetectorSpec,
    manifest: ModelManifest,
    raw: NDArray[np.float64],
    image_size: tuple[int, int],
) -> Box | None:
    """A box of the model's input, in the image's pixels (the input is the whole image
    resized, so fractions of the one are fractions of the other), kept within the image; None
    when nothing of it is left."""
    if not np.all(np.isfinite(raw)):
        return None
    x0, y0, a, b = (float(v) for v in raw)
    x1, y1 = (x0 + a, y0 + b) if spec.box_format == "xywh" else (a, b)
    if spec.coordinates == "input":
        x0, x1 = x0 / manifest.input.width, x1 / manifest.input.width
        y0, y1 = y0 / manifest.input.height, y1 / manifest.input.height
    rows, columns = image_size
    left, right = (min(max(v * columns, 0.0), columns) for v in sorted((x0, x1)))
    top, bottom = (min(max(v * rows, 0.0), rows) for v in sorted((y0, y1)))
    if right <= left or bottom <= top:
        return None
    return Box(x=left, y=top, width=right - left, height=bottom - top)

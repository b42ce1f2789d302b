"""Operator-supplied models: ONNX models, each registered by a manifest in AI_MODELS_DIR
(sidecar.analyses.model_manifest), run on the CPU by ONNX Runtime as analyzers named by their
manifests.

A model is refused, and is then not available, when its manifest is not valid, its file is
missing, the file's SHA-256 is not the manifest's (a model swapped or corrupted on disk is
never run: the bytes checked are the bytes loaded), ONNX Runtime cannot load it, or its graph
does not take the input or give the outputs the manifest describes. One refused model stops
neither the others nor the sidecar: each refusal is logged as an error and kept, so that a
request for that model answers why (ModelCatalog.get).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from pydicom import Dataset

from sidecar.analyses.findings import AnalysisError, AnalyzerFinding, ImageRef, StudyContext
from sidecar.analyses.model_manifest import (
    ManifestError,
    ModelManifest,
    declared_name,
    read_manifest,
)
from sidecar.analyses.model_outputs import detections, output_names
from sidecar.analyses.model_pixels import frames, prepare
from sidecar.core.settings import Settings

log = logging.getLogger(__name__)

_CHECKSUM_SHOWN = 12  # characters of a checksum in a refusal: enough to tell two apart


class ModelRefused(Exception):
    """A model that will not be run; the message names the model and says why."""


class ModelUnavailable(AnalysisError):
    """A request for a model that is not registered, or was refused; the message says which."""


class OutsideIntendedUse(AnalysisError):
    """No image of the study is one the model is meant for (its modalities and body parts):
    the model was not run, which is not the same as a study without findings."""


class ModelDirectoryError(ValueError):
    """AI_MODELS_DIR names something that is not a readable directory."""


class OnnxAnalyzer:
    """An operator model as an analyzer (sidecar.analyses.findings.Analyzer): one ONNX Runtime
    session, kept for the life of the process, on one CPU thread so that an analysis never
    takes the cores the rest of the sidecar answers with (ONNX Runtime lets two analyses run
    one session at once)."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self._session = session
        self._outputs = output_names(manifest)

    def within_intended_use(self, image: Dataset, context: StudyContext) -> bool:
        """Whether the model is meant for this image: its modality (the order's when the image
        names none) is one of the manifest's, and so is its body part when the manifest names
        body parts. An image whose body part nobody states is not assumed to be the right one."""
        modality = str(image.get("Modality", "") or context.ordered_modality or "").upper()
        if modality not in self.manifest.modalities:
            return False
        if not self.manifest.body_parts:
            return True
        part = str(image.get("BodyPartExamined", "") or context.ordered_body_part or "")
        return part.strip().upper() in self.manifest.body_parts

    def analyze(self, images: Iterable[Dataset], context: StudyContext) -> list[AnalyzerFinding]:
        """The model's findings on each image (each frame of a multi-frame image) within its
        intended use; the others are skipped, not scored. Raises OutsideIntendedUse when there
        is none, AnalysisError when an image cannot be decoded or the model misbehaves."""
        findings: list[AnalyzerFinding] = []
        scored = skipped = 0
        for position, image in enumerate(images, start=1):
            if "PixelData" not in image:
                continue  # a report, a presentation state: not an image
            if not self.within_intended_use(image, context):
                skipped += 1
                continue
            scored += 1
            findings += self._image_findings(image, position)
        if not scored:
            raise OutsideIntendedUse(
                f"model {self.name} is for {self._intended()}, and this study has none"
                + (f" ({skipped} images skipped)" if skipped else "")
            )
        log.info("model %s: %d images scored, %d skipped", self.name, scored, skipped)
        return findings

    def _image_findings(self, image: Dataset, position: int) -> list[AnalyzerFinding]:
        try:
            image_frames = list(frames(image))
        except Exception as exc:  # pydicom raises many kinds for pixel data it cannot decode
            syntax = getattr(getattr(image, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise AnalysisError(
                f"model {self.name}: the pixels of image {position} of the study (transfer "
                f"syntax {syntax}) cannot be decoded: {_first_line(exc)}"
            ) from None
        findings = []
        for frame, values in image_frames:
            outputs = self._run(prepare(values, image, self.manifest.input), position)
            size = (int(values.shape[0]), int(values.shape[1]))
            for found in detections(self.manifest, outputs, size):
                label = self.manifest.labels[found.label_index]
                findings.append(
                    AnalyzerFinding(
                        model=self.name,
                        finding=label.finding,
                        confidence=found.score,
                        severity=found.severity,
                        recommendation=label.recommendation,
                        image=_image_ref(image, frame),
                        box=found.box,
                    )
                )
        return findings

    def _run(self, tensor: NDArray[np.float32], position: int) -> dict[str, NDArray[Any]]:
        try:
            results = self._session.run(self._outputs, {self.manifest.input.name: tensor})
        except Exception as exc:  # ONNX Runtime's errors derive from Exception only
            raise AnalysisError(
                f"model {self.name} failed on image {position} of the study: {_first_line(exc)}"
            ) from None
        return {name: np.asarray(value) for name, value in zip(self._outputs, results, strict=True)}

    def _intended(self) -> str:
        parts = "/".join(self.manifest.body_parts) if self.manifest.body_parts else ""
        return " ".join(filter(None, ("/".join(self.manifest.modalities), parts))) + " images"


@dataclass(frozen=True)
class ModelCatalog:
    """The models of a directory: those that can run, by name, and those refused, by name
    (by manifest file stem when its name cannot be read) with the reason."""

    analyzers: Mapping[str, OnnxAnalyzer] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> OnnxAnalyzer:
        """The model called `name`; ModelUnavailable saying why when there is none to run."""
        if name in self.analyzers:
            return self.analyzers[name]
        if name in self.refused:
            raise ModelUnavailable(f"model {name} is not available: {self.refused[name]}")
        raise ModelUnavailable(f"no model is registered as {name}")


def model_catalog(settings: Settings) -> ModelCatalog:
    """The models of AI_MODELS_DIR (none when it is not set)."""
    return load_catalog(settings.ai_models_dir)


def load_models(directory: Path) -> dict[str, OnnxAnalyzer]:
    """The models of `directory` that can run, by name (refusals are logged)."""
    return dict(load_catalog(directory).analyzers)


def load_catalog(directory: Path | None) -> ModelCatalog:
    """Every manifest (*.json) of `directory`, each model verified and loaded or refused.
    Two manifests naming the same model both refuse it: which one was meant is a guess.
    Raises ModelDirectoryError when `directory` is not a directory (a configuration error
    the sidecar should not start with)."""
    if directory is None:
        return ModelCatalog()
    if not directory.is_dir():
        raise ModelDirectoryError(f"AI_MODELS_DIR {directory} is not a directory")
    manifests: dict[str, list[ModelManifest]] = defaultdict(list)
    sources: dict[str, list[str]] = defaultdict(list)
    refused: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            manifest = read_manifest(path)
        except ManifestError as exc:
            refused[declared_name(path)] = str(exc)
            continue
        manifests[manifest.name].append(manifest)
        sources[manifest.name].append(path.name)
    analyzers: dict[str, OnnxAnalyzer] = {}
    for name, found in manifests.items():
        if len(found) > 1:
            refused[name] = f"manifests {', '.join(sources[name])} all name it"
            continue
        try:
            analyzers[name] = open_model(directory, found[0])
        except ModelRefused as exc:
            refused[name] = str(exc)
    for name, reason in refused.items():
        analyzers.pop(name, None)
        log.error("model %s refused: %s", name, reason)
    for analyzer in analyzers.values():
        log.info("model %s version %s registered", analyzer.name, analyzer.version)
    return ModelCatalog(analyzers=analyzers, refused=refused)


def open_model(directory: Path, manifest: ModelManifest) -> OnnxAnalyzer:
    """The model of `manifest`, its file in `directory` checked against the manifest's
    SHA-256 and its graph against the manifest's input and outputs; ModelRefused otherwise."""
    path = directory / manifest.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"its file {manifest.file} cannot be read ({exc.strerror})") from None
    actual = hashlib.sha256(data).hexdigest()
    expected = manifest.sha256.lower()
    if actual != expected:
        raise ModelRefused(
            f"its file {manifest.file} has SHA-256 {actual[:_CHECKSUM_SHOWN]}…, its manifest "
            f"says {expected[:_CHECKSUM_SHOWN]}…: the file is not the model the manifest "
            "describes"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: warnings about the graph are not ours to fix
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors derive from Exception only
        raise ModelRefused(
            f"ONNX Runtime cannot load {manifest.file}: {_first_line(exc)}"
        ) from None
    _check_graph(manifest, session)
    return OnnxAnalyzer(manifest, session)


def _check_graph(manifest: ModelManifest, session: ort.InferenceSession) -> None:
    """The graph takes the manifest's input (float, of a shape that admits the manifest's)
    and nothing else, and gives every output the manifest reads."""
    spec = manifest.input
    inputs = {node.name: node for node in session.get_inputs()}
    if spec.name not in inputs:
        raise ModelRefused(
            f"its graph has no input {spec.name} (its inputs: {', '.join(sorted(inputs))})"
        )
    node = inputs[spec.name]
    if node.type != "tensor(float)":
        raise ModelRefused(f"its input {spec.name} is {node.type}, not float32")
    declared = list(node.shape)
    if len(declared) != 4 or any(
        isinstance(dim, int) and dim != wanted
        for dim, wanted in zip(declared, spec.shape, strict=True)
    ):
        raise ModelRefused(
            f"its input {spec.name} has shape {declared}, the manifest's is {list(spec.shape)} "
            f"({spec.layout})"
        )
    others = sorted(set(inputs) - {spec.name})
    if others:
        raise ModelRefused(f"its graph also needs inputs {', '.join(others)}")
    outputs = {node.name: node for node in session.get_outputs()}
    missing = [name for name in output_names(manifest) if name not in outputs]
    if missing:
        raise ModelRefused(
            f"its graph has no output {', '.join(missing)} (its outputs: "
            f"{', '.join(sorted(outputs))})"
        )
    if manifest.classifier is not None:
        last = list(outputs[manifest.classifier.output].shape)[-1:]
        if last and isinstance(last[0], int) and last[0] != len(manifest.labels):
            raise ModelRefused(
                f"its output {manifest.classifier.output} gives {last[0]} scores, the manifest "
                f"has {len(manifest.labels)} labels"
            )


def _image_ref(image: Dataset, frame: int | None) -> ImageRef:
    meta = getattr(image, "file_meta", None)
    sop_class = image.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "")
    return ImageRef(
        study_instance_uid=str(image.get("StudyInstanceUID", "")),
        series_instance_uid=str(image.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(image.get("SOPInstanceUID", "")),
        sop_class_uid=str(sop_class or ""),
        frame=frame,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

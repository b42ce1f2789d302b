"""Tiny ONNX models built here with onnx.helper (no weights downloaded), their manifests, and
the plain radiographs they are run on, written and read back with pydicom.

The classifier scores an image's mean brightness: its two logits are ±SLOPE * (mean - 0.5) for
the labels "bright" and "dark", so a test can say exactly what score an image must get. The
detector gives fixed boxes (constants of the graph) scored from the input's mean brightness.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

SLOPE = 20.0
OPSET = 13  # ReduceMean takes its axes as an attribute up to opset 17
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def brightness_score(mean: float) -> float:
    """The "bright" label's score for an input of this mean (sigmoid of the logit)."""
    return 1.0 / (1.0 + math.exp(-SLOPE * (mean - 0.5)))


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> bytes:
    graph = helper.make_graph(nodes, "test-model", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _image_input(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def classifier(
    *, input_name: str = "image", shape: list[int | str] | None = None, output: str = "scores"
) -> bytes:
    """Logits [N, 2] for "bright" and "dark" from the mean of the whole input."""
    shape = shape or ["N", 1, 32, 32]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "column"], ["mean2"]),
        helper.make_node("Sub", ["mean2", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "slopes"], [output]),
    ]
    constants = [
        helper.make_node("Constant", [], ["column"], value=_ints([-1, 1])),
        helper.make_node("Constant", [], ["half"], value=_floats([0.5])),
        helper.make_node("Constant", [], ["slopes"], value=_floats([SLOPE, -SLOPE], [1, 2])),
    ]
    return _model(
        constants + nodes,
        [_image_input(input_name, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 2])],
    )


def detector(boxes: list[list[float]], *, size: int = 32) -> bytes:
    """Fixed `boxes` [1, K, 4] with label ids 0..K-1; box k scores the input's mean for even
    k and 1 - mean for odd k."""
    count = len(boxes)
    signs = [1.0 if k % 2 == 0 else -1.0 for k in range(count)]
    offsets = [0.0 if k % 2 == 0 else 1.0 for k in range(count)]
    corners = [value for box in boxes for value in box]
    nodes = [
        helper.make_node("Constant", [], ["boxes"], value=_floats(corners, [1, count, 4])),
        helper.make_node(
            "Constant",
            [],
            ["labels"],
            value=helper.make_tensor("l", TensorProto.INT64, [count], list(range(count))),
        ),
        helper.make_node("Constant", [], ["signs"], value=_floats(signs)),
        helper.make_node("Constant", [], ["offsets"], value=_floats(offsets)),
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[0, 1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "signs"], ["signed"]),
        helper.make_node("Add", ["signed", "offsets"], ["scores"]),
    ]
    return _model(
        nodes,
        [_image_input("image", [1, 1, size, size])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, count, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [count]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [count]),
        ],
    )


def _floats(values: list[float], dims: list[int] | None = None) -> onnx.TensorProto:
    return helper.make_tensor("c", TensorProto.FLOAT, dims or [len(values)], values)


def _ints(values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor("c", TensorProto.INT64, [len(values)], values)


LABELS = [
    {
        "name": "bright",
        "finding": "Bright image",
        "severity": "moderate",
        "recommendation": "Check the exposure",
    },
    {
        "name": "dark",
        "finding": "Dark image",
        "severity": "low",
        "recommendation": "Check the detector",
    },
]

CLASSIFIER_MANIFEST: dict[str, Any] = {
    "name": "brightness",
    "version": "1.0.0",
    "file": "brightness.onnx",
    "sha256": "0" * 64,
    "input": {"name": "image", "layout": "NCHW", "shape": [1, 1, 32, 32]},
    "classifier": {"output": "scores", "activation": "sigmoid"},
    "labels": LABELS,
    # "dark" has no threshold: it is never reported.
    "thresholds": {"bright": {"report": 0.5, "critical": 0.999}},
    "modalities": ["CR", "DX"],
    "bodyParts": ["CHEST"],
    "intendedUse": "Frontal chest radiographs of adults, for testing only.",
}

DETECTOR_MANIFEST: dict[str, Any] = {
    **CLASSIFIER_MANIFEST,
    "name": "finder",
    "file": "finder.onnx",
    "classifier": None,
    "detector": {"boxes": "boxes", "scores": "scores", "labels": "labels"},
    "thresholds": {"bright": {"report": 0.5}, "dark": {"report": 0.5}},
}


def install(
    directory: Path, model: bytes, manifest: dict[str, Any], **changes: Any
) -> dict[str, Any]:
    """`model` and its manifest (with `changes`, the SHA-256 of `model` unless one is given)
    written into `directory`; the manifest as written."""
    written = copy.deepcopy(manifest)
    written["sha256"] = hashlib.sha256(model).hexdigest()
    written.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / written["file"]).write_bytes(model)
    (directory / f"{written['name']}.json").write_text(json.dumps(written), encoding="utf-8")
    return written


def radiograph(
    directory: Path,
    pixels: NDArray[np.uint16],
    *,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,  # slope, intercept
    window: tuple[float, float] | None = None,
) -> Dataset:
    """A real Part-10 image of `pixels` ([rows, columns], or [frames, rows, columns]), 12 bits
    stored, written to `directory` and read back as the sidecar reads images from Orthanc."""
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    rows, columns = pixels.shape[-2:]
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else CR_IMAGE_STORAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "ONNX-TEST"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


def share(fraction: float, *, rows: int = 64, columns: int = 64) -> NDArray[np.uint16]:
    """Pixels whose first `fraction` of rows is white (4095), the rest black: after a per-image
    min-max normalisation their mean is exactly `fraction`, also once resized to 32 rows when
    the white rows are a multiple of rows / 32 (bilinear: each output row is then made of
    image rows on one side of the edge)."""
    white = fraction * rows
    if white != int(white):
        raise ValueError(f"{fraction} of {rows} rows is not a whole number of rows")
    pixels = np.zeros((rows, columns), dtype=np.uint16)
    pixels[: int(white)] = 4095
    return pixels

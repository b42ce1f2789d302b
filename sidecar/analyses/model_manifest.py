"""The manifest an operator writes next to an ONNX model: what the model is, which file holds
it (and that file's SHA-256, so a swapped or corrupted file is refused rather than run), how an
image becomes its input tensor, how its outputs become findings, and which images it is meant
for. One JSON file per model in AI_MODELS_DIR, keys in camelCase as in the API.

A manifest is checked field by field (unknown keys included: a misspelt threshold must not be
silently ignored), and every refusal names the field, so the operator can fix it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from sidecar.analyses.findings import Severity

# A model's name is how requests and AI_AUTO_ANALYZERS name it: one token, lower case, so
# that "Chest-XR" and "chest-xr" are never two models.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Names of the analyzers built into the sidecar: a model may not take their place.
RESERVED_NAMES = frozenset({"quality"})
MAX_SIDE = 4096


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the manifest file and the field."""


class _Part(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False
    )


class FixedWindow(_Part):
    """A window in the image's modality units (e.g. Hounsfield units for CT), as the model was
    trained with: values below center - width/2 become 0, above center + width/2 become 1."""

    center: float
    width: float = Field(gt=1)


class MeanStd(_Part):
    """Per channel: (value - mean) / std, after the window if any (one value: every channel)."""

    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=3)


class InputSpec(_Part):
    """The model's one input tensor and how an image's pixels become it.

    In order: the modality LUT (rescale slope and intercept), the window ("image": the image's
    own first window, or its full range when it has none; a fixed one; none), MONOCHROME1
    inverted so that dense structures are bright as in MONOCHROME2, bilinear resize to the
    input's height and width, grey replicated to three channels (or colour turned to grey for
    one), then the normalisation ("minMax": per image to 0..1; mean and std; "none")."""

    name: str = Field(min_length=1, max_length=256)
    layout: Literal["NCHW", "NHWC"]
    shape: tuple[int, int, int, int]
    dtype: Literal["float32"] = "float32"
    window: Literal["image"] | FixedWindow | None = None
    normalisation: Literal["minMax", "none"] | MeanStd = "minMax"
    invert_monochrome1: bool = True

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def height(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.shape[0] != 1:
            raise ValueError("shape: the batch size (first) must be 1: images run one at a time")
        if self.channels not in (1, 3):
            where = "second" if self.layout == "NCHW" else "last"
            raise ValueError(
                f"shape: {self.layout} puts channels {where}, and they must be 1 or 3, "
                f"not {self.channels}"
            )
        if not (1 <= self.height <= MAX_SIDE and 1 <= self.width <= MAX_SIDE):
            raise ValueError(f"shape: height and width must be 1 to {MAX_SIDE} pixels")
        if isinstance(self.normalisation, MeanStd):
            for key, values in (("mean", self.normalisation.mean), ("std", self.normalisation.std)):
                if len(values) not in (1, self.channels):
                    raise ValueError(
                        f"normalisation.{key}: one value, or one per channel ({self.channels})"
                    )
        return self


class ClassifierSpec(_Part):
    """One output of per-label scores, in the order of `labels`; `activation` turns logits
    into scores from 0 to 1 (none: the model already gives probabilities)."""

    output: str = Field(min_length=1, max_length=256)
    activation: Literal["none", "sigmoid", "softmax"] = "none"


class DetectorSpec(_Part):
    """Boxes [N, 4] (a batch axis of 1 allowed), their scores [N] and label ids [N] (indexes
    into `labels`; optional with one label). Coordinates are fractions of the input
    ("normalised") or pixels of the input tensor ("input"); they are mapped back to the image."""

    boxes: str = Field(min_length=1, max_length=256)
    scores: str = Field(min_length=1, max_length=256)
    labels: str | None = Field(default=None, min_length=1, max_length=256)
    box_format: Literal["xyxy", "xywh"] = "xyxy"
    coordinates: Literal["normalised", "input"] = "normalised"
    max_detections: int = Field(default=10, ge=1, le=1000)


class Label(_Part):
    """What the model can find, in words a radiologist reads."""

    name: str = Field(pattern=NAME_PATTERN)
    finding: str = Field(min_length=1, max_length=200)
    severity: Severity
    recommendation: str = Field(min_length=1, max_length=500)


class Threshold(_Part):
    """A label is reported from `report` up; from `critical` up (when set) it is critical."""

    report: float = Field(gt=0, le=1)
    critical: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Threshold:
        if self.critical is not None and self.critical < self.report:
            raise ValueError("critical must not be below report")
        return self


class ModelManifest(_Part):
    """One operator-supplied model. A label without a threshold is never reported (a "normal"
    or background class). Images whose modality is not in `modalities`, or whose body part is
    not in `bodyParts` when it is given, are outside the model's intended use and skipped."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=64)
    file: str = Field(min_length=1, max_length=255)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    input: InputSpec
    classifier: ClassifierSpec | None = None
    detector: DetectorSpec | None = None
    labels: list[Label] = Field(min_length=1, max_length=1000)
    thresholds: dict[str, Threshold] = Field(min_length=1)
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z0-9]{1,16}$")]] = Field(min_length=1)
    body_parts: list[Annotated[str, Field(pattern=r"^[A-Z0-9 _]{1,16}$")]] = Field(
        default_factory=list
    )
    intended_use: str = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _check(self) -> ModelManifest:
        if self.name in RESERVED_NAMES:
            raise ValueError(f"name: {self.name!r} is a built-in analyzer's name")
        if self.file != Path(self.file).name or self.file in (".", ".."):
            raise ValueError("file: a file name in the manifest's own directory, without a path")
        if self.classifier is None and self.detector is None:
            raise ValueError("a classifier, a detector or both must say how to read the outputs")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("labels: each label's name must be unique")
        unknown = sorted(set(self.thresholds) - set(names))
        if unknown:
            raise ValueError(f"thresholds: {', '.join(unknown)} is not a label's name")
        if self.detector is not None and self.detector.labels is None and len(names) > 1:
            raise ValueError("detector.labels: an output of label ids is needed with two labels")
        return self

    def label_threshold(self, index: int) -> tuple[Label, Threshold | None]:
        label = self.labels[index]
        return label, self.thresholds.get(label.name)


def read_manifest(path: Path) -> ModelManifest:
    """The manifest in `path`; ManifestError naming the file and the field when it is not one."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"manifest {path.name}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path.name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest {path.name}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"manifest {path.name}: {_describe(exc)}") from None


def declared_name(path: Path) -> str:
    """The name a manifest gives its model, even when the manifest is refused, so that a
    request for that model answers why; the file's stem when the name cannot be read."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path.stem
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        return name
    return path.stem


def _describe(exc: ValidationError) -> str:
    """Each problem as `field.path: message`, the field spelt as in the manifest. Where a field
    takes one of several forms (a window is "image" or {center, width}), only the form that
    was attempted is complained about."""
    problems = []
    for error in exc.errors(include_url=False):
        given = error.get("input")
        if error["type"] == "literal_error" and isinstance(given, dict):
            continue  # an object was given: the complaint about the word form is noise
        if error["type"] in ("model_type", "model_attributes_type") and isinstance(given, str):
            continue  # a word was given: the complaint about the object form is noise
        location = ".".join(str(part) for part in error["loc"] if not _is_form(str(part)))
        message = error["msg"].removeprefix("Value error, ")
        if location and re.match(r"^[A-Za-z][A-Za-z0-9.]*: ", message):
            location += "."  # a check of the whole part that names its field: input.shape
        else:
            location += ": " if location else ""
        problems.append(location + message)
    return "; ".join(dict.fromkeys(problems))


def _is_form(part: str) -> bool:
    """A path segment naming one form of a field that takes several, not a field."""
    return part in _FORMS or part.startswith("literal[")


_FORMS = frozenset({FixedWindow.__name__, MeanStd.__name__})

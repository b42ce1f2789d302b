"""How an image's pixels become an operator model's input tensor, as its manifest's input spec
says (sidecar.analyses.model_manifest.InputSpec). numpy only, so that what the model sees is
the same on every machine, and reproducible in a test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

from sidecar.analyses.model_manifest import FixedWindow, InputSpec, MeanStd

Pixels = NDArray[np.float64]

# ITU-R BT.601 luma, for a colour image given to a one-channel model.
_LUMA = np.array([0.299, 0.587, 0.114])


def frames(ds: Dataset) -> Iterator[tuple[int | None, Pixels]]:
    """Each frame of the image with its 1-based number (None for a single-frame image), in
    modality units for grey images (the modality LUT applied: Hounsfield units for CT), as
    [rows, columns] for grey and [rows, columns, 3] for colour. Raises what pydicom raises for
    pixel data it cannot decode."""
    array = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        values = np.asarray(apply_color_lut(array, ds), dtype=np.float64)
    elif int(ds.get("SamplesPerPixel", 1)) == 1:
        values = np.asarray(apply_modality_lut(array, ds), dtype=np.float64)
    else:
        values = np.asarray(array, dtype=np.float64)
    colour = photometric == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1)) > 1
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count > 1 and values.ndim == (4 if colour else 3):
        for index in range(values.shape[0]):
            yield index + 1, values[index]
    else:
        yield None, values


def prepare(values: Pixels, ds: Dataset, spec: InputSpec) -> NDArray[np.float32]:
    """The input tensor for one frame (from `frames`), batch of one, in the spec's layout."""
    colour = values.ndim == 3
    windowed = spec.window is not None and not colour  # windows are for grey images
    if windowed:
        values = _apply_window(values, _window_bounds(values, ds, spec.window))
    monochrome1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if monochrome1 and spec.invert_monochrome1:
        # MONOCHROME1 shows low values white; models are trained on MONOCHROME2's convention.
        values = 1.0 - values if windowed else values.min() + values.max() - values
    values = resize(values, spec.height, spec.width)
    values = _to_channels(values, spec.channels)
    values = _normalise(values, spec.normalisation)
    if spec.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values[np.newaxis], dtype=np.float32)


def resize(values: Pixels, height: int, width: int) -> Pixels:
    """Bilinear resize with half-pixel centres (as OpenCV's INTER_LINEAR and PyTorch's
    interpolate without antialiasing): the image's extent maps onto the output's, so a point
    at fraction f of the output's width is at fraction f of the image's."""
    rows, columns = values.shape[:2]
    if (rows, columns) == (height, width):
        return values
    y0, y1, wy = _axis(rows, height)
    x0, x1, wx = _axis(columns, width)
    extra = (1,) * (values.ndim - 2)  # a colour image's channel axis
    wx = wx.reshape(1, width, *extra)
    wy = wy.reshape(height, 1, *extra)
    top = values[y0][:, x0] * (1 - wx) + values[y0][:, x1] * wx
    bottom = values[y1][:, x0] * (1 - wx) + values[y1][:, x1] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float64)


def _axis(size: int, out: int) -> tuple[NDArray[np.intp], NDArray[np.intp], Pixels]:
    centres = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
    low = np.floor(centres).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    return low, high, centres - low


def _window_bounds(
    values: Pixels, ds: Dataset, window: FixedWindow | str | None
) -> tuple[float, float]:
    """The values mapped to 0 and to 1: DICOM's linear window (PS3.3 C.11.2.1.2), or the
    image's own range when it asks for its window and has none."""
    if isinstance(window, FixedWindow):
        center, width = window.center, window.width
    else:
        own = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if own[0] is None or own[1] is None or own[1] < 1:
            return float(values.min()), float(values.max())
        center, width = own[0], own[1]
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _apply_window(values: Pixels, bounds: tuple[float, float]) -> Pixels:
    low, high = bounds
    if high <= low:  # a window of one value, or a uniform image: a step
        return np.asarray(values > low, dtype=np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued DS (an image may carry several windows)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_channels(values: Pixels, channels: int) -> Pixels:
    """[height, width, channels]: grey repeated, colour as it is or turned to grey."""
    if values.ndim == 2:
        return np.repeat(values[:, :, np.newaxis], channels, axis=2)
    if channels == 3:
        return values
    return np.asarray(values @ _LUMA, dtype=np.float64)[:, :, np.newaxis]


def _normalise(values: Pixels, normalisation: str | MeanStd) -> Pixels:
    if isinstance(normalisation, MeanStd):
        mean = np.asarray(normalisation.mean, dtype=np.float64)
        std = np.asarray(normalisation.std, dtype=np.float64)
        return (values - mean) / std
    if normalisation == "minMax":
        low, high = float(values.min()), float(values.max())
        if high <= low:  # a uniform image has no contrast to stretch
            return np.zeros_like(values)
        return (values - low) / (high - low)
    return values

"""What the quality analyzer measures in one image's pixels: whether anything is in it (a blank
or uniform image) and how much of it sits at the limits its bit depth allows (a clipped image).

Blank: an image with nothing in it still has noise, and how much depends on the detector, the
bit depth and the processing, so neither the stored range nor the window is a fair yardstick
(a raw 16-bit image uses a sliver of its range; a modality may window a blank image onto its
own noise). An image shows something when its large-scale variation (the spread of its block
means) stands well above its pixel-to-pixel noise; a blank image's block means vary by a
fraction of its noise, anatomy's by tens of times it.

Clipped: measured on stored values, because saturation happens there: a detector or a
processing step that runs out of range writes the largest or smallest value BitsStored and
PixelRepresentation allow. Pixel padding (0028,0120), e.g. the corners outside a CT's round
field of view, is not image and is left out of both measures.

Clipping and background look the same in a histogram: a processed radiograph clamps the area
the beam reached unattenuated to black (the stored minimum in MONOCHROME2, the maximum in
MONOCHROME1), an electronic shutter paints the collimated border white, a mammogram's
background is half the image. What tells them apart is where the plateau lies. A shutter is
whole rows and columns at the image's edge, and is cut off first. Background lies outside the
body's silhouette; anatomy burnt out by saturation (lungs, dense breast tissue) lies inside it,
between tissue that is not saturated, along its row and along its column, even when a burnt
chest wall joins it to the background. So a plateau counts as clipping when the part of it
inside the silhouette is a large share of the silhouette (`CLIPPED_ENCLOSED`), or when the
plateau covers more of the image than any background does (`CLIPPED_TOTAL`). The thresholds
come from bench/quality_detection.py: the largest values its clean controls reach (dark
backgrounds, shutters, small breasts, hands on the detector, dense bone, markers, metal) and
the smallest its defective images reach; rerun it before moving them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.multival import MultiValue

from sidecar.analyses.findings import Box

#: An image is blank when the spread of its block means (1st to 99th percentile) is below this
#: many times its pixel noise. Noise alone gives about 0.6 (blocks of 64 pixels, with or
#: without a burned-in marker); the flattest clean image in the bench about 50 (a chest at a
#: deviation index of -6: four times the noise). An exposure with nobody in the beam, whose
#: heel-effect gradient is structure of a kind, gives about 10 and is not found.
BLANK_STRUCTURE = 3.0
#: Blocks for the blank measure: at least 8 pixels a side, at most 64 blocks a side.
BLANK_BLOCKS = 64
#: Share of the body's silhouette at one stored limit from which the image counts as clipped.
#: Clean images in the bench reach 0.014 (a hand); chests with a fifth of the lungs burnt out
#: 0.06, with a tenth 0.03 (not found).
CLIPPED_ENCLOSED = 0.05
#: Share of the exposed field at one stored limit from which the image counts as clipped
#: wherever the plateau lies. Clean images in the bench reach 0.68 (a hand on the detector;
#: the smallest breast 0.6).
CLIPPED_TOTAL = 0.85
#: A plateau smaller than this share of the field is not traced (it cannot be clipping).
MINIMUM_PLATEAU = 0.01
#: A row or column at the field's edge this much at one limit is shutter, not image.
SHUTTER_LINE = 0.9
#: Plateaus are traced on a grid of at most this many cells a side: a 3000-pixel mammogram is
#: followed in blocks of 24 pixels, a 512 CT slice in blocks of 4.
GRID_CELLS = 128
#: The noise is estimated from at most about this many pixels (every n-th row).
SAMPLE_PIXELS = 250_000

Pixels = NDArray[Any]
Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class PixelLayout:
    """How to read one image's stored values."""

    low: int  # the smallest stored value BitsStored and PixelRepresentation allow
    high: int  # the largest
    slope: float
    intercept: float
    padding: tuple[int, int] | None  # stored values that are padding, inclusive
    grayscale: bool
    hounsfield: bool  # output in Hounsfield units: a CT's lowest values are air


def pixel_layout(ds: Dataset) -> PixelLayout:
    """The stored range, rescale and padding of `ds` (defaults where absent)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope = _number(ds.get("RescaleSlope"), 1.0) or 1.0
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    padding = None
    if ds.get("PixelPaddingValue") is not None:
        value = int(ds.PixelPaddingValue)
        limit = ds.get("PixelPaddingRangeLimit")
        end = value if limit is None else int(limit)
        padding = (min(value, end), max(value, end))
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    grayscale = photometric.startswith("MONOCHROME") and int(ds.get("SamplesPerPixel") or 1) == 1
    rescale_type = str(ds.get("RescaleType") or "").upper()
    hounsfield = rescale_type == "HU" or str(ds.get("Modality") or "").upper() == "CT"
    return PixelLayout(low, high, slope, intercept, padding, grayscale, hounsfield)


@dataclass(frozen=True)
class Field:
    """The part of one frame that is image: the frame less its shutter (rows and columns cut
    off, see `exposed_field`), less its padding (`valid`: None when nothing is padding)."""

    pixels: Pixels
    valid: Mask | None
    top: int  # where the field starts in the frame
    left: int


def exposed_field(frame: Pixels, layout: PixelLayout) -> Field:
    """The field both measures are made in. A shutter is cut off first: whole rows and columns
    at the frame's edge that are (almost) all at one stored limit, as an electronic shutter
    paints the collimated border; an exposure that failed inside a shutter is blank, and a
    shutter is no saturation. At most a quarter of the frame goes from each side, so a frame
    all at one limit keeps a field to be measured in."""
    valid = None
    if layout.padding is not None and layout.grayscale:
        first, last = layout.padding
        valid = (frame < first) | (frame > last)
    if frame.ndim != 2:  # colour: no shutter is painted at a stored limit
        return Field(frame, valid, 0, 0)
    rows, columns = frame.shape
    by_row = np.zeros(rows, np.bool_)
    by_column = np.zeros(columns, np.bool_)
    for limit in (frame <= layout.low, frame >= layout.high):
        if valid is not None:
            limit &= valid
        by_row |= limit.mean(axis=1) >= SHUTTER_LINE
        by_column |= limit.mean(axis=0) >= SHUTTER_LINE
    top = _run(by_row, rows // 4)
    bottom = rows - _run(by_row[::-1], rows // 4)
    left = _run(by_column, columns // 4)
    right = columns - _run(by_column[::-1], columns // 4)
    inside = None if valid is None else valid[top:bottom, left:right]
    return Field(frame[top:bottom, left:right], inside, top, left)


def _run(flags: NDArray[np.bool_], most: int) -> int:
    """How many of the first `flags` are set, up to `most`."""
    length = 0
    while length < most and flags[length]:
        length += 1
    return length


@dataclass(frozen=True)
class Flatness:
    """How much an image shows: the spread of its block means (`structure`) against its pixel
    noise, both in stored values."""

    uniform: bool  # every image pixel has the same value
    structure: float
    noise: float

    @property
    def ratio(self) -> float:
        return self.structure / self.noise

    @property
    def blank(self) -> bool:
        return self.uniform or self.ratio < BLANK_STRUCTURE


def flatness(field: Field) -> Flatness:
    """The blank measure of one frame's field (colour: of the mean of its samples)."""
    frame, valid = field.pixels, field.valid
    values = frame.mean(axis=-1) if frame.ndim == 3 else frame
    inside = values if valid is None else values[valid]
    if inside.size == 0 or inside.min() == inside.max():  # nothing but padding, or one value
        return Flatness(True, 0.0, 1.0)
    rows, columns = values.shape
    block = max(8, math.ceil(max(rows, columns) / BLANK_BLOCKS))
    sums = _cells(np.where(valid, values, 0) if valid is not None else values, block, np.float64)
    counts = _cells(np.ones_like(values, dtype=np.bool_) if valid is None else valid, block)
    full = counts * 2 >= block * block
    means = sums[full] / counts[full] if full.any() else inside.reshape(1)
    low, high = np.percentile(means, (1, 99))
    step = max(1, math.ceil(values.size / SAMPLE_PIXELS))
    sample = values[::step].astype(np.float64)
    differences = np.diff(sample, axis=1)
    if valid is not None:
        differences = differences[valid[::step, 1:] & valid[::step, :-1]]
    noise = 0.0
    if differences.size:
        deviation = np.median(np.abs(differences - np.median(differences)))
        noise = float(1.4826 * deviation / math.sqrt(2.0))  # one pixel's, from differences
    # Below half a stored level, noise is quantisation: it cannot be told from none.
    return Flatness(False, float(high - low), max(noise, 0.5))


End = Literal["minimum", "maximum"]


@dataclass(frozen=True)
class Clipping:
    """The plateau at one stored limit, in the exposed field (the image less its shutter): its
    share of the field (`total`), and the share of the body's silhouette that it fills inside
    the silhouette (`enclosed`), with the bounding box of that part in the image's pixels."""

    end: End
    total: float
    enclosed: float
    box: Box | None

    @property
    def clipped(self) -> bool:
        return self.enclosed >= CLIPPED_ENCLOSED or self.total >= CLIPPED_TOTAL


def clipping(exposed: Field, layout: PixelLayout) -> list[Clipping]:
    """The plateaus at both stored limits of a grayscale frame's field (none for colour). A CT's
    minimum is left out when it is air or below (-1000 HU): scanners clamp air there, and it
    is no saturation.

    Traced on a coarse grid: a cell is plateau when at least half its image pixels are at the
    limit (scattered pixels there, noise peaks or a bone edge, are not), body when it is
    neither plateau nor padding. The silhouette is every cell with body both to its left and
    right and both above and below it: lungs between the ribs, the spine and the shoulders are
    in it; the background beside a chest, between a hand's fingers or beyond a breast is not."""
    field, top, left = exposed.pixels, exposed.top, exposed.left
    if not layout.grayscale or field.ndim != 2:
        return []
    inside = np.ones(field.shape, np.bool_) if exposed.valid is None else exposed.valid
    count = int(np.count_nonzero(inside))
    if count == 0:
        return []
    at_low, at_high = (field <= layout.low) & inside, (field >= layout.high) & inside
    air = layout.hounsfield and layout.low * layout.slope + layout.intercept <= -1000
    ends: list[tuple[End, Mask]] = [] if air else [("minimum", at_low)]
    ends.append(("maximum", at_high))
    plateaus = {end: int(np.count_nonzero(at)) for end, at in ends}
    if max(plateaus.values()) < count * MINIMUM_PLATEAU:
        return [Clipping(end, plateaus[end] / count, 0.0, None) for end, _ in ends]
    block = max(1, math.ceil(max(field.shape) / GRID_CELLS))
    image_cells = _cells(inside, block)
    outside = image_cells * 2 < block * block  # mostly padding, or past the image's edge
    cells = {"minimum": _cells(at_low, block), "maximum": _cells(at_high, block)}
    plateau = {end: (counted * 2 >= image_cells) & ~outside for end, counted in cells.items()}
    body = ~outside & ~plateau["minimum"] & ~plateau["maximum"]
    silhouette = _between(body, 0) & _between(body, 1)
    area = int(image_cells[silhouette].sum())
    found = []
    for end, _ in ends:
        within = plateau[end] & silhouette
        enclosed = int(cells[end][within].sum()) / area if area else 0.0
        box = _box(within, block, field.shape, top, left)
        found.append(Clipping(end, plateaus[end] / count, enclosed, box))
    return found


def _cells(values: Pixels, block: int, dtype: type = np.int64) -> Pixels:
    """Sums over blocks of `block` x `block` pixels (the last ones cut short)."""
    rows, columns = values.shape
    grid_rows, grid_columns = math.ceil(rows / block), math.ceil(columns / block)
    padded = np.zeros((grid_rows * block, grid_columns * block), dtype=values.dtype)
    padded[:rows, :columns] = values
    blocks = padded.reshape(grid_rows, block, grid_columns, block)
    sums: Pixels = blocks.sum(axis=(1, 3), dtype=dtype)
    return sums


def _between(body: Mask, axis: int) -> Mask:
    """Cells with body on both sides of them along `axis` (or body themselves)."""
    before = np.logical_or.accumulate(body, axis=axis)
    after = np.flip(np.logical_or.accumulate(np.flip(body, axis), axis=axis), axis)
    result: Mask = before & after
    return result


def _box(cells: Mask, block: int, shape: tuple[int, ...], top: int, left: int) -> Box | None:
    """The bounding box of `cells`, in the image's pixels (the field starts at top, left)."""
    if not cells.any():
        return None
    cell_rows, cell_columns = np.nonzero(cells)
    first_row, first_column = int(cell_rows.min()) * block, int(cell_columns.min()) * block
    last_row = min(shape[0], (int(cell_rows.max()) + 1) * block)
    last_column = min(shape[1], (int(cell_columns.max()) + 1) * block)
    return Box(
        float(left + first_column),
        float(top + first_row),
        float(last_column - first_column),
        float(last_row - first_row),
    )


def _number(value: object, default: float) -> float:
    """A DS value (or the first of several) as a float; `default` when absent or unreadable."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default

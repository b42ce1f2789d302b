"""Pixel phantoms for the quality analyzer: numpy arrays of stored values shaped like what
modalities write, and the defects the analyzer looks for, injected into them.

Each phantom is built from densities (soft tissue, air in the lungs, bone) the way a processed
radiograph shows them: presentation values (MONOCHROME2, bright is dense), quantum noise that
grows where few photons reach the detector and with lower exposure, then quantised to the bit
depth. The hard cases the analyzer must not flag are options: a background the processing
clamped to black (`dark_background`), an electronic shutter painting the collimated border
white (`collimation`), bone close to white (`dense_bone`), a burned-in marker, a hand on the
detector (most of the image direct exposure), a mammogram's background, CT padding and metal.

Everything is drawn from the `numpy.random.Generator` passed in: the same seed, the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Mask = NDArray[np.bool_]
End = Literal["minimum", "maximum"]


@dataclass(frozen=True)
class Phantom:
    """Stored values (MONOCHROME2 orientation, 0 .. 2**bits - 1), and where the anatomy that
    saturates first lies (`target`: the lungs, dense breast tissue, a hand's soft tissue;
    `dark_target`: a breast's fat, which over-exposure burns to black)."""

    pixels: Array
    target: Mask
    body: Mask
    dark_target: Mask | None = None  # what saturates first to black, when not `target`


def grid(rows: int, columns: int) -> tuple[Array, Array]:
    """Normalised coordinates: y from -1 (top) to 1 (bottom), x from -1 (left) to 1."""
    y = np.linspace(-1.0, 1.0, rows)[:, None] * np.ones((1, columns))
    x = np.ones((rows, 1)) * np.linspace(-1.0, 1.0, columns)[None, :]
    return y, x


def ellipsoid(y: Array, x: Array, cy: float, cx: float, ry: float, rx: float) -> Array:
    """Thickness (0 .. 1) of an ellipsoid seen from the front: 1 in the middle, 0 at its rim."""
    inside = 1.0 - ((y - cy) / ry) ** 2 - ((x - cx) / rx) ** 2
    result: Array = np.sqrt(np.clip(inside, 0.0, None))
    return result


def smooth_noise(rng: np.random.Generator, rows: int, columns: int, cells: int) -> Array:
    """Low-frequency texture in -1 .. 1: random values on a coarse grid, bilinearly spread."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, rows), np.linspace(0, cells, columns)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    result: Array = a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx
    return result


def _band(y: Array, x: Array, y0: float, x0: float, y1: float, x1: float, half: float) -> Mask:
    """Pixels within `half` of the segment (x0, y0) - (x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    result: Mask = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= half * half
    return result


def _present(
    rng: np.random.Generator,
    density: Array,
    body: Mask,
    bits: int,
    *,
    noise: float,
    dark_background: bool,
    dense_bone: bool,
) -> Array:
    """Densities to stored presentation values: quantum noise (larger where the object is
    dense: fewer photons), the processing's grey scale, and its clamp at black."""
    high = (1 << bits) - 1
    sigma = noise * np.exp(0.9 * density)
    signal = density + rng.normal(0.0, 1.0, density.shape) * sigma
    top = np.quantile(signal[body], 0.999 if dense_bone else 1.0)
    scale = 0.97 if dense_bone else 0.86
    values = 0.05 + scale * np.clip(signal, -0.2, None) / top
    if dark_background:
        values -= 0.08  # the look-up table puts direct exposure below its black point
    return np.clip(np.rint(values * high), 0, high).astype(np.int64)


def chest(
    rng: np.random.Generator,
    rows: int = 256,
    columns: int = 256,
    *,
    bits: int = 12,
    noise: float = 0.012,
    dark_background: bool = False,
    collimation: bool | Literal["oblique"] = False,
    dense_bone: bool = False,
    marker: bool = True,
) -> Phantom:
    """A PA chest radiograph: trunk and shoulders, lungs, heart, spine, ribs, clavicles."""
    y, x = grid(rows, columns)
    jitter = rng.uniform(-0.04, 0.04, size=4)
    trunk = ellipsoid(y, x, 0.2 + jitter[0], 0.0, 1.1, 0.8 + jitter[1])
    neck = ellipsoid(y, x, -1.0, 0.0, 0.45, 0.2)
    soft = np.maximum(trunk, 0.6 * neck)
    body = soft > 0.02
    lung_ry, lung_rx = 0.55 + jitter[2], 0.25 + jitter[3] / 2
    lungs = ellipsoid(y, x, -0.05, -0.36, lung_ry, lung_rx) + ellipsoid(
        y, x, -0.05, 0.36, lung_ry, lung_rx
    )
    texture = 0.05 * smooth_noise(rng, rows, columns, 24) * (lungs > 0)
    heart = ellipsoid(y, x, 0.22, 0.08, 0.3, 0.27)
    belly = np.clip((y - 0.45) / 0.3, 0.0, 1.0) * (trunk > 0)
    bone = np.zeros_like(y)
    bone[(np.abs(x) < 0.06) & body] += 0.55
    for side in (-1.0, 1.0):
        for k in range(9):
            start = -0.62 + 0.13 * k
            rib = _band(y, x, start, side * 0.08, start + 0.16, side * 0.74, 0.022)
            bone[rib & body] += 0.28
        bone[_band(y, x, -0.64, side * 0.1, -0.74, side * 0.62, 0.03) & body] += 0.35
    if dense_bone:
        bone *= 2.2
    density = 1.1 * soft - 0.75 * lungs + texture + 0.45 * heart + 0.4 * belly + bone
    pixels = _present(
        rng,
        density,
        body,
        bits,
        noise=noise,
        dark_background=dark_background,
        dense_bone=dense_bone,
    )
    high = (1 << bits) - 1
    if marker:  # a burned-in side marker, drawn at full white
        top, left = rows // 12, columns - columns // 6
        pixels[top : top + max(2, rows // 28), left : left + max(2, columns // 40)] = high
    if collimation:
        _shutter(rng, pixels, high, oblique=collimation == "oblique")
    return Phantom(pixels, lungs > 0.15, body)


def hand(
    rng: np.random.Generator,
    rows: int = 256,
    columns: int = 200,
    *,
    bits: int = 12,
    noise: float = 0.012,
    collimation: bool = True,
) -> Phantom:
    """A PA hand on the detector: most of the field is direct exposure, clamped to black."""
    y, x = grid(rows, columns)
    soft = ellipsoid(y, x, 0.45, 0.0, 0.38, 0.42)
    bone = np.zeros_like(y)
    for k, cx in enumerate((-0.3, -0.1, 0.1, 0.3)):
        length = 0.75 if k in (1, 2) else 0.6
        finger = ellipsoid(y, x, 0.15 - length / 2, cx, length / 2 + 0.1, 0.085)
        soft = np.maximum(soft, finger)
        bone[_band(y, x, 0.6, cx * 0.8, 0.1 - length, cx, 0.035)] += 0.6
    thumb = _band(y, x, 0.4, -0.4, -0.05, -0.8, 0.08)
    soft = np.maximum(soft, 0.8 * thumb)
    bone[_band(y, x, 0.45, -0.38, 0.0, -0.76, 0.03)] += 0.6
    body = soft > 0.02
    density = 0.8 * soft + bone * body
    pixels = _present(rng, density, body, bits, noise=noise, dark_background=True, dense_bone=False)
    if collimation:
        _shutter(rng, pixels, (1 << bits) - 1)
    return Phantom(pixels, body & (bone == 0), body)


def mammogram(
    rng: np.random.Generator,
    rows: int = 256,
    columns: int = 192,
    *,
    bits: int = 12,
    extent: float = 0.7,
    mlo: bool = False,
    right: bool = False,
    noise: float = 0.01,
) -> Phantom:
    """A processed mammogram: the breast against the chest wall (the left edge, or the right
    one for `right`), reaching `extent` of the width, fibroglandular tissue in its middle, the
    pectoral muscle in the upper corner for an MLO view, and the background at black."""
    y, x = grid(rows, columns)
    depth = (x + 1.0) / 2.0  # 0 at the chest wall, 1 at the far edge
    if right:
        depth = depth[:, ::-1]
    breast = ellipsoid(y, depth, 0.0, 0.0, 0.88, extent)
    body = breast > 0
    plateau = np.clip(breast * 4.0, 0.0, 1.0)  # compressed: even thickness but at the skin
    glands = np.clip(smooth_noise(rng, rows, columns, 10) + 0.3, 0.0, None)
    glands *= ellipsoid(y, depth, -0.1, 0.45 * extent, 0.55, 0.35 * extent) > 0
    density = 0.5 * plateau + 0.55 * glands * body
    if mlo:
        density += 0.35 * ((depth + (y + 1.0) * 0.3 < 0.35) & body)
    pixels = _present(rng, density, body, bits, noise=noise, dark_background=True, dense_bone=False)
    return Phantom(pixels, body & (glands > 0.25), body, body & (glands == 0))


def ct_slice(
    rng: np.random.Generator,
    size: int = 128,
    *,
    region: Literal["chest", "abdomen", "head"] = "chest",
    position: float = 0.0,
    metal: bool = False,
) -> tuple[Array, Mask]:
    """A CT slice in Hounsfield units and its round field of view. `position` (-1 .. 1) moves
    the slice along the body: the lungs and organs change size from slice to slice."""
    y, x = grid(size, size)
    hu = np.full((size, size), -1000.0)
    fov = x * x + y * y <= 0.98
    table = (y > 0.72) & (y < 0.78) & (np.abs(x) < 0.8)
    hu[table] = 250.0
    if region == "head":
        skull = ellipsoid(y, x, 0.0, 0.0, 0.82, 0.7) > 0
        brain = ellipsoid(y, x, 0.0, 0.0, 0.74, 0.62) > 0
        hu[skull] = 1200.0
        hu[brain] = 35.0 + 8.0 * smooth_noise(rng, size, size, 8)[brain]
    else:
        outer = ellipsoid(y, x, 0.05, 0.0, 0.58, 0.8) > 0
        inner = ellipsoid(y, x, 0.05, 0.0, 0.51, 0.72) > 0
        hu[outer] = -100.0
        hu[inner] = 40.0
        scale = 1.0 - 0.3 * abs(position)
        if region == "chest":
            for cx in (-0.36, 0.36):
                lung = ellipsoid(y, x, -0.02, cx, 0.38 * scale, 0.27 * scale) > 0
                hu[lung] = -850.0 + 40.0 * smooth_noise(rng, size, size, 16)[lung]
            hu[ellipsoid(y, x, -0.05, 0.1, 0.2, 0.2) > 0] = 45.0
        else:
            hu[ellipsoid(y, x, -0.1, -0.32, 0.28 * scale, 0.3) > 0] = 60.0  # liver
            gas = ellipsoid(y, x, 0.0, 0.3, 0.1, 0.12) > 0
            hu[gas] = -950.0
        spine = ellipsoid(y, x, 0.38, 0.0, 0.11, 0.11) > 0
        hu[spine] = 1000.0
        hu[ellipsoid(y, x, 0.38, 0.0, 0.085, 0.085) > 0] = 300.0
    if metal:
        hu[ellipsoid(y, x, 0.36, -0.1, 0.035, 0.035) > 0] = 6000.0
        hu[ellipsoid(y, x, 0.36, 0.1, 0.035, 0.035) > 0] = 6000.0
    hu += rng.normal(0.0, 12.0, hu.shape)
    return hu, fov


def blank(
    rng: np.random.Generator,
    rows: int,
    columns: int,
    *,
    level: int,
    noise: float,
    high: int,
    marker: bool = False,
) -> Array:
    """An image with nothing in it: `level` plus noise (standard deviation `noise`, in stored
    values; 0 gives a perfectly uniform image), optionally with a burned-in marker."""
    pixels = np.full((rows, columns), float(level))
    if noise:
        pixels += rng.normal(0.0, noise, pixels.shape)
    result: Array = np.clip(np.rint(pixels), 0, high).astype(np.int64)
    if marker:
        result[rows // 12 : rows // 12 + max(2, rows // 28), 4 : 4 + max(2, columns // 40)] = high
    return result


def flat_field(
    rng: np.random.Generator, rows: int, columns: int, *, level: int, noise: float, high: int
) -> Array:
    """An exposure with nobody in the beam: the tube's heel effect (about 10 % brighter on one
    side) and noise, no anatomy."""
    _, x = grid(rows, columns)
    pixels = level * (1.0 + 0.05 * x) + rng.normal(0.0, noise, (rows, columns))
    result: Array = np.clip(np.rint(pixels), 0, high).astype(np.int64)
    return result


def clip_share(
    pixels: Array,
    target: Mask,
    share: float,
    end: End,
    high: int,
    where: Mask | None = None,
) -> Array:
    """The same image with its grey scale shifted so that `share` of the `target` pixels land
    on the stored `end` (0 or `high`), as over-exposure past the detector's range or a
    processing look-up table set too far does; only `where` (e.g. the breast, when the
    processing segments the background), or everywhere."""
    if end == "minimum":
        shift = -float(np.quantile(pixels[target], share))
    else:
        shift = high - float(np.quantile(pixels[target], 1.0 - share))
    shifted = np.clip(pixels + shift, 0, high)
    if where is not None:
        shifted = np.where(where, shifted, pixels)
    return shifted.astype(np.int64)


def stretch(pixels: Array, gain: float, high: int) -> Array:
    """The grey scale stretched by `gain` about its middle: both ends saturate."""
    middle = float(np.median(pixels))
    return np.clip(np.rint(middle + (pixels - middle) * gain), 0, high).astype(np.int64)


def invert(pixels: Array, high: int) -> Array:
    """The same image in MONOCHROME1 (the highest value shows black)."""
    result: Array = high - pixels
    return result


def _shutter(rng: np.random.Generator, pixels: Array, high: int, oblique: bool = False) -> None:
    """An electronic shutter over the collimated border, at full white: straight bands, or
    (`oblique`) the corners cut by a collimator turned against the detector."""
    rows, columns = pixels.shape
    if oblique:
        y, x = grid(rows, columns)
        turn = float(rng.uniform(0.15, 0.35))
        u, v = x * np.cos(turn) + y * np.sin(turn), -x * np.sin(turn) + y * np.cos(turn)
        pixels[(np.abs(u) > 0.92) | (np.abs(v) > 0.92)] = high
        return
    top, bottom, left, right = (int(v) for v in rng.uniform(0.03, 0.12, size=4) * rows)
    pixels[:top, :] = high
    pixels[rows - bottom :, :] = high
    pixels[:, : max(1, left * columns // rows)] = high
    pixels[:, columns - max(1, right * columns // rows) :] = high

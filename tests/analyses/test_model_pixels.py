"""What an operator model is given: the image's pixels prepared as its manifest's input spec
says (modality values, window, resize, channels, normalisation, layout), numbers checked by
hand on real DICOM images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.analyses.model_manifest import InputSpec
from sidecar.analyses.model_pixels import frames, prepare, resize

from onnx_graphs import radiograph

pytestmark = pytest.mark.one_database


def spec(**fields: Any) -> InputSpec:
    return InputSpec.model_validate(
        {"name": "image", "layout": "NCHW", "shape": [1, 1, 2, 2], **fields}
    )


def test_bilinear_resize_maps_the_image_extent_onto_the_output() -> None:
    image = np.array([[0.0, 1.0], [2.0, 3.0]])

    larger = resize(image, 4, 4)

    # Output pixel centres at 1/8, 3/8, 5/8, 7/8 of the width are image columns -0.25 (the
    # edge: 0), 0.25, 0.75, 1.25 (the edge: 1).
    assert larger[0].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert larger[:, 0].tolist() == [0.0, 0.5, 1.5, 2.0]
    # Halving averages each 2 x 2 block.
    assert resize(larger, 2, 2).tolist() == [[0.375, 1.125], [1.875, 2.625]]
    colour = np.stack([image, image * 2, image * 3], axis=2)
    assert resize(colour, 4, 4)[0, 1].tolist() == [0.25, 0.5, 0.75]


def test_the_images_own_first_window_applies_and_without_one_its_full_range(
    tmp_path: Path,
) -> None:
    pixels = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    windowed = radiograph(tmp_path, pixels, window=(100.5, 200))
    windowed.WindowCenter, windowed.WindowWidth = [100.5, 2000], [200, 4000]  # two windows
    plain = radiograph(tmp_path, pixels)
    [(frame, values)] = frames(windowed)
    assert frame is None

    tensor = prepare(values, windowed, spec(window="image", normalisation="none"))
    # 100.5 - 0.5 - 199/2 = 0.5 maps to 0, 0.5 + 199 to 1.
    assert tensor[0, 0] == pytest.approx(np.array([[0.0, 99.5 / 199], [1.0, 1.0]]))
    full_range = prepare(frames(plain).__next__()[1], plain, spec(window="image"))
    assert full_range[0, 0] == pytest.approx(np.array([[0.0, 0.25], [0.5, 1.0]]))


def test_mean_and_std_per_channel_and_the_layouts(tmp_path: Path) -> None:
    image = radiograph(tmp_path, np.array([[0, 4095], [4095, 0]], dtype=np.uint16))
    values = next(frames(image))[1]
    normalisation = {"mean": [0.5, 0.0, 1.0], "std": [0.5, 1.0, 2.0]}

    first = prepare(
        values, image, spec(shape=[1, 3, 2, 2], window="image", normalisation=normalisation)
    )
    last = prepare(
        values,
        image,
        spec(layout="NHWC", shape=[1, 2, 2, 3], window="image", normalisation=normalisation),
    )

    assert first.dtype == np.float32 and first.shape == (1, 3, 2, 2)
    assert first[0, :, 0, 1].tolist() == [1.0, 1.0, 0.0]  # white: (1 - mean) / std
    assert first[0, :, 0, 0].tolist() == [-1.0, 0.0, -0.5]  # black: (0 - mean) / std
    assert last.shape == (1, 2, 2, 3)
    assert np.array_equal(last[0], first[0].transpose(1, 2, 0))

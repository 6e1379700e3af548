"""Gather + scatter (fusion) of a 2560×3328 image: C++ tiler vs its numpy twin (pytest-benchmark)."""
from __future__ import annotations

import numpy as np
import pytest

from mcgenref_fast import tiling, tiling_numpy
from mcgenref_fast.config import TileConfig

pytest.importorskip("mcgenref_fast._tiler")

H, W = 3328, 2560


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:H, :W]
    mask = (yy - H / 2) ** 2 / (H / 2) ** 2 + xx ** 2 / (0.8 * W) ** 2 <= 1  # a breast against the left edge
    grid = tiling.make_grid((H, W), mask, TileConfig())
    image = rng.random((H, W), dtype=np.float32)
    return grid, image


def _cpp(grid, image):
    return tiling.fuse(tiling.gather(image, grid), grid)


def _numpy(grid, image):
    tiles = tiling_numpy.gather(image, grid.origins, grid.tile_px)
    return tiling_numpy.fuse(tiles, grid.weights, grid.origins, H, W)


@pytest.mark.benchmark(group="tiler-gather-fuse-2560x3328")
def test_gather_fuse_cpp(benchmark, case):
    out = benchmark(_cpp, *case)
    assert out.shape == (H, W)


@pytest.mark.benchmark(group="tiler-gather-fuse-2560x3328")
def test_gather_fuse_numpy(benchmark, case):
    out = benchmark(_numpy, *case)
    np.testing.assert_array_equal(out, _cpp(*case))

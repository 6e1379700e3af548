"""Tiler specification (SPEC §4 Tiles, §7 last line): coverage, partition of unity, x+1 stitching, C++ == numpy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcgenref_fast import tiling, tiling_numpy
from mcgenref_fast.config import TileConfig
from mcgenref_fast.errors import ConfigError

cpp = pytest.importorskip("mcgenref_fast._tiler", reason="C++ tiler not built")


@st.composite
def image_case(draw):
    tile = draw(st.sampled_from([8, 16, 17, 32]))
    overlap = draw(st.integers(0, tile // 2))
    height = draw(st.integers(1, 90))
    width = draw(st.integers(1, 90))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["blobs", "holes", "single", "full"]))
    mask = np.zeros((height, width), dtype=bool)
    if kind == "full":
        mask[:] = True
    elif kind == "single":
        mask[rng.integers(height), rng.integers(width)] = True
    else:
        for _ in range(rng.integers(1, 5)):  # islands
            cy, cx, r = rng.integers(height), rng.integers(width), rng.integers(1, 30)
            yy, xx = np.ogrid[:height, :width]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if kind == "holes":
            mask &= rng.random((height, width)) > 0.2
            if not mask.any():
                mask[0, 0] = True
    return height, width, tile, overlap, mask, rng


def check_grid(height, width, tile, overlap, mask, rng):
    grid = tiling.make_grid((height, width), mask, TileConfig(tile, overlap))
    # every breast pixel is covered by an active tile
    assert grid.covered[mask].all()
    # weights sum to 1 on covered pixels, 0 elsewhere
    total = tiling.fuse(np.ones((grid.n_tiles, tile, tile), np.float32), grid)
    assert np.abs(total[grid.covered] - 1).max() <= 1e-6
    assert (total[~grid.covered] == 0).all()
    # stitching x + 1 returns x + 1 within 4 ulp
    x = rng.normal(size=(height, width)).astype(np.float32)
    xp1 = x + np.float32(1)
    stitched = tiling.fuse(tiling.gather(xp1, grid), grid)
    ulp = np.spacing(np.abs(xp1[grid.covered]))
    assert (np.abs(stitched[grid.covered] - xp1[grid.covered]) <= 4 * ulp).all()
    # the C++ tiler equals the numpy twin exactly
    o_np, g_np, w_np = tiling_numpy.make_grid(height, width, tile, overlap, mask.astype(np.uint8))
    np.testing.assert_array_equal(grid.origins, o_np)
    np.testing.assert_array_equal(grid.grid_rc, g_np)
    np.testing.assert_array_equal(grid.weights, w_np)
    tiles_cpp = tiling.gather(xp1, grid)
    tiles_np = tiling_numpy.gather(xp1, o_np, tile)
    np.testing.assert_array_equal(tiles_cpp, tiles_np)
    z = rng.normal(size=tiles_cpp.shape).astype(np.float32)
    np.testing.assert_array_equal(tiling.fuse(z, grid), tiling_numpy.fuse(z, w_np, o_np, height, width))
    return grid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_case())
def test_grid_properties_hypothesis(case):
    check_grid(*case)


@pytest.mark.parametrize("height,width,tile,overlap", [(511, 237, 64, 16), (511, 237, 64, 0), (511, 237, 64, 32),
                                                       (40, 30, 64, 16), (64, 64, 64, 32), (257, 256, 256, 32)])
def test_named_sizes(height, width, tile, overlap):
    rng = np.random.default_rng(7)
    mask = np.zeros((height, width), bool)
    mask[height // 4: 3 * height // 4, : width // 2] = True
    mask[height // 2, width - 1] = True  # an island at the far edge
    mask[height // 3, width // 8] = False  # a hole
    grid = check_grid(height, width, tile, overlap, mask, rng)
    if height <= tile and width <= tile:
        assert grid.n_tiles == 1


def test_last_tile_shifted_onto_edge_and_stride():
    assert tiling_numpy.axis_origins(511, 64, 16) == cpp.axis_origins(511, 64, 16)
    o = cpp.axis_origins(511, 64, 16)
    assert o[0] == 0 and o[-1] == 511 - 64
    assert all(b - a == 48 for a, b in zip(o[:-2], o[1:-1]))
    assert cpp.axis_origins(30, 64, 16) == [0]


def test_inactive_tiles_skipped_and_taper_only_toward_active_neighbours():
    mask = np.zeros((100, 100), bool)
    mask[:10, :10] = True  # only the top-left tile is active
    grid = tiling.make_grid((100, 100), mask, TileConfig(40, 10))
    assert grid.n_tiles == 1
    # lone active tile: no taper at all, weight 1 everywhere inside the image
    assert (grid.weights[0] == 1).all()
    assert not grid.covered[50:, 50:].any()


def test_weights_taper_in_overlap():
    mask = np.ones((64, 112), bool)
    grid = tiling.make_grid((64, 112), mask, TileConfig(64, 16))
    assert grid.n_tiles == 2
    w0, w1 = grid.weights
    assert w0[0, 0] == 1 and w0[0, 63] < 0.05 and w1[0, 0] < 0.05  # tapered toward each other
    np.testing.assert_allclose(w0[:, 48:] + w1[:, :16], 1, atol=1e-6)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(3)
    mask = rng.random((301, 277)) > 0.5
    x = rng.normal(size=(301, 277)).astype(np.float32)
    cpp.set_num_threads(1)
    g1 = tiling.make_grid(mask.shape, mask, TileConfig(64, 24))
    f1 = tiling.fuse(tiling.gather(x, g1), g1)
    cpp.set_num_threads(2)
    g2 = tiling.make_grid(mask.shape, mask, TileConfig(64, 24))
    np.testing.assert_array_equal(g1.weights, g2.weights)
    np.testing.assert_array_equal(f1, tiling.fuse(tiling.gather(x, g2), g2))


@pytest.mark.parametrize("tile,overlap", [(64, 33), (64, -1), (0, 0)])
def test_bad_tile_config_raises(tile, overlap):
    with pytest.raises(ValueError):
        TileConfig(tile, overlap)


def test_bad_shapes_raise():
    mask = np.ones((10, 10), bool)
    with pytest.raises(ConfigError, match="breast mask shape"):
        tiling.make_grid((10, 11), mask, TileConfig(8, 2))
    grid = tiling.make_grid((10, 10), mask, TileConfig(8, 2))
    with pytest.raises(ConfigError, match="image shape"):
        tiling.gather(np.zeros((11, 10), np.float32), grid)
    with pytest.raises(ConfigError, match="tile batch shape"):
        tiling.fuse(np.zeros((1, 8, 8), np.float32), grid)

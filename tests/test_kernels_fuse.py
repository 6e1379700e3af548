"""Kernel (b) fuse_tiles (SPEC §5): Triton (interpreter) and the torch twin against the C++ tiler's fusion.

Odd grids: tiles not dividing the image, a 1-tile image smaller than the tile, O = T/2, O = 0, odd T,
inactive tiles. The C++ fuse accumulates `0 + w·t + ...` in float32 in tile order; both twins do the same
arithmetic in the same order, so they equal it bit for bit (asserted; SPEC's tolerance is 1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgenref_fast import ops_torch, tiling, tiling_numpy
from mcgenref_fast.config import TileConfig
from mcgenref_fast.kernels import fuse_tiles as fuse_kernel
from mcgenref_fast.refine_types import TileTensors
from mcgenref_fast.refine_types import fuse_tiles as reference_fuse
from refine_inputs import LaunchRecorder

# (H, W, T, O, mask kind)
GRIDS = [
    (70, 53, 16, 8, "sparse"),     # O = T/2, tiles not dividing, inactive tiles
    (40, 90, 17, 0, "sparse"),     # odd T, O = 0
    (12, 10, 16, 4, "full"),       # one tile, larger than the image (padding)
    (37, 61, 13, 6, "disc"),       # odd T, O = floor(T/2), last tiles shifted a lot
    (66, 66, 32, 16, "full"),      # O = T/2, 3 tiles per axis over some pixels
    (9, 80, 8, 3, "holes"),        # thin image
]


def _mask(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "full":
        return np.ones((h, w), bool)
    if kind == "sparse":
        return rng.random((h, w)) > 0.985
    yy, xx = np.ogrid[:h, :w]
    disc = (yy - h / 2) ** 2 + xx ** 2 <= (0.8 * w) ** 2
    return disc & (rng.random((h, w)) > 0.3) if kind == "holes" else disc


def _case(h, w, tile, overlap, kind, seed=0):
    rng = np.random.default_rng(seed)
    grid = tiling.make_grid((h, w), _mask(kind, h, w, rng), TileConfig(tile, overlap))
    return grid, ops_torch.TileIndex.from_grid(grid), rng


@pytest.mark.parametrize("h,w,tile,overlap,kind", GRIDS)
def test_triton_fuse_equals_cpp_fuse(h, w, tile, overlap, kind):
    grid, index, rng = _case(h, w, tile, overlap, kind)
    assert grid.n_tiles > 0
    tiles = (3.0 * rng.standard_normal((grid.n_tiles, tile, tile))).astype(np.float32)
    expected = tiling.fuse(tiles, grid)
    got = fuse_kernel.fuse_tiles(torch.from_numpy(tiles), index).numpy()
    assert np.abs(got - expected).max() <= 1e-6
    np.testing.assert_array_equal(got, expected)
    assert (got[~grid.covered] == 0).all()


@pytest.mark.parametrize("h,w,tile,overlap,kind", GRIDS)
def test_torch_fuse_equals_cpp_and_reference(h, w, tile, overlap, kind):
    grid, index, rng = _case(h, w, tile, overlap, kind, seed=1)
    tiles = (3.0 * rng.standard_normal((grid.n_tiles, tile, tile))).astype(np.float32)
    got = ops_torch.fuse_tiles(torch.from_numpy(tiles), index)
    np.testing.assert_array_equal(got.numpy(), tiling.fuse(tiles, grid))
    ref = reference_fuse(torch.from_numpy(tiles), TileTensors.from_grid(grid))
    np.testing.assert_array_equal(got.numpy(), ref.numpy())


def test_sample_batch_fuses_each_sample():
    grid, index, rng = _case(37, 61, 13, 6, "disc", seed=2)
    tiles = rng.standard_normal((3, grid.n_tiles, 13, 13)).astype(np.float32)
    got = fuse_kernel.fuse_tiles(torch.from_numpy(tiles), index)
    twin = ops_torch.fuse_tiles(torch.from_numpy(tiles), index)
    assert got.shape == (3, 37, 61) and twin.shape == (3, 37, 61)
    for s in range(3):
        expected = tiling.fuse(tiles[s], grid)
        np.testing.assert_array_equal(got[s].numpy(), expected)
        np.testing.assert_array_equal(twin[s].numpy(), expected)


def test_partition_of_unity_and_x_plus_one_stitching():
    grid, index, rng = _case(66, 66, 32, 16, "disc", seed=3)
    ones = torch.ones((grid.n_tiles, 32, 32))
    total = fuse_kernel.fuse_tiles(ones, index).numpy()
    assert np.abs(total[grid.covered] - 1).max() <= 1e-6
    x = rng.standard_normal((66, 66)).astype(np.float32) + np.float32(1)
    stitched = fuse_kernel.fuse_tiles(torch.from_numpy(tiling.gather(x, grid)), index).numpy()
    ulp = np.spacing(np.abs(x[grid.covered]))
    assert (np.abs(stitched[grid.covered] - x[grid.covered]) <= 4 * ulp).all()


def test_gather_tiles_equals_cpp_gather_and_is_the_adjoint():
    grid, index, rng = _case(37, 61, 13, 6, "holes", seed=4)
    canvas = rng.standard_normal((37, 61)).astype(np.float32)
    got = ops_torch.gather_tiles(torch.from_numpy(canvas), index)
    np.testing.assert_array_equal(got.numpy(), tiling.gather(canvas, grid))
    # <fuse(t), c> == <t, w * gather(c)>: the fusion's adjoint, what autograd uses
    t = torch.from_numpy(rng.standard_normal((grid.n_tiles, 13, 13)).astype(np.float32)).double()
    c = torch.from_numpy(canvas).double()
    lhs = (ops_torch.fuse_tiles(t.float(), index).double() * c).sum()
    rhs = (t * index.weights.double() * ops_torch.gather_tiles(c.float(), index).double()).sum()
    assert abs(float(lhs - rhs)) <= 1e-4 * max(1.0, abs(float(lhs)))


def test_no_active_tile_gives_a_zero_canvas():
    grid = tiling.make_grid((20, 30), np.zeros((20, 30), bool), TileConfig(8, 2))
    index = ops_torch.TileIndex.from_grid(grid)
    tiles = torch.zeros((0, 8, 8))
    assert not fuse_kernel.fuse_tiles(tiles, index).any()
    assert not ops_torch.fuse_tiles(tiles, index).any()


def test_candidate_rule_finds_every_covering_tile():
    """The kernel's rule: the grid indices covering pixel y are among floor(y/s) - 1 .. floor(y/s) + 1."""
    for tile in (1, 2, 5, 8, 13, 16):
        for overlap in range(tile // 2 + 1):
            stride = tile - overlap
            for length in range(1, 4 * tile + 3):
                origins = tiling_numpy.axis_origins(length, tile, overlap)
                for y in range(length):
                    covering = {g for g, o in enumerate(origins) if o <= y < o + tile}
                    assert covering, (tile, overlap, length, y)
                    assert covering <= {y // stride - 1, y // stride, y // stride + 1}, (tile, overlap, length, y)


@pytest.mark.parametrize("fuse", [fuse_kernel.fuse_tiles, ops_torch.fuse_tiles])
def test_bad_inputs_raise_value_error(fuse):
    grid, index, _ = _case(37, 61, 13, 6, "disc")
    n = grid.n_tiles
    with pytest.raises(ValueError, match="float32"):
        fuse(torch.zeros((n, 13, 13), dtype=torch.float64), index)
    with pytest.raises(ValueError, match=r"\(%d, 13, 13\)" % n):
        fuse(torch.zeros((n + 1, 13, 13)), index)
    with pytest.raises(ValueError, match="dimensions"):
        fuse(torch.zeros((13, 13)), index)
    with pytest.raises(ValueError, match="device"):
        fuse(torch.zeros((n, 13, 13), device="meta"), index)
    with pytest.raises(ValueError, match="TileIndex"):
        fuse(torch.zeros((n, 13, 13)), grid)


@pytest.mark.parametrize("h,w,tile,overlap,kind", GRIDS[:4])
def test_pure_torch_route_equals_cpp(monkeypatch, h, w, tile, overlap, kind):
    """Without the C++ tiler (or under autograd, or on CUDA) the twin fuses with index_add in tile order."""
    monkeypatch.setattr(ops_torch, "_cpp_tiler", lambda: None)
    grid, index, rng = _case(h, w, tile, overlap, kind, seed=5)
    tiles = (3.0 * rng.standard_normal((2, grid.n_tiles, tile, tile))).astype(np.float32)
    got = ops_torch.fuse_tiles(torch.from_numpy(tiles), index)
    for s in range(2):
        np.testing.assert_array_equal(got[s].numpy(), tiling.fuse(tiles[s], grid))
    canvas = rng.standard_normal((2, h, w)).astype(np.float32)
    gathered = ops_torch.gather_tiles(torch.from_numpy(canvas), index)
    for s in range(2):
        np.testing.assert_array_equal(gathered[s].numpy(), tiling.gather(canvas[s], grid))


def test_torch_fuse_is_differentiable():
    grid, index, rng = _case(37, 61, 13, 6, "disc", seed=6)
    tiles = torch.from_numpy(rng.standard_normal((grid.n_tiles, 13, 13)).astype(np.float32)).requires_grad_(True)
    upstream = torch.from_numpy(rng.standard_normal((37, 61)).astype(np.float32))
    canvas = ops_torch.fuse_tiles(tiles, index)
    np.testing.assert_array_equal(canvas.detach().numpy(), tiling.fuse(tiles.detach().numpy(), grid))
    (grad,) = torch.autograd.grad((canvas * upstream).sum(), tiles)
    expected = index.weights * ops_torch.gather_tiles(upstream, index)
    assert (grad - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("block_r,block_c,num_warps", [(8, 16, 1), (16, 64, 2), (64, 32, None)])
def test_triton_fuse_launch_override_gives_the_same_canvas(block_r, block_c, num_warps, monkeypatch):
    """The tuning overrides (`bench/kernel_tuning.py`) only re-cut the canvas into programs: the C++ fusion's
    canvas bit for bit, on an odd grid with O = T/2 and partial last blocks; the launch really used them."""
    grid, index, rng = _case(70, 53, 16, 8, "sparse", seed=4)
    tiles = (3.0 * rng.standard_normal((2, grid.n_tiles, 16, 16))).astype(np.float32)
    recorder = LaunchRecorder(fuse_kernel._fuse_tiles_kernel)
    monkeypatch.setattr(fuse_kernel, "_fuse_tiles_kernel", recorder)
    got = fuse_kernel.fuse_tiles(torch.from_numpy(tiles), index, block_r=block_r, block_c=block_c,
                                 num_warps=num_warps).numpy()
    (launch_grid, kwargs), = recorder.launches
    used_r, used_c, used_warps = kwargs["BLOCK_R"], kwargs["BLOCK_C"], kwargs["num_warps"]
    assert (used_r, used_c) == (block_r, block_c) and launch_grid == (-(-70 // block_r), -(-53 // block_c), 2)
    assert used_warps == (num_warps or 4)
    for s in range(2):
        np.testing.assert_array_equal(got[s], tiling.fuse(tiles[s], grid))


@pytest.mark.parametrize("bad", [{"block_r": 6}, {"block_c": -4}, {"num_warps": 33}])
def test_triton_fuse_rejects_bad_launch_overrides(bad):
    grid, index, rng = _case(12, 10, 16, 4, "full")
    tiles = torch.zeros((grid.n_tiles, 16, 16))
    with pytest.raises(ValueError, match="power of two|at most 32"):
        fuse_kernel.fuse_tiles(tiles, index, **bad)

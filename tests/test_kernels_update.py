"""Kernel (c) gpr_update (SPEC §4.4, §5, §7): one inner step z - η·g, Triton (interpreter) against the torch
twin and against autograd on the reference energy `mcgenref_fast.energy.energy` (padding convention included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgenref_fast import ops, ops_torch, tiling
from mcgenref_fast.config import RefineConfig, TileConfig
from refine_inputs import LaunchRecorder, kernel_test_mask
from mcgenref_fast.energy import energy
from mcgenref_fast.kernels import gpr_update as update_kernel
from mcgenref_fast.refine_types import TileTensors, gather_tiles

TOL = 1e-4
CFGS = [RefineConfig(), RefineConfig(eta=0.3, lam_ov=2.0, lam_edge=0.3, edge_delta=0.2, edge_sigma_i=0.1,
                                     lam_prox=0.5)]
# (H, W, T, O, mask): tiles not dividing the image, a 1-tile image smaller than the tile (padding),
# O = T/2, O = 0, odd T, inactive tiles
GRIDS = [(45, 71, 32, 8, "disc"), (12, 21, 16, 4, "full"), (40, 40, 16, 8, "disc"), (33, 50, 16, 0, "full"),
         (30, 37, 13, 6, "sparse")]


def _case(h, w, tile, overlap, kind, seed=0):
    rng = np.random.default_rng(seed)
    mask = kernel_test_mask(h, w, kind, rng)
    grid = tiling.make_grid((h, w), mask, TileConfig(tile, overlap))
    index = ops_torch.TileIndex.from_grid(grid)
    tiles = TileTensors.from_grid(grid)
    g = torch.Generator().manual_seed(seed)
    image = 0.3 + 0.03 * torch.randn((h, w), generator=g)
    image[:, w // 2:] += 0.2                                   # an edge
    i_tiles = gather_tiles(image, tiles)                       # 0 on padding
    shape = (grid.n_tiles, tile, tile)
    z = 2.0 * torch.randn(shape, generator=g)
    z0 = torch.clamp(2.0 * torch.randn(shape, generator=g), -4, 4)
    y = torch.rand(shape, generator=g)
    return grid, index, tiles, z, y, z0, i_tiles


def _autograd_step(z, y, z0, i_tiles, tiles, cfg):
    zz = z.clone().requires_grad_(True)
    e = energy(zz, y, z0, i_tiles, tiles, cfg)
    (grad,) = torch.autograd.grad(e, zz)
    return z - cfg.eta * grad, float(e.detach())


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("h,w,tile,overlap,kind", GRIDS)
def test_triton_update_equals_autograd_step_and_torch_twin(h, w, tile, overlap, kind, cfg):
    grid, index, tiles, z, y, z0, i_tiles = _case(h, w, tile, overlap, kind)
    canvas = ops_torch.fuse_tiles(z, index)
    params = ops_torch.gpr_params(cfg)
    got, e_got = update_kernel.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True, **params)
    want, e_want = _autograd_step(z, y, z0, i_tiles, tiles, cfg)
    assert (got - want).abs().max() <= TOL
    assert float(e_got.sum()) == pytest.approx(e_want, rel=1e-5)
    twin, e_twin = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True, **params)
    assert (got - twin).abs().max() <= TOL
    assert (twin - want).abs().max() <= TOL
    assert torch.allclose(e_got, e_twin, rtol=1e-5, atol=1e-3)
    # padding (outside the image): left out of E, so z does not move there
    assert torch.equal(got[~tiles.valid], z[~tiles.valid])
    assert torch.equal(twin[~tiles.valid], z[~tiles.valid])


def test_without_energy_returns_the_same_step():
    grid, index, tiles, z, y, z0, i_tiles = _case(30, 37, 13, 6, "sparse", seed=1)
    canvas = ops_torch.fuse_tiles(z, index)
    a = update_kernel.gpr_update(z, y, canvas, z0, i_tiles, index)
    b, _ = update_kernel.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True)
    assert torch.equal(a, b)
    assert a.data_ptr() not in (z.data_ptr(), y.data_ptr())


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_energy_does_not_increase_over_an_inner_loop_via_ops(monkeypatch, backend):
    """SPEC §4 required behaviour, through the dispatch: Jacobi steps on a flat noisy field."""
    monkeypatch.setenv("MCGENREF_KERNELS", backend)
    h = w = 40
    grid = tiling.make_grid((h, w), np.ones((h, w), bool), TileConfig(16, 8))
    index = ops_torch.TileIndex.from_grid(grid)
    g = torch.Generator().manual_seed(7)
    image = torch.from_numpy(tiling.gather((0.3 + 0.02 * torch.randn((h, w), generator=g)).numpy(), grid))
    z0 = torch.clamp(torch.randn(image.shape, generator=g), -4, 4)
    y = torch.rand(image.shape, generator=g)
    z = z0.clone()
    energies = []
    for _ in range(4):
        canvas = ops.fuse_tiles(z, index)
        z, e = ops.gpr_update(z, y, canvas, z0, image, index, RefineConfig(), return_energy=True)
        energies.append(float(e.sum()))
    assert all(b <= a + 1e-3 for a, b in zip(energies, energies[1:])), energies


@pytest.mark.parametrize("update", [update_kernel.gpr_update, ops_torch.gpr_update])
def test_bad_inputs_raise_value_error(update):
    grid, index, tiles, z, y, z0, i_tiles = _case(12, 21, 16, 4, "full")
    canvas = torch.zeros((12, 21))
    with pytest.raises(ValueError, match="float32"):
        update(z.double(), y, canvas, z0, i_tiles, index)
    with pytest.raises(ValueError, match=rf"y must have shape \({grid.n_tiles}, 16, 16\)"):
        update(z, y[:, :8], canvas, z0, i_tiles, index)
    with pytest.raises(ValueError, match=r"canvas must have shape \(12, 21\)"):
        update(z, y, canvas.t(), z0, i_tiles, index)
    with pytest.raises(ValueError, match="device"):
        update(z, y, canvas, z0.to("meta"), i_tiles, index)
    with pytest.raises(ValueError, match="TileIndex"):
        update(z, y, canvas, z0, i_tiles, tiles)


def test_edge_weight_cache_follows_the_image():
    grid, index, tiles, z, y, z0, i_tiles = _case(33, 50, 16, 0, "full", seed=2)
    canvas = ops_torch.fuse_tiles(z, index)
    first = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index)
    assert ops_torch.edge_weights(i_tiles, 0.05)[0] is ops_torch.edge_weights(i_tiles, 0.05)[0]
    i_tiles.mul_(2.0)                                          # modified in place: the cache must not be used
    second = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index)
    want, _ = _autograd_step(z, y, z0, i_tiles, tiles, RefineConfig())
    assert (second - want).abs().max() <= TOL
    assert not torch.equal(first, second)


@pytest.mark.parametrize("block_r,num_warps", [(4, 1), (8, 2), (64, None)])
def test_triton_update_launch_override_gives_the_same_result(block_r, num_warps, monkeypatch):
    """The tuning overrides (`bench/kernel_tuning.py`) change how rows are split over programs, not the result:
    bit for bit the default launch's step and the same energy, on a grid whose tiles do not divide the image
    (block_r 64 > T = 32 is clipped to the tile); the launch really used the override."""
    grid, index, tiles, z, y, z0, i_tiles = _case(45, 71, 32, 8, "disc", seed=3)
    canvas = ops_torch.fuse_tiles(z, index)
    want, e_want = update_kernel.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True)
    recorder = LaunchRecorder(update_kernel._gpr_update_kernel)
    monkeypatch.setattr(update_kernel, "_gpr_update_kernel", recorder)
    got, e_got = update_kernel.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True,
                                          block_r=block_r, num_warps=num_warps)
    (launch_grid, kwargs), = recorder.launches
    used_r, used_warps = kwargs["BLOCK_R"], kwargs["num_warps"]
    assert used_r == min(block_r, 32) and launch_grid == (index.n_tiles, 32 // used_r)
    assert num_warps is None or used_warps == num_warps
    assert torch.equal(got, want)
    assert float(e_got.sum()) == pytest.approx(float(e_want.sum()), rel=1e-6)


@pytest.mark.parametrize("bad", [{"block_r": 3}, {"block_r": 0}, {"num_warps": 64}, {"num_warps": 1.5}])
def test_triton_update_rejects_bad_launch_overrides(bad):
    grid, index, tiles, z, y, z0, i_tiles = _case(12, 21, 16, 4, "full")
    with pytest.raises(ValueError, match="power of two|at most 32"):
        update_kernel.gpr_update(z, y, ops_torch.fuse_tiles(z, index), z0, i_tiles, index, **bad)

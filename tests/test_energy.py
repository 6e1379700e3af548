"""SPEC §4 step 4: the energy E(z), its terms, and the analytic gradient against autograd."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mcgenref_fast import tiling
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.energy import analytic_gradient, edge_gradient, energy, energy_terms
from mcgenref_fast.refine_types import TileTensors, fuse_tiles, gather_tiles


def _grid(h: int, w: int, tile: int, overlap: int, breast: np.ndarray | None = None) -> tiling.TileGrid:
    mask = np.ones((h, w), bool) if breast is None else breast
    return tiling.make_grid((h, w), mask, TileConfig(tile, overlap))


def _exact_weights(tiles: TileTensors) -> TileTensors:
    """The tiler's float32 weights renormalised in float64, so that Σ_q w_q = 1 to float64 precision.

    The identity Σ_q w_q (z_q − Z) = 0 behind the closed-form E_ov gradient needs Σ_q w_q = 1; with the
    float32 weights it holds only to ~1e-7, which is what separates autograd and the closed form then."""
    w = tiles.weights.double()
    total = gather_tiles(fuse_tiles(torch.ones_like(w), dataclasses.replace(tiles, weights=w)), tiles)
    return dataclasses.replace(tiles, weights=torch.where(tiles.valid, w / torch.where(tiles.valid, total, 1.0), 0.0))


def _case(h: int, w: int, tile: int, overlap: int, dtype: torch.dtype, seed: int = 0, breast=None):
    """Random z, y, z0 and a flat noisy image with an edge, as tile batches; padding zeroed like gather.
    In float64 the weights are renormalised (`_exact_weights`)."""
    grid = _grid(h, w, tile, overlap, breast)
    tiles = TileTensors.from_grid(grid, dtype=dtype)
    if dtype == torch.float64:
        tiles = _exact_weights(tiles)
    g = torch.Generator().manual_seed(seed)
    image = (0.3 + 0.03 * torch.randn((h, w), generator=g, dtype=dtype))
    image[:, w // 2:] += 0.2
    i_tiles = gather_tiles(image, tiles)
    shape = (tiles.n_tiles, tile, tile)
    z = 2.0 * torch.randn(shape, generator=g, dtype=dtype)
    z0 = torch.clamp(2.0 * torch.randn(shape, generator=g, dtype=dtype), -4, 4)
    y = torch.rand(shape, generator=g, dtype=dtype)
    return grid, tiles, z, y, z0, i_tiles


CASES = [(45, 71, 32, 8), (20, 40, 32, 8), (40, 70, 32, 8), (16, 16, 16, 0), (33, 50, 16, 0)]
CFGS = [RefineConfig(), RefineConfig(lam_ov=2.0, lam_edge=0.3, edge_delta=0.2, edge_sigma_i=0.1, lam_prox=0.5)]


def _autograd(z, y, z0, i_tiles, tiles, cfg):
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(zz, y, z0, i_tiles, tiles, cfg), zz)
    return grad


def _analytic(z, y, z0, i_tiles, tiles, cfg):
    z_fused = gather_tiles(fuse_tiles(z, tiles), tiles)
    return analytic_gradient(z, y, z_fused, tiles.weights.to(z.dtype), z0, i_tiles, cfg, tiles.valid)


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("h,w,tile,overlap", CASES)
def test_autograd_equals_analytic_gradient_float32(h, w, tile, overlap, cfg):
    _, tiles, z, y, z0, i_tiles = _case(h, w, tile, overlap, torch.float32)
    diff = (_autograd(z, y, z0, i_tiles, tiles, cfg) - _analytic(z, y, z0, i_tiles, tiles, cfg)).abs().max()
    assert float(diff) <= 1e-4


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("h,w,tile,overlap", CASES)
def test_autograd_equals_analytic_gradient_float64(h, w, tile, overlap, cfg):
    _, tiles, z, y, z0, i_tiles = _case(h, w, tile, overlap, torch.float64, seed=1)
    diff = (_autograd(z, y, z0, i_tiles, tiles, cfg) - _analytic(z, y, z0, i_tiles, tiles, cfg)).abs().max()
    assert float(diff) <= 1e-10


def test_gradient_with_inactive_tiles_and_partial_breast():
    breast = np.zeros((45, 71), bool)
    breast[5:30, :20] = True            # only the left tiles are active
    _, tiles, z, y, z0, i_tiles = _case(45, 71, 32, 8, torch.float64, breast=breast)
    assert 0 < tiles.n_tiles < 6
    cfg = RefineConfig()
    diff = (_autograd(z, y, z0, i_tiles, tiles, cfg) - _analytic(z, y, z0, i_tiles, tiles, cfg)).abs().max()
    assert float(diff) <= 1e-10


def test_overlap_term_gradient_is_w_times_z_minus_Z_through_the_fusion():
    """∂E_ov/∂z_q with Z = Σ w z a function of z equals w_q (z_q − Z): Σ_q w_q (z_q − Z) = 0."""
    _, tiles, z, y, z0, i_tiles = _case(45, 71, 32, 8, torch.float64, seed=3)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy_terms(zz, y, z0, i_tiles, tiles)["ov"], zz)
    z_fused = gather_tiles(fuse_tiles(z, tiles), tiles)
    expected = tiles.weights.double() * (z - z_fused)
    assert float((grad - expected).abs().max()) <= 1e-12
    # the identity itself: Σ_q w_q (z_q − Z) = 0 on covered pixels
    residual = fuse_tiles(z - z_fused, tiles)
    assert float(residual.abs().max()) <= 1e-12


def test_padding_pixels_have_zero_gradient_and_do_not_count():
    grid, tiles, z, y, z0, i_tiles = _case(20, 40, 32, 8, torch.float64)
    pad = ~tiles.valid
    assert pad.any()
    cfg = RefineConfig()
    grad = _autograd(z, y, z0, i_tiles, tiles, cfg)
    assert (grad[pad] == 0).all()
    assert (_analytic(z, y, z0, i_tiles, tiles, cfg)[pad] == 0).all()
    z2, y2, z02 = z.clone(), y.clone(), z0.clone()
    z2[pad], y2[pad], z02[pad] = 7.0, 0.1, -3.0     # anything on padding leaves E unchanged
    assert float(energy(z2, y2, z02, i_tiles, tiles, cfg)) == pytest.approx(float(energy(z, y, z0, i_tiles, tiles, cfg)),
                                                                             rel=1e-14)


def test_energy_terms_equal_brute_force_sums():
    """Each term against a plain Python loop over pixels and unordered 4-neighbour pairs."""
    h, w, tile = 9, 12, 8
    grid, tiles, z, y, z0, i_tiles = _case(h, w, tile, 2, torch.float64, seed=4)
    cfg = RefineConfig(edge_delta=0.3, edge_sigma_i=0.07)
    terms = {k: float(v) for k, v in energy_terms(z, y, z0, i_tiles, tiles, cfg).items()}
    zc = fuse_tiles(z, tiles)
    data = ov = edge = prox = 0.0
    for q, (y0, x0) in enumerate(tiles.origins):
        for r in range(tile):
            for c in range(tile):
                if not (y0 + r < h and x0 + c < w):
                    continue
                zu, yu = float(z[q, r, c]), float(y[q, r, c])
                data += max(zu, 0.0) - zu * yu + math.log1p(math.exp(-abs(zu)))
                ov += 0.5 * float(tiles.weights[q, r, c]) * (zu - float(zc[y0 + r, x0 + c])) ** 2
                prox += 0.5 * (zu - float(z0[q, r, c])) ** 2
                for rr, cc in ((r, c + 1), (r + 1, c)):        # each unordered pair once
                    if rr < tile and cc < tile and y0 + rr < h and x0 + cc < w:
                        di = float(i_tiles[q, r, c] - i_tiles[q, rr, cc])
                        dz = zu - float(z[q, rr, cc])
                        omega = math.exp(-di * di / (2 * cfg.edge_sigma_i ** 2))
                        edge += omega * math.sqrt(dz * dz + cfg.edge_delta ** 2)
    assert terms["data"] == pytest.approx(data, rel=1e-12)
    assert terms["ov"] == pytest.approx(ov, rel=1e-10)
    assert terms["edge"] == pytest.approx(edge, rel=1e-12)
    assert terms["prox"] == pytest.approx(prox, rel=1e-12)
    total = data + cfg.lam_ov * ov + cfg.lam_edge * edge + cfg.lam_prox * prox
    assert float(energy(z, y, z0, i_tiles, tiles, cfg)) == pytest.approx(total, rel=1e-10)


def test_edge_gradient_formula_at_one_pixel():
    """SPEC: ∇E_edge at u = Σ_v ω_uv (z_u − z_v) / sqrt((z_u − z_v)² + δ²)."""
    cfg = RefineConfig()
    g = torch.Generator().manual_seed(9)
    z = torch.randn((1, 5, 5), generator=g, dtype=torch.float64)
    i = 0.3 + 0.05 * torch.randn((1, 5, 5), generator=g, dtype=torch.float64)
    r, c = 2, 3
    expected = 0.0
    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        dz = float(z[0, r, c] - z[0, rr, cc])
        omega = math.exp(-float(i[0, r, c] - i[0, rr, cc]) ** 2 / (2 * cfg.edge_sigma_i ** 2))
        expected += omega * dz / math.sqrt(dz * dz + cfg.edge_delta ** 2)
    assert float(edge_gradient(z, i, cfg)[0, r, c]) == pytest.approx(expected, rel=1e-12)


def test_fusion_matches_tiler_and_is_adjoint_consistent():
    grid = _grid(45, 71, 32, 8)
    tiles = TileTensors.from_grid(grid)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(grid.n_tiles, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(fuse_tiles(torch.from_numpy(z), tiles).numpy(), tiling.fuse(z, grid))
    image = rng.normal(size=(45, 71)).astype(np.float32)
    np.testing.assert_array_equal(gather_tiles(torch.from_numpy(image), tiles).numpy(), tiling.gather(image, grid))
    small = TileTensors.from_grid(_grid(11, 13, 8, 2), dtype=torch.float64)
    zt = torch.randn((small.n_tiles, 8, 8), dtype=torch.float64, requires_grad=True)
    canvas = torch.randn((11, 13), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fuse_tiles(t, small), (zt,))
    assert torch.autograd.gradcheck(lambda t: gather_tiles(t, small), (canvas,))


def test_analytic_gradient_without_valid_mask_means_all_pixels():
    _, tiles, z, y, z0, i_tiles = _case(40, 70, 32, 8, torch.float64)
    z_fused = gather_tiles(fuse_tiles(z, tiles), tiles)
    w = tiles.weights.double()
    a = analytic_gradient(z, y, z_fused, w, z0, i_tiles)
    b = analytic_gradient(z, y, z_fused, w, z0, i_tiles, valid=tiles.valid)
    assert tiles.valid.all() and torch.equal(a, b)

"""The C++ extension's CPU kernels (csrc/update.cpp) against their torch twins (SPEC §5, §7).

- `_tiler.gpr_update` (what `ops_torch.gpr_update` runs on the CPU) vs `ops_torch.gpr_update_torch`: z_new
  within 1e-5, the energy per tile within 1e-5 relative, on odd image sizes whose tiles do not divide them,
  padding (an image smaller than its tile), odd T, O = 0, inactive tiles; bit-identical from run to run
  and for 1 or 2 OpenMP threads.
- `ops_torch.seed_distance2` vs a brute-force d²: identical (integer d²).
- `_tiler.seed_maps` (look-up tables) vs the torch ops on d²: identical, and vs the reference's
  `seed_dots` / `blend_weight_map` within the stage tests' rtol 1e-6.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgenref_fast import ops, ops_torch, tiling
from mcgenref_fast.config import RefineConfig, TileConfig
from refine_inputs import kernel_test_mask
from mcgenref_fast.refine_types import blend_weight_map, seed_dots

cpp = pytest.importorskip("mcgenref_fast._tiler", reason="C++ extension not built")
if not hasattr(cpp, "gpr_update"):
    pytest.skip("the C++ extension predates gpr_update: rebuild it", allow_module_level=True)

CFGS = [RefineConfig(), RefineConfig(eta=0.3, lam_ov=2.0, lam_edge=0.3, edge_delta=0.2, edge_sigma_i=0.1,
                                     lam_prox=0.5)]
# (H, W, T, O, mask): tiles not dividing the image, an image smaller than its tile (padding), O = T/2,
# O = 0, odd T, inactive tiles
GRIDS = [(45, 71, 32, 8, "disc"), (12, 21, 16, 4, "full"), (9, 30, 16, 4, "full"), (40, 40, 16, 8, "disc"),
         (33, 50, 16, 0, "full"), (30, 37, 13, 6, "sparse"), (101, 67, 31, 7, "disc")]


def _case(h, w, tile, overlap, kind, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    mask = kernel_test_mask(h, w, kind, rng)
    grid = tiling.make_grid((h, w), mask, TileConfig(tile, overlap))
    index = ops_torch.TileIndex.from_grid(grid)
    g = torch.Generator().manual_seed(seed)
    image = 0.3 + 0.03 * torch.randn((h, w), generator=g)
    image[:, w // 2:] += 0.2                                   # an edge
    i_tiles = ops_torch.gather_tiles(image, index)             # 0 on padding
    shape = (grid.n_tiles, tile, tile)
    z = scale * torch.randn(shape, generator=g)
    z0 = torch.clamp(2.0 * torch.randn(shape, generator=g), -4, 4)
    y = torch.rand(shape, generator=g)
    return index, z, y, z0, i_tiles


def _both(index, z, y, z0, i_tiles, cfg):
    canvas = ops_torch.fuse_tiles(z, index)
    params = ops_torch.gpr_params(cfg)
    got = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True, **params)
    want = ops_torch.gpr_update_torch(z, y, canvas, z0, i_tiles, index, return_energy=True, **params)
    return got, want


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("h,w,tile,overlap,kind", GRIDS)
def test_cpp_update_matches_the_torch_twin(h, w, tile, overlap, kind, cfg):
    index, z, y, z0, i_tiles = _case(h, w, tile, overlap, kind)
    (z_got, e_got), (z_want, e_want) = _both(index, z, y, z0, i_tiles, cfg)
    assert z_got.dtype == torch.float32 and z_got.shape == z.shape
    assert e_got.dtype == torch.float32 and e_got.shape == (index.n_tiles,)
    assert float((z_got - z_want).abs().max()) <= 1e-5
    np.testing.assert_allclose(e_got.double().numpy(), e_want.double().numpy(), rtol=1e-5)
    if index.has_padding:                                       # g = 0 on padding: z unchanged there
        assert torch.equal(z_got[~index.valid], z[~index.valid])
    # without the energy: the same z_new
    canvas = ops_torch.fuse_tiles(z, index)
    plain = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, **ops_torch.gpr_params(cfg))
    assert torch.equal(plain, z_got)


@pytest.mark.parametrize("scale", [30.0, 200.0])
def test_cpp_update_large_logits(scale):
    """|z| far beyond the clamp (exp(-|z|) down to its floor, sigmoid saturated): still the twin's numbers."""
    index, z, y, z0, i_tiles = _case(45, 71, 32, 8, "disc", seed=3, scale=scale)
    (z_got, e_got), (z_want, e_want) = _both(index, z, y, z0, i_tiles, RefineConfig())
    assert torch.isfinite(z_got).all() and torch.isfinite(e_got).all()
    assert float((z_got - z_want).abs().max()) <= 1e-4 * scale
    np.testing.assert_allclose(e_got.double().numpy(), e_want.double().numpy(), rtol=1e-5)


def test_cpp_update_is_deterministic_and_thread_count_free():
    index, z, y, z0, i_tiles = _case(101, 67, 31, 7, "disc", seed=5)
    canvas = ops_torch.fuse_tiles(z, index)
    before = cpp.get_num_threads()
    try:
        cpp.set_num_threads(1)
        a = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True)
        cpp.set_num_threads(2)
        b = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True)
        c = ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index, return_energy=True)
    finally:
        cpp.set_num_threads(before)
    for x, w in zip(a, b):
        assert torch.equal(x, w)
    for x, w in zip(b, c):
        assert torch.equal(x, w)


def test_gpr_update_routes(monkeypatch):
    """CPU without autograd: the C++ kernel; with autograd or without the extension: the torch twin."""
    index, z, y, z0, i_tiles = _case(40, 40, 16, 8, "disc")
    canvas = ops_torch.fuse_tiles(z, index)
    calls = []
    real = ops_torch.gpr_update_torch

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops_torch, "gpr_update_torch", spy)
    ops.gpr_update(z, y, canvas, z0, i_tiles, index)
    assert calls == []
    zz = z.clone().requires_grad_(True)
    ops_torch.gpr_update(zz, y, canvas, z0, i_tiles, index)
    assert calls == [1]
    monkeypatch.setattr(ops_torch, "_cpp_tiler", lambda: None)
    ops_torch.gpr_update(z, y, canvas, z0, i_tiles, index)
    assert calls == [1, 1]


def test_cpp_update_rejects_bad_shapes():
    index, z, y, z0, i_tiles = _case(40, 40, 16, 8, "disc")
    canvas = ops_torch.fuse_tiles(z, index).numpy()
    oh, ov = (t.numpy() for t in ops_torch.edge_weights(i_tiles, 0.05))
    args = [z.numpy(), y.numpy(), canvas, z0.numpy(), index.weights.numpy(), oh, ov, index.origins_np,
            0.5, 1.0, 0.1, 0.5, 0.05, True]
    bad = list(args)
    bad[1] = y.numpy()[:, :-1]
    with pytest.raises(ValueError, match="y has the wrong shape"):
        cpp.gpr_update(*bad)
    bad = list(args)
    bad[7] = index.origins_np + 1000
    with pytest.raises(ValueError, match="outside the canvas"):
        cpp.gpr_update(*bad)


# ------------------------------------------------------------------------------------------- seed maps
def _random_seeds(n_tiles, max_seeds, tile, seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_seeds + 1, (n_tiles,), generator=g)
    counts[0] = 0
    counts[-1] = max_seeds
    local = torch.zeros((n_tiles, max_seeds, 2), dtype=torch.int64)
    for q, k in enumerate(counts.tolist()):
        local[q, :k] = torch.randint(0, tile, (k, 2), generator=g)
    local[-1, 0] = torch.tensor([tile - 1, 0])                 # a corner: d² up to its maximum
    return local, counts


@pytest.mark.parametrize("n_tiles,max_seeds,tile", [(5, 7, 37), (3, 1, 16), (6, 64, 31), (2, 3, 1)])
def test_seed_distance2_equals_brute_force(n_tiles, max_seeds, tile):
    local, counts = _random_seeds(n_tiles, max_seeds, tile, seed=n_tiles)
    got = ops_torch.seed_distance2(local, counts, tile)
    yy, xx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    for q, k in enumerate(counts.tolist()):
        if k == 0:
            assert torch.isinf(got[q]).all()
            continue
        d2 = ((yy[None] - local[q, :k, 0, None, None]) ** 2 + (xx[None] - local[q, :k, 1, None, None]) ** 2)
        assert torch.equal(got[q], d2.min(0).values.to(torch.float32))


@pytest.mark.parametrize("n_tiles,max_seeds,tile", [(5, 7, 37), (4, 2, 16), (3, 64, 64)])
def test_seed_blend_maps_cpp_equals_the_torch_ops_and_the_reference(monkeypatch, n_tiles, max_seeds, tile):
    monkeypatch.delenv("MCGENREF_SEEDS", raising=False)          # MCGENREF_SEEDS=fixed would bypass the C++ maps
    cfg = RefineConfig()
    local, counts = _random_seeds(n_tiles, max_seeds, tile, seed=tile)
    valid = torch.ones((n_tiles, tile, tile), dtype=torch.bool)
    valid[1, :, tile // 2:] = False
    args = (local, counts, tile, cfg.seed_sigma_px, cfg.blend_rho_px, cfg.blend_gamma)
    s_got, w_got = ops_torch.seed_blend_maps(*args, valid)
    s_plain, w_plain = ops_torch.seed_blend_maps(*args)
    monkeypatch.setattr(ops_torch, "_cpp_tiler", lambda: None)
    s_want, w_want = ops_torch.seed_blend_maps(*args, valid)
    assert torch.equal(s_got, s_want) and torch.equal(w_got, w_want)
    assert torch.equal(s_plain, s_got) and torch.equal(w_plain[valid], w_got[valid])
    assert (w_got[~valid] == 0).all()
    for q, k in enumerate(counts.tolist()):
        s = local[q, :k]
        torch.testing.assert_close(s_got[q], seed_dots(s, tile, cfg.seed_sigma_px), rtol=1e-6, atol=0)
        torch.testing.assert_close(w_got[q], blend_weight_map(s, tile, cfg.blend_rho_px, cfg.blend_gamma,
                                                              valid[q]), rtol=1e-6, atol=0)


def test_seed_blend_maps_seed_outside_its_tile_falls_back_to_torch():
    cfg = RefineConfig()
    local = torch.tensor([[[3, 40]]])                           # column 40 in a 32-px tile
    counts = torch.tensor([1])
    s_map, w_map = ops_torch.seed_blend_maps(local, counts, 32, cfg.seed_sigma_px, cfg.blend_rho_px,
                                             cfg.blend_gamma)
    torch.testing.assert_close(s_map[0], seed_dots(local[0], 32, cfg.seed_sigma_px), rtol=1e-6, atol=0)
    torch.testing.assert_close(w_map[0], blend_weight_map(local[0], 32, cfg.blend_rho_px, cfg.blend_gamma),
                               rtol=1e-6, atol=0)


def test_seed_blend_maps_refuses_a_wrong_valid_shape_instead_of_falling_back() -> None:
    """The C++ maps fall back to torch only for a seed outside its tile; a malformed `valid` is an error."""
    cfg = RefineConfig()
    local = torch.tensor([[[3, 4]]], dtype=torch.int64)
    counts = torch.tensor([1], dtype=torch.int64)
    bad_valid = torch.ones((1, 8, 9), dtype=torch.bool)
    with pytest.raises(ValueError, match="valid"):
        ops_torch.seed_blend_maps(local, counts, 8, cfg.seed_sigma_px, cfg.blend_rho_px, cfg.blend_gamma,
                                  bad_valid, fixed_shape=False)
    outside = torch.tensor([[[3, 20]]], dtype=torch.int64)     # outside an 8 px tile: the torch ops take it
    s, w = ops_torch.seed_blend_maps(outside, counts, 8, cfg.seed_sigma_px, cfg.blend_rho_px, cfg.blend_gamma,
                                     fixed_shape=False)
    assert s.shape == w.shape == (1, 8, 8) and float(w.max()) > 0

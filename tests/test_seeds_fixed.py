"""Issue 9: the fixed-shape, host-sync-free seed route (used on CUDA), forced on the CPU.

`seeds_fast.extract_seeds_fixed` against the compact `extract_seeds_fast` and the reference
`seeds.extract_seeds` (ties on quantised canvases, odd sizes, tiles not dividing the image, one-tile
images, O = T/2, tiles with more than n_s seeds, no seeds), `ops_torch.seed_distance2_fixed` /
`seed_blend_maps(fixed_shape=True)` against the torch loop and the C++ maps (bit for bit), the
`MCGENREF_SEEDS` switch, and a whole CPU refine with the switch forced (identical result and diagnostics).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgenref_fast import ops_torch, tiling
from mcgenref_fast import refine as fast
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.refine_types import TileTensors
from mcgenref_fast.seeds import extract_seeds, local_maxima, logit, seed_mask
from mcgenref_fast.seeds_fast import extract_seeds_fast, extract_seeds_fixed
from refine_inputs import flat_image_with_spots, left_breast_mask, seed_test_breast
from tiny_models import make_tiny_generator, make_tiny_segmentor

# (H, W, T, O, breast kind): tiles not dividing, one tile larger than the image, exactly one tile, O = T/2,
# O = 0, odd tile sizes
GRIDS = [(45, 71, 32, 8, "part"), (20, 27, 32, 8, "full"), (32, 32, 32, 16, "full"), (66, 66, 32, 16, "full"),
         (40, 90, 17, 0, "sparse"), (37, 61, 13, 6, "part"), (9, 50, 8, 4, "full")]


def _setup(h, w, t, o, kind, max_seeds, seed):
    rng = np.random.default_rng(seed)
    cfg = RefineConfig(tiles=TileConfig(t, o), max_seeds_per_tile=max_seeds)
    breast = seed_test_breast(kind, h, w, rng)
    grid = tiling.make_grid((h, w), breast.numpy(), cfg.tiles)
    return rng, cfg, breast, grid, TileIndex.from_grid(grid), torch.from_numpy(grid.covered)


def _assert_same(fixed, compact, reference, max_seeds, tile):
    """fixed == compact (width min(n_s, T²), the compact's columns then zeros) == the reference."""
    k = min(max_seeds, tile * tile)
    assert fixed.local.dtype == fixed.counts.dtype == fixed.origins.dtype == torch.int64
    assert fixed.local.shape == (compact.n_tiles, k, 2)
    assert torch.equal(fixed.counts, compact.counts)
    assert torch.equal(fixed.origins, compact.origins)
    m = compact.local.shape[1]
    assert torch.equal(fixed.local[:, :m], compact.local)
    assert (fixed.local[:, m:] == 0).all()
    assert fixed.counts.tolist() == [int(s.shape[0]) for s in reference]
    for a, b in zip(fixed.tensors(), reference):
        assert torch.equal(a, b)
    for canvas in (False, True):
        for a, b in zip(fixed.as_list(canvas=canvas), compact.as_list(canvas=canvas)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("h,w,t,o,kind", GRIDS)
@pytest.mark.parametrize("max_seeds", [64, 3, 1])
def test_fixed_shape_seeds_equal_the_compact_path_and_the_reference(h, w, t, o, kind, max_seeds):
    rng, cfg, breast, grid, index, covered = _setup(h, w, t, o, kind, max_seeds, h * w + t + max_seeds)
    origins = TileTensors.from_grid(grid).origins
    found = 0
    for trial in range(6):
        if trial % 3 == 0:     # many ties: a coarse lattice around the threshold (plateaus)
            z = torch.from_numpy(rng.integers(-2, 3, size=(h, w)).astype(np.float32) * 0.5)
        elif trial % 3 == 1:   # fewer levels, larger plateaus
            z = torch.from_numpy(rng.integers(0, 2, size=(h, w)).astype(np.float32))
        else:
            z = torch.from_numpy(rng.normal(0.0, 1.5, size=(h, w)).astype(np.float32))
        z = torch.where(covered, z, torch.zeros_like(z))           # Z = 0 outside the active tiles
        fixed = extract_seeds_fixed(z, breast, covered, index, cfg)
        compact = extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=False)
        _assert_same(fixed, compact, extract_seeds(z, breast, covered, origins, cfg), max_seeds, t)
        found += int(fixed.counts.sum())
    assert found > 0 or not breast.any()


def test_tiles_with_more_than_n_s_seeds_keep_the_best_ranked():
    h, w, t, o = 50, 70, 32, 16
    max_seeds = 5
    _, cfg, breast, grid, index, covered = _setup(h, w, t, o, "full", max_seeds, 0)
    z = torch.full((h, w), -10.0)
    z[::2, ::2] = 1.0                       # a lattice of isolated maxima, all tied: raster order decides
    z[10, 30] = 3.0                         # and a few larger ones, ranked first
    z[20, 40] = 2.0
    fixed = extract_seeds_fixed(z, breast, covered, index, cfg)
    compact = extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=False)
    reference = extract_seeds(z, breast, covered, TileTensors.from_grid(grid).origins, cfg)
    _assert_same(fixed, compact, reference, max_seeds, t)
    assert (fixed.counts == max_seeds).all()


@pytest.mark.parametrize("value", [-10.0, 0.5])
def test_no_seeds_at_all(value):
    h, w, t, o = 40, 50, 16, 8
    _, cfg, breast, grid, index, covered = _setup(h, w, t, o, "full", 64, 0)
    z = torch.full((h, w), value)
    breast = breast if value < 0 else torch.zeros_like(breast)      # below threshold, or outside the breast
    fixed = extract_seeds_fixed(z, breast, covered, index, cfg)
    compact = extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=False)
    assert compact.local.shape == (index.n_tiles, 0, 2)
    _assert_same(fixed, compact, extract_seeds(z, breast, covered, TileTensors.from_grid(grid).origins, cfg),
                 64, t)
    assert int(fixed.counts.sum()) == 0 and (fixed.local == 0).all()


def test_float64_canvas_and_the_threshold_rounding():
    h, w, t, o = 30, 30, 16, 8
    rng, cfg, breast, grid, index, covered = _setup(h, w, t, o, "full", 64, 3)
    thr = np.log(0.3 / 0.7)
    for dtype in (torch.float32, torch.float64):
        z = torch.from_numpy(rng.normal(0.0, 1.0, size=(h, w))).to(dtype)
        z[5, 5] = float(torch.tensor(thr, dtype=dtype))              # exactly at the rounded threshold
        z[5, 20] = float(torch.nextafter(torch.tensor(thr, dtype=dtype), torch.tensor(-10.0, dtype=dtype)))
        want = seed_mask(z, breast, covered, cfg.seed_threshold)
        on_device_threshold = torch.tensor(logit(cfg.seed_threshold), dtype=dtype)  # a 0-dim tensor of Z's dtype
        assert torch.equal(want, (z >= on_device_threshold) & breast & local_maxima(z, covered))
        assert bool(want[5, 5]) == bool(local_maxima(z, covered)[5, 5]) and not bool(want[5, 20])
        fixed = extract_seeds_fixed(z, breast, covered, index, cfg)
        compact = extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=False)
        _assert_same(fixed, compact, extract_seeds(z, breast, covered, TileTensors.from_grid(grid).origins, cfg),
                     64, t)


def test_switch_argument_and_environment(monkeypatch):
    h, w, t, o = 45, 71, 32, 8
    _, cfg, breast, _, index, covered = _setup(h, w, t, o, "part", 64, 1)
    z = torch.full((h, w), -10.0)
    z[5, 5], z[6, 9], z[30, 20] = 1.0, 2.0, 0.5
    monkeypatch.delenv("MCGENREF_SEEDS", raising=False)
    assert not ops_torch.fixed_shape_seeds("cpu") and ops_torch.fixed_shape_seeds("cuda")
    compact = extract_seeds_fast(z, breast, covered, index, cfg)                   # auto on the CPU: compact
    assert compact.local.shape[1] == int(compact.counts.max()) < 64
    assert extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=True).local.shape[1] == 64
    monkeypatch.setenv("MCGENREF_SEEDS", "fixed")
    assert ops_torch.fixed_shape_seeds("cpu")
    assert extract_seeds_fast(z, breast, covered, index, cfg).local.shape[1] == 64
    assert extract_seeds_fast(z, breast, covered, index, cfg, fixed_shape=False).local.shape[1] < 64
    monkeypatch.setenv("MCGENREF_SEEDS", "compact")
    assert not ops_torch.fixed_shape_seeds("cuda")
    monkeypatch.setenv("MCGENREF_SEEDS", "sometimes")
    with pytest.raises(ValueError, match="MCGENREF_SEEDS"):
        extract_seeds_fast(z, breast, covered, index, cfg)


# ------------------------------------------------------------------------------------------- seed maps
def _random_seeds(n_tiles, width, tile, seed, order=None):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, width + 1, (n_tiles,), generator=g)
    counts[0] = 0
    counts[-1] = width
    if order == "descending":
        counts = torch.sort(counts, descending=True).values
    local = torch.zeros((n_tiles, width, 2), dtype=torch.int64)
    for q, k in enumerate(counts.tolist()):
        local[q, :k] = torch.randint(0, tile, (k, 2), generator=g)
    if counts[-1] > 0:
        local[-1, 0] = torch.tensor([tile - 1, 0])
    return local, counts


@pytest.mark.parametrize("n_tiles,width,tile", [(5, 7, 37), (3, 1, 16), (6, 64, 31), (2, 3, 1), (4, 9, 32)])
@pytest.mark.parametrize("order", [None, "descending"])
def test_seed_distance2_fixed_equals_the_torch_loop_and_the_cpp(monkeypatch, n_tiles, width, tile, order):
    local, counts = _random_seeds(n_tiles, width, tile, seed=n_tiles + width, order=order)
    cpp = ops_torch.seed_distance2(local, counts, tile)
    monkeypatch.setattr(ops_torch, "_cpp_tiler", lambda: None)
    loop = ops_torch.seed_distance2(local, counts, tile)
    padded = torch.cat([local, torch.full((n_tiles, 5, 2), 3, dtype=torch.int64)], dim=1)  # junk past counts
    for lc in (local, padded):
        for host_plan in (None, False):
            got = ops_torch.seed_distance2_fixed(lc, counts, tile, host_plan=host_plan)
            assert torch.equal(got, loop) and torch.equal(got, cpp)
    assert torch.isinf(loop[counts == 0]).all()


@pytest.mark.parametrize("n_tiles,width,tile", [(5, 7, 37), (4, 2, 16), (3, 64, 64)])
def test_seed_blend_maps_fixed_equals_the_cpp_and_the_torch_ops(monkeypatch, n_tiles, width, tile):
    cfg = RefineConfig()
    local, counts = _random_seeds(n_tiles, width, tile, seed=tile)
    valid = torch.ones((n_tiles, tile, tile), dtype=torch.bool)
    valid[1, :, tile // 2:] = False
    args = (local, counts, tile, cfg.seed_sigma_px, cfg.blend_rho_px, cfg.blend_gamma)
    s_cpp, w_cpp = ops_torch.seed_blend_maps(*args, valid, fixed_shape=False)
    s_fix, w_fix = ops_torch.seed_blend_maps(*args, valid, fixed_shape=True)
    monkeypatch.setattr(ops_torch, "_cpp_tiler", lambda: None)
    s_torch, w_torch = ops_torch.seed_blend_maps(*args, valid, fixed_shape=False)
    assert torch.equal(s_fix, s_cpp) and torch.equal(w_fix, w_cpp)
    assert torch.equal(s_fix, s_torch) and torch.equal(w_fix, w_torch)
    assert (w_fix[~valid] == 0).all() and (s_fix[counts == 0] == 0).all()
    s_env, w_env = fast.seed_maps(local, counts, tile, cfg, valid, fixed_shape=True)
    assert torch.equal(s_env, s_fix) and torch.equal(w_env, w_fix)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def nets():
    return make_tiny_segmentor(), make_tiny_generator()


@pytest.mark.parametrize("h,w,t,o", [(45, 71, 32, 8), (20, 27, 32, 8), (50, 50, 32, 16)])
def test_refine_with_the_fixed_route_forced_is_identical(monkeypatch, nets, h, w, t, o):
    seg, gen = nets
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    cfg = RefineConfig(tiles=TileConfig(t, o), outer_iters=2, inner_steps=3)
    image, breast = flat_image_with_spots(h, w), left_breast_mask(h, w)
    monkeypatch.setenv("MCGENREF_SEEDS", "compact")
    want = fast.refine(image, breast, seg, gen, cfg, seed=4, cpu_workers=1)
    monkeypatch.setenv("MCGENREF_SEEDS", "fixed")
    got = fast.refine(image, breast, seg, gen, cfg, seed=4, cpu_workers=1)
    assert sum(sum(d.seeds_per_tile) for d in want.diagnostics) > 0
    assert torch.equal(got.logits, want.logits) and torch.equal(got.z0_logits, want.z0_logits)
    for a, b in zip(got.diagnostics, want.diagnostics):
        assert a.seeds_per_tile == b.seeds_per_tile and a.energy == b.energy
        assert len(a.seeds_rc) == len(b.seeds_rc)
        for x, y in zip(a.seeds_rc, b.seeds_rc):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)

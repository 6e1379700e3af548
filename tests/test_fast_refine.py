"""TT-GPR fast path (SPEC §5, §7): stage by stage and end to end against `mcgenref_fast.reference`.

CPU path (fused torch / C++ tiler) and the interpreted Triton path (MCGENREF_KERNELS=triton with
TRITON_INTERPRET=1, set by conftest.py). Tiny networks (tests/tiny_models.py) and small images.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from mcgenref_fast import ops, tiling
from mcgenref_fast import reference as ref
from mcgenref_fast import refine as fast
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.refine_types import (RefineResult, TileTensors, blend_weight_map, fuse_tiles, gather_tiles,
                                        make_noise_canvas, seed_dots)
from mcgenref_fast.seeds import extract_seeds
from mcgenref_fast.seeds_fast import extract_seeds_fast
from refine_inputs import flat_image_with_spots, left_breast_mask, seed_test_breast
from tiny_models import make_tiny_generator, make_tiny_segmentor

CFG = RefineConfig(tiles=TileConfig(32, 8))
TOL = 1e-4


_image = flat_image_with_spots
_breast = left_breast_mask


@pytest.fixture(scope="module")
def nets():
    return make_tiny_segmentor(), make_tiny_generator()


@pytest.fixture
def cpu_kernels(monkeypatch):
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")


@pytest.fixture
def triton_kernels(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


class CountingGenerator(nn.Module):
    """A real module around the generator: counts its calls and the tile images it was given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.tiles = 0
        self._lock = threading.Lock()        # the CPU fast path calls it from worker threads

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            self.tiles += int(x.shape[0])
        return self.inner(x, t)


def _assert_equivalent(fast_res: RefineResult, ref_res: RefineResult, energies: bool = True) -> None:
    """SPEC §7 end to end: same seeds → |p_fast − p_ref| ≤ 1e-4, masks differ only where |p_ref − ½| ≤ 1e-4."""
    assert torch.equal(fast_res.covered, ref_res.covered)
    assert float((fast_res.z0_logits - ref_res.z0_logits).abs().max()) <= TOL
    assert len(fast_res.diagnostics) == len(ref_res.diagnostics)
    for d_fast, d_ref in zip(fast_res.diagnostics, ref_res.diagnostics):
        assert d_fast.seeds_per_tile == d_ref.seeds_per_tile
        assert len(d_fast.seeds_rc) == len(d_ref.seeds_rc)
        for a, b in zip(d_fast.seeds_rc, d_ref.seeds_rc):       # "both paths found the same seeds"
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        if energies:
            assert len(d_fast.energy) == len(d_ref.energy)
            np.testing.assert_allclose(d_fast.energy, d_ref.energy, rtol=1e-5, atol=1e-6)
    p_fast, p_ref = fast_res.probability(), ref_res.probability()
    assert p_fast.shape == p_ref.shape and p_fast.dtype == torch.float32
    assert float((p_fast - p_ref).abs().max()) <= TOL
    differ = fast_res.mask() != ref_res.mask()
    assert bool(((p_ref[differ] - 0.5).abs() <= TOL).all())


# ----------------------------------------------------------------------------------------------- seeds
# (H, W, T, O, breast kind): tiles not dividing, one tile larger than the image, O = T/2, O = 0
SEED_GRIDS = [(45, 71, 32, 8, "part"), (20, 27, 32, 8, "full"), (66, 66, 32, 16, "full"),
              (40, 90, 17, 0, "sparse"), (37, 61, 13, 6, "part")]


@pytest.mark.parametrize("h,w,t,o,kind", SEED_GRIDS)
@pytest.mark.parametrize("max_seeds", [64, 3])
def test_vectorised_seeds_equal_the_reference(h, w, t, o, kind, max_seeds):
    rng = np.random.default_rng(h * w + t + max_seeds)
    cfg = RefineConfig(tiles=TileConfig(t, o), max_seeds_per_tile=max_seeds)
    breast = seed_test_breast(kind, h, w, rng)
    grid = tiling.make_grid((h, w), breast.numpy(), cfg.tiles)
    index = TileIndex.from_grid(grid)
    tiles = TileTensors.from_grid(grid)
    covered = torch.from_numpy(grid.covered)
    for trial in range(4):
        if trial % 2 == 0:     # many ties: values on a coarse lattice around the threshold
            z = torch.from_numpy(rng.integers(-2, 3, size=(h, w)).astype(np.float32) * 0.5)
        else:
            z = torch.from_numpy(rng.normal(0.0, 1.5, size=(h, w)).astype(np.float32))
        z = torch.where(covered, z, torch.zeros_like(z))        # Z = 0 outside the active tiles
        expected = extract_seeds(z, breast, covered, tiles.origins, cfg)
        got = extract_seeds_fast(z, breast, covered, index, cfg)
        assert got.counts.tolist() == [int(s.shape[0]) for s in expected]
        for a, b in zip(got.tensors(), expected):
            assert torch.equal(a, b)
        assert sum(got.counts.tolist()) > 0 or not breast.any()


def test_seed_maps_equal_the_reference_helpers():
    cfg = CFG
    seeds = [torch.tensor([[3, 4], [3, 6], [20, 30]]), torch.zeros((0, 2), dtype=torch.int64),
             torch.tensor([[31, 0]])]
    local = torch.zeros((3, 3, 2), dtype=torch.int64)
    for q, s in enumerate(seeds):
        local[q, : s.shape[0]] = s
    counts = torch.tensor([3, 0, 1])
    valid = torch.ones((3, 32, 32), dtype=torch.bool)
    valid[2, :, 20:] = False
    s_map, w_map = fast.seed_maps(local, counts, 32, cfg, valid)
    for q, s in enumerate(seeds):
        torch.testing.assert_close(s_map[q], seed_dots(s, 32, cfg.seed_sigma_px), rtol=1e-6, atol=0)
        torch.testing.assert_close(w_map[q], blend_weight_map(s, 32, cfg.blend_rho_px, cfg.blend_gamma, valid[q]),
                                   rtol=1e-6, atol=0)
    assert (s_map[1] == 0).all() and (w_map[1] == 0).all()


# ---------------------------------------------------------------------------------------------- stages
def _stage_inputs(nets, h=45, w=71, seed=11, cfg=CFG):
    seg, gen = nets
    image, breast = _image(h, w), _breast(h, w)
    grid = tiling.make_grid((h, w), breast.numpy(), cfg.tiles)
    tiles = TileTensors.from_grid(grid)
    index = TileIndex.from_grid(grid)
    i_tiles = gather_tiles(image, tiles)
    eps = gather_tiles(make_noise_canvas(cfg.n_samples, h, w, seed), tiles)         # (n, S, T, T)
    return seg, gen, image, breast, grid, tiles, index, i_tiles, eps


@pytest.mark.usefixtures("cpu_kernels")
def test_stages_match_the_reference(nets):
    seg, gen, image, breast, grid, tiles, index, i_tiles, eps = _stage_inputs(nets)
    cfg = CFG
    # start: z0 batched vs tile by tile
    z0_ref = ref.initial_logits(i_tiles, seg, cfg)
    z0, logits = fast.initial_logits(i_tiles, seg, cfg, max_batch=4)
    assert float((z0 - z0_ref).abs().max()) <= TOL
    # the fused canvas and the seeds of it
    canvas = ops.fuse_tiles(z0_ref, index)
    assert torch.equal(canvas, fuse_tiles(z0_ref, tiles))             # bit for bit (tile order)
    covered = torch.from_numpy(grid.covered)
    seeds_ref = extract_seeds(canvas, breast, covered, tiles.origins, cfg)
    seeds = extract_seeds_fast(canvas, breast, covered, index, cfg)
    assert sum(seeds.counts.tolist()) > 0 and (seeds.counts == 0).any()   # seeded and seedless tiles
    # surrogate y from the same seeds
    y_ref = torch.stack([ref.surrogate(ref.project_tile(i_tiles[q], eps[q], seeds_ref[q], gen, cfg,
                                                        tiles.valid[q]), seg) for q in range(tiles.n_tiles)])
    y_seedless = fast._sample_mean(torch.sigmoid(logits).expand(cfg.n_samples, *logits.shape))
    y, n_seeded = fast.project_and_surrogate(i_tiles, eps.transpose(0, 1).contiguous(), seeds, seg, gen,
                                             y_seedless, index.valid, cfg, max_batch=4)
    assert n_seeded == int((seeds.counts > 0).sum())
    assert float((y - y_ref).abs().max()) <= TOL
    seedless = seeds.counts == 0
    assert float((y[seedless] - y_ref[seedless]).abs().max()) <= 1e-6
    # inner loop from the same y
    z_ref, e_ref = ref.inner_loop(z0_ref, y_ref, z0_ref, i_tiles, tiles, cfg)
    z_fast, e_fast, canvas_fast = fast.inner_loop(z0_ref, y_ref, z0_ref, i_tiles, index, cfg)
    assert float((z_fast - z_ref).abs().max()) <= TOL
    assert torch.equal(canvas_fast, fuse_tiles(z_fast, tiles))
    assert len(e_fast) == cfg.inner_steps + 1
    np.testing.assert_allclose(e_fast, e_ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.usefixtures("cpu_kernels")
def test_end_to_end_equals_the_reference_on_the_cpu_path(nets):
    h, w = 45, 71
    image, breast = _image(h, w), _breast(h, w)
    res_fast = fast.refine(image, breast, *nets, cfg=CFG, seed=7)
    res_ref = ref.refine(image, breast, *nets, cfg=CFG, seed=7)
    assert sum(res_ref.diagnostics[0].seeds_per_tile) > 0
    assert not torch.equal(res_ref.logits, res_ref.z0_logits)
    _assert_equivalent(res_fast, res_ref)


@pytest.mark.usefixtures("triton_kernels")
@pytest.mark.parametrize("h,w,t,o", [(40, 70, 32, 8), (20, 27, 32, 8), (40, 70, 32, 0)])
def test_end_to_end_equals_the_reference_on_the_interpreted_triton_path(nets, h, w, t, o):
    """Euler step + blend, fusion and update through the Triton kernels (interpreted): several tiles,
    one tile with padding, O = 0."""
    cfg = RefineConfig(tiles=TileConfig(t, o), n_samples=1, outer_iters=1, inner_steps=2)
    image, breast = _image(h, w), _breast(h, w)
    assert ops.backend_for(image) == "triton"
    res_fast = fast.refine(image, breast, *nets, cfg=cfg, seed=3)
    res_ref = ref.refine(image, breast, *nets, cfg=cfg, seed=3)
    assert sum(res_ref.diagnostics[0].seeds_per_tile) > 0
    _assert_equivalent(res_fast, res_ref)


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("h,w,t,o", [
    (45, 71, 32, 8),       # tiles do not divide the image
    (20, 27, 32, 8),       # one tile, larger than the image (padding)
    (40, 70, 32, 16),      # O = T/2
    (40, 70, 32, 0),       # O = 0
])
def test_odd_sizes_equal_the_reference(nets, h, w, t, o):
    cfg = RefineConfig(tiles=TileConfig(t, o), outer_iters=2, inner_steps=4)
    image, breast = _image(h, w, seed=h + o), _breast(h, w)
    res_fast = fast.refine(image, breast, *nets, cfg=cfg, seed=1)
    res_ref = ref.refine(image, breast, *nets, cfg=cfg, seed=1)
    assert res_fast.logits.shape == (h, w)
    _assert_equivalent(res_fast, res_ref)


@pytest.mark.usefixtures("cpu_kernels")
def test_negative_pixels_seedless_surrogate_uses_the_clipped_image(nets):
    """x̂ = max(W·x + (1 − W)·I, 0): a seedless tile's surrogate is f(max(I, 0)), not f(I)."""
    h, w = 40, 70
    image = _image(h, w)
    image[:, 40:] -= 0.5                      # negative tissue on the right
    cfg = RefineConfig(tiles=TileConfig(32, 8), outer_iters=1, inner_steps=3)
    breast = torch.ones((h, w), dtype=torch.bool)
    _assert_equivalent(fast.refine(image, breast, *nets, cfg=cfg, seed=2),
                       ref.refine(image, breast, *nets, cfg=cfg, seed=2))


@pytest.mark.usefixtures("cpu_kernels")
def test_k_zero_returns_the_fused_initial_logits(nets):
    seg, gen = nets
    h, w = 45, 71
    image, breast = _image(h, w), _breast(h, w)
    counting = CountingGenerator(gen)
    res = fast.refine(image, breast, seg, counting, cfg=RefineConfig(tiles=TileConfig(32, 8), outer_iters=0))
    grid = tiling.make_grid((h, w), breast.numpy(), CFG.tiles)
    with torch.no_grad():
        z0 = torch.clamp(seg(gather_tiles(image, TileTensors.from_grid(grid))[:, None])[:, 0], -4, 4)
    assert res.diagnostics == [] and counting.calls == 0
    assert torch.equal(res.logits, res.z0_logits)
    assert float((res.logits - torch.from_numpy(tiling.fuse(z0.numpy(), grid))).abs().max()) <= 1e-5


@pytest.mark.usefixtures("cpu_kernels")
def test_same_seed_same_result_different_seed_different_result(nets):
    image, breast = _image(45, 71), _breast(45, 71)
    a = fast.refine(image, breast, *nets, cfg=CFG, seed=7)
    b = fast.refine(image, breast, *nets, cfg=CFG, seed=7)
    c = fast.refine(image, breast, *nets, cfg=CFG, seed=8)
    assert torch.equal(a.logits, b.logits)
    assert [d.energy for d in a.diagnostics] == [d.energy for d in b.diagnostics]
    assert sum(a.diagnostics[0].seeds_per_tile) > 0
    assert not torch.equal(a.logits, c.logits)
    assert torch.equal(a.z0_logits, c.z0_logits)


# ------------------------------------------------------------------------------------ seedless tiles
@pytest.mark.usefixtures("cpu_kernels")
def test_seedless_tiles_do_not_call_the_generator(nets):
    seg, gen = nets
    h, w = 45, 71
    cfg = RefineConfig(tiles=TileConfig(32, 8), outer_iters=2, inner_steps=3)
    # a flat field: no seed anywhere, the generator is never called, the result is still the reference's
    flat, breast = _image(h, w, spots=False), _breast(h, w)
    counting = CountingGenerator(gen)
    res = fast.refine(flat, breast, seg, counting, cfg=cfg, seed=0)
    assert counting.calls == 0
    assert all(sum(d.seeds_per_tile) == 0 for d in res.diagnostics)
    _assert_equivalent(res, ref.refine(flat, breast, seg, gen, cfg=cfg, seed=0))
    # one spot: only the tiles holding its seed are projected (n_seeded × S samples × N steps per iteration)
    spot = flat.clone()
    spot[5:7, 5:7] += 0.4
    counting = CountingGenerator(gen)
    res = fast.refine(spot, breast, seg, counting, cfg=cfg, seed=0)
    seeded = [sum(1 for c in d.seeds_per_tile if c > 0) for d in res.diagnostics]
    n_tiles = len(res.diagnostics[0].seeds_per_tile)
    assert 0 < max(seeded) < n_tiles
    assert counting.tiles == sum(seeded) * cfg.n_samples * cfg.euler_steps
    _assert_equivalent(res, ref.refine(spot, breast, seg, gen, cfg=cfg, seed=0))


@pytest.mark.usefixtures("cpu_kernels")
def test_batch_size_workers_and_energy_flag_do_not_change_the_result(nets):
    seg, gen = nets
    image, breast = _image(45, 71), _breast(45, 71)
    cfg = RefineConfig(tiles=TileConfig(32, 8), outer_iters=1, inner_steps=3)
    c1, c16 = CountingGenerator(gen), CountingGenerator(gen)
    a = fast.refine(image, breast, seg, c1, cfg=cfg, max_batch=1, cpu_workers=1)
    b = fast.refine(image, breast, seg, c16, cfg=cfg, max_batch=16, cpu_workers=1)
    c = fast.refine(image, breast, seg, gen, cfg=cfg, max_batch=16, cpu_workers=1, record_energy=False)
    d = fast.refine(image, breast, seg, gen, cfg=cfg, max_batch=2, cpu_workers=3)
    assert float((a.logits - b.logits).abs().max()) <= 1e-5
    assert float((a.logits - d.logits).abs().max()) <= 1e-5
    assert c1.tiles == c16.tiles and c1.calls > c16.calls
    assert torch.equal(b.logits, c.logits)
    assert all(e.energy == [] for e in c.diagnostics)
    assert [e.seeds_per_tile for e in b.diagnostics] == [e.seeds_per_tile for e in c.diagnostics]
    with pytest.raises(ValueError, match="max_batch"):
        fast.refine(image, breast, seg, gen, cfg=cfg, max_batch=0)
    with pytest.raises(ValueError, match="workers"):
        fast.refine(image, breast, seg, gen, cfg=cfg, cpu_workers=0)


def test_net_runner_keeps_order_restores_threads_and_disables_grad():
    threads = torch.get_num_threads()
    runner = fast.NetRunner("cpu", workers=3)
    seen = []

    def work(i: int) -> int:
        seen.append((torch.get_num_threads(), torch.is_grad_enabled()))
        return i * i

    assert runner.map(work, list(range(7))) == [i * i for i in range(7)]
    assert all(s == (1, False) for s in seen)
    assert torch.get_num_threads() == threads
    assert fast.NetRunner("cpu", workers=1).map(work, [1, 2]) == [1, 4]
    assert fast.default_max_batch("cpu") == fast.CPU_MAX_BATCH


# ------------------------------------------------------------------------------------------ plumbing
@pytest.mark.usefixtures("cpu_kernels")
def test_empty_breast_mask_gives_nothing(nets):
    image, empty = _image(40, 70), torch.zeros((40, 70), dtype=torch.bool)
    res = fast.refine(image, empty, *nets, cfg=CFG)
    res_ref = ref.refine(image, empty, *nets, cfg=CFG)
    assert not res.covered.any() and (res.probability() == 0).all()
    assert [d.seeds_per_tile for d in res.diagnostics] == [d.seeds_per_tile for d in res_ref.diagnostics]
    assert [d.energy for d in res.diagnostics] == [d.energy for d in res_ref.diagnostics]


def test_bad_inputs_raise(nets):
    with pytest.raises(ConfigError, match="breast mask shape"):
        fast.refine(_image(40, 70), torch.ones((40, 71), dtype=torch.bool), *nets, cfg=CFG)
    with pytest.raises(ConfigError, match=r"\(H, W\)"):
        fast.refine(_image(40, 70)[None], torch.ones((1, 40, 70), dtype=torch.bool), *nets, cfg=CFG)


@pytest.mark.usefixtures("cpu_kernels")
def test_networks_are_put_in_eval_mode_and_get_no_gradients():
    seg, gen = make_tiny_segmentor(), make_tiny_generator()
    seg.train(), gen.train()
    res = fast.refine(_image(40, 70), _breast(40, 70), seg, gen, cfg=RefineConfig(tiles=TileConfig(32, 8),
                                                                                     outer_iters=1))
    assert not seg.training and not gen.training
    assert all(p.grad is None for p in [*seg.parameters(), *gen.parameters()])
    assert not res.logits.requires_grad


@pytest.mark.usefixtures("cpu_kernels")
def test_progress_bar(nets, capsys):
    fast.refine(_image(40, 70), _breast(40, 70), *nets, cfg=RefineConfig(tiles=TileConfig(32, 8), outer_iters=1),
                progress=True)
    err = capsys.readouterr().err
    assert "TT-GPR" in err and "4/4" in err

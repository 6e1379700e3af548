"""CUDA-only checks (skipped without a GPU): the compiled Triton kernels against their torch twins, and the
fast refine against the reference on the GPU (SPEC §7, float32 with TF32 off). Run by bench/gpu_check.sh.

Issue 9 (written without a GPU, not yet run): CUDA-graph replay vs eager (executor ≤ 1e-5 on full
buckets, refine ≤ 1e-4), bf16 / fp16 refine vs a float64 reference (SPEC §7 low-precision rule), the whole
refine's host syncs per outer iteration (the seed stages' fixed-shape routes take none), and peak GPU
memory on a 2560×3328 image at the default config."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU with compiled Triton (TRITON_INTERPRET unset); bench/gpu_check.sh runs these")

from mcgenref_fast import ops, ops_torch, tiling  # noqa: E402
from mcgenref_fast.config import RefineConfig, TileConfig  # noqa: E402

CUDA = torch.device("cuda")
TOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _grid(h, w, tile, overlap, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    mask = (yy - h / 2) ** 2 + xx ** 2 <= (0.8 * w) ** 2
    mask &= rng.random((h, w)) > 0.01
    return tiling.make_grid((h, w), mask, TileConfig(tile, overlap))


@pytest.mark.parametrize("h,w,tile,overlap", [(1000, 777, 256, 32), (200, 130, 256, 32), (513, 700, 128, 64),
                                              (300, 300, 64, 0)])
def test_fuse_and_update_triton_match_torch_on_cuda(h, w, tile, overlap, monkeypatch):
    grid = _grid(h, w, tile, overlap)
    index = ops_torch.TileIndex.from_grid(grid, CUDA)
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (grid.n_tiles, tile, tile)
    z = 2 * torch.randn(shape, device=CUDA, generator=g)
    z0 = torch.clamp(2 * torch.randn(shape, device=CUDA, generator=g), -4, 4)
    y = torch.rand(shape, device=CUDA, generator=g)
    img = torch.rand(shape, device=CUDA, generator=g) * index.valid
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    canvas_tr = ops.fuse_tiles(z, index)
    z_tr = ops.gpr_update(z, y, canvas_tr, z0, img, index)
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    canvas_t = ops.fuse_tiles(z, index)
    z_t = ops.gpr_update(z, y, canvas_t, z0, img, index)
    cpu = tiling.fuse(z.cpu().numpy(), grid)
    assert (canvas_tr.cpu().numpy() - cpu).__abs__().max() <= 1e-6
    assert (canvas_tr - canvas_t).abs().max().item() <= 1e-6
    assert (z_tr - z_t).abs().max().item() <= TOL


def test_euler_step_triton_matches_torch_on_cuda(monkeypatch):
    g = torch.Generator(device="cuda").manual_seed(1)
    n, s, t = 7, 2, 256
    x = torch.randn((s, n, t, t), device=CUDA, generator=g)
    v = torch.randn((s, n, t, t), device=CUDA, generator=g)
    img = torch.rand((n, t, t), device=CUDA, generator=g)
    w = torch.rand((n, t, t), device=CUDA, generator=g)
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    a = ops.euler_step(x, v, 0.075, blend_w=w, image=img, last=True)
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    b = ops.euler_step(x, v, 0.075, blend_w=w, image=img, last=True)
    assert (a - b).abs().max().item() <= TOL


def test_fast_refine_matches_reference_on_cuda():
    from mcgenref_fast import reference
    from mcgenref_fast.refine import refine
    from tests.tiny_models import make_tiny_generator, make_tiny_segmentor

    g = torch.Generator().manual_seed(3)
    h, w = 300, 220
    image = 0.3 + 0.02 * torch.randn((h, w), generator=g)
    for r, c in [(100, 60), (104, 66), (97, 70), (110, 58), (150, 120)]:
        image[r:r + 2, c:c + 2] += 0.4
    breast = torch.ones((h, w), dtype=torch.bool)
    breast[:, 180:] = False
    cfg = RefineConfig(tiles=TileConfig(128, 32))
    seg, gen = make_tiny_segmentor().to(CUDA), make_tiny_generator().to(CUDA)
    ref = reference.refine(image.to(CUDA), breast.to(CUDA), seg, gen, cfg, seed=5)
    fast = refine(image.to(CUDA), breast.to(CUDA), seg, gen, cfg, seed=5)
    same_seeds = all(
        len(a.seeds_rc) == len(b.seeds_rc) and all(np.array_equal(x, y) for x, y in zip(a.seeds_rc, b.seeds_rc))
        for a, b in zip(ref.diagnostics, fast.diagnostics))
    assert same_seeds
    p_ref, p_fast = ref.probability(), fast.probability()
    assert (p_ref - p_fast).abs().max().item() <= 1e-4
    differ = (p_ref > 0.5) != (p_fast > 0.5)
    assert ((p_ref[differ] - 0.5).abs() <= 1e-4).all()


# ------------------------------------------------------------------------------ issue 9: GPU throughput
def _default_models():
    """The shipped models on CUDA (eval), or the default configs from torch.manual_seed(0) without weights."""
    from mcgenref_fast import models

    try:
        seg, gen = models.load_default_models(CUDA)
    except Exception:  # no shipped weights: untrained nets with the default configs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            seg, gen = models.Segmentor(models.SegmentorConfig()), models.VelocityNet(models.GeneratorConfig())
    return seg.to(CUDA).eval(), gen.to(CUDA).eval()


def _small_case():
    from tests.refine_inputs import flat_image_with_spots, left_breast_mask

    h, w = 300, 220
    return (flat_image_with_spots(h, w).to(CUDA), left_breast_mask(h, w).to(CUDA),
            RefineConfig(tiles=TileConfig(128, 32)))


def _same_seeds(a, b) -> bool:
    return all(len(x.seeds_rc) == len(y.seeds_rc) and all(np.array_equal(s, t) for s, t in zip(x.seeds_rc, y.seeds_rc))
               for x, y in zip(a.diagnostics, b.diagnostics))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_executor_graph_replay_equals_eager(precision):
    """Graph replay vs eager on the same inputs: ≤ 1e-5 when the batch fills its bucket (same shapes, same
    kernels). A padded batch runs at another batch size than eager, and cuDNN may pick other kernels for
    it: fp32 ≤ 1e-4 (SPEC §7's float32 tolerance; oneDNN on the CPU already differs by ~2e-5 between
    batch 3 and 4 of this net), bf16/fp16 ≤ 8 ulp of the output scale (8·eps·max(1, max|eager|): a few
    roundings of the low-precision activations; the CPU dry run saw ~1.5 ulp). Wrong padding or stale
    static inputs give O(1) errors, far above both."""
    from mcgenref_fast.net_exec import ExecConfig, NetExecutor

    _, gen = _default_models()
    graphed = NetExecutor(gen, CUDA, ExecConfig(precision=precision, cuda_graphs=True, max_batch=8))
    eager = NetExecutor(gen, CUDA, ExecConfig(precision=precision, cuda_graphs=False, max_batch=8))
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for n in (4, 3, 8, 1, 11):        # bucket 4, 4 again padded (a replay), 8, 1, then 8 + 4 (split)
            x = torch.rand((n, 2, 128, 128), device=CUDA, generator=g)
            t = torch.full((n,), 0.775, device=CUDA)
            a, b = graphed(x, t), eager(x, t)
            assert a.dtype == torch.float32 and a.shape == (n, 1, 128, 128)
            if n in (1, 4, 8):
                tol = 1e-5
            elif precision == "fp32":
                tol = 1e-4
            else:
                low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
                tol = 8 * torch.finfo(low).eps * max(1.0, b.abs().max().item())
            assert (a - b).abs().max().item() <= tol, (n, precision, (a - b).abs().max().item(), tol)
    assert graphed.replays == 6 and len(graphed.graphs) == 3 and eager.graphs == {}


def test_fast_refine_cuda_graphs_equal_eager():
    from mcgenref_fast.refine import refine

    image, mask, cfg = _small_case()
    seg, gen = _default_models()
    eager = refine(image, mask, seg, gen, cfg, seed=5, cuda_graphs=False)
    graphed = refine(image, mask, seg, gen, cfg, seed=5, cuda_graphs=True)
    assert _same_seeds(eager, graphed)
    # ≤ 1e-4 (SPEC §7's float32 tolerance), not 1e-5: the graphed calls run padded batches (z0: 6 tiles in
    # bucket 8), and cuDNN may pick another kernel for that batch size (fp32 rounding, ~1e-5 on the logits)
    assert (eager.probability() - graphed.probability()).abs().max().item() <= 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_fast_refine_meets_spec7_rule(precision):
    """SPEC §7 low precision: mean |p − p_fp64| ≤ 2 × (that of the fp32 fast path and of the same-precision
    reference, whichever is larger) + 1e-3; and the fp32 mask rule with 1e-2 between the two paths: when the
    low-precision fast path and the same-precision reference found the same seeds, their masks differ only where
    |p_ref − 0.5| ≤ 1e-2. (The first H200 run, 2026-11-28, held the mean rule; it checked the mask rule against
    the float64 reference instead, and one bf16 pixel flipped where p_fp64 = 0.526: bf16 networks move p by a
    few hundredths, so that form holds for no bf16 path, the reference included. The float64 margin of any flip
    is printed.)"""
    import copy

    from mcgenref_fast import reference
    from mcgenref_fast.refine import refine

    image, mask, cfg = _small_case()
    seg, gen = _default_models()
    ref64 = reference.refine(image.double(), mask, copy.deepcopy(seg).double(), copy.deepcopy(gen).double(), cfg,
                             seed=5)
    p64 = ref64.probability().double()
    err32 = (refine(image, mask, seg, gen, cfg, seed=5).probability().double() - p64).abs().mean().item()
    with torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]):
        ref_low = reference.refine(image, mask, seg, gen, cfg, seed=5)        # the same-precision reference
    err_ref_low = (ref_low.probability().double() - p64).abs().mean().item()
    low = refine(image, mask, seg, gen, cfg, seed=5, precision=precision)
    p_low = low.probability().double()
    err_low = (p_low - p64).abs().mean().item()
    assert err_low <= 2 * max(err32, err_ref_low) + 1e-3, (err_low, err32, err_ref_low)
    flips64 = (p_low > 0.5) != (p64 > 0.5)
    if bool(flips64.any()):
        print(f"{precision}: {int(flips64.sum())} pixel(s) off the float64 mask, largest |p_fp64 - 0.5| "
              f"{(p64[flips64] - 0.5).abs().max().item():.4f}")
    if _same_seeds(low, ref_low):
        p_ref = ref_low.probability().double()
        differ = (p_low > 0.5) != (p_ref > 0.5)
        assert bool(((p_ref[differ] - 0.5).abs() <= 1e-2).all()), (p_ref[differ] - 0.5).abs().max().item()


def _n_syncs(log) -> int:
    """Synchronising calls reported by `torch.cuda.set_sync_debug_mode("warn")`; torch's once-per-process
    notice that the mode "is a prototype feature" is not one (the first H200 run counted it)."""
    return sum("synchroniz" in str(w.message) and "prototype feature" not in str(w.message) for w in log)


def test_seed_stages_take_no_host_sync_and_equal_the_cpu_path():
    """`extract_seeds_fast` and `seed_maps` on CUDA take their fixed-shape routes: no host sync
    (`torch.cuda.set_sync_debug_mode("warn")`), the CPU compact path's seeds and d² exactly, and S and W
    bit for bit equal to the same torch ops on the device; against the CPU's tables within 1e-6 only, since
    CUDA's `d² / c` is `d² · (1/c)` (a CPU-scalar divisor) and its `exp` is not the CPU's (both ~1 ulp)."""
    import warnings

    from mcgenref_fast import refine as fast
    from mcgenref_fast.seeds_fast import extract_seeds_fast

    h, w = 300, 220
    cfg = RefineConfig(tiles=TileConfig(128, 32), max_seeds_per_tile=8)
    grid = _grid(h, w, 128, 32, seed=2)
    index_cpu = ops_torch.TileIndex.from_grid(grid)
    index = ops_torch.TileIndex.from_grid(grid, CUDA)
    rng = np.random.default_rng(4)
    z = torch.from_numpy(rng.integers(-2, 3, size=(h, w)).astype(np.float32) * 0.5)   # ties
    mask = torch.from_numpy(np.asarray(grid.covered, bool) & (rng.random((h, w)) > 0.1))
    covered = torch.from_numpy(grid.covered)
    want = extract_seeds_fast(z, mask, covered, index_cpu, cfg, fixed_shape=False)
    counts_host = want.counts
    args = (z.to(CUDA), mask.to(CUDA), covered.to(CUDA), index, cfg)
    extract_seeds_fast(*args)                                   # warm-up (cached index tensors)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            got = extract_seeds_fast(*args)
            s_dev, w_dev = fast.seed_maps(got.local, got.counts, 128, cfg, index.valid)           # device counts
            s_host, w_host = fast.seed_maps(got.local, counts_host, 128, cfg, index.valid)        # host counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert _n_syncs(log) == 0, [str(x.message) for x in log]
    assert got.local.shape[1] == 8
    m = want.local.shape[1]
    assert torch.equal(got.counts.cpu(), want.counts) and torch.equal(got.origins.cpu(), want.origins)
    assert torch.equal(got.local[:, :m].cpu(), want.local) and bool((got.local[:, m:] == 0).all())
    d2_cpu = ops_torch.seed_distance2(want.local, want.counts, 128)                              # CPU, exact
    assert torch.equal(ops_torch.seed_distance2_fixed(got.local, got.counts, 128).cpu(), d2_cpu)
    s_ref, w_ref = ops_torch._seed_maps_from_d2(d2_cpu.to(CUDA), cfg.seed_sigma_px, cfg.blend_rho_px,
                                                cfg.blend_gamma, index.valid)                # device ops
    s_cpu, w_cpu = fast.seed_maps(want.local, want.counts, 128, cfg, index_cpu.valid)           # C++ tables
    for s_map, w_map in ((s_dev, w_dev), (s_host, w_host)):
        assert torch.equal(s_map, s_ref) and torch.equal(w_map, w_ref)
        assert (s_map.cpu() - s_cpu).abs().max().item() <= 1e-6
        assert (w_map.cpu() - w_cpu).abs().max().item() <= 1e-6


def test_host_syncs_per_outer_iteration():
    """The whole refine's host syncs (`torch.cuda.set_sync_debug_mode("warn")` warnings) grow by ≤ 1 per
    outer iteration (the seed counts; `extract_seeds_fast` and `seed_maps` take their sync-free
    fixed-shape routes on CUDA): counted for K = 1 and K = 3, each after a warm-up run (graphs captured)."""
    import warnings
    from dataclasses import replace

    from mcgenref_fast import refine as fast

    image, mask, cfg = _small_case()
    seg, gen = _default_models()

    def syncs(k: int) -> int:
        run_cfg = replace(cfg, outer_iters=k)
        fast.refine(image, mask, seg, gen, run_cfg, seed=5)                    # warm-up: graph captures
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fast.refine(image, mask, seg, gen, run_cfg, seed=5)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return _n_syncs(log)

    total1, total3 = syncs(1), syncs(3)
    print(f"\nhost syncs of the whole refine: K=1 {total1}, K=3 {total3}")
    assert total3 - total1 <= 2, (total1, total3)          # ≤ 1 per outer iteration
    assert total1 <= 40, (total1, total3)                   # + a constant (grid, tile index, start, results)


def test_peak_memory_full_mammogram_default_config():
    """≤ 8 GB of GPU memory (torch.cuda.max_memory_allocated, weights and graphs included) for one
    2560×3328 canonical image at the default config with the default models."""
    from mcgenref_fast.refine import refine
    from tests.refine_inputs import flat_image_with_spots

    h, w = 3328, 2560
    yy, xx = np.ogrid[:h, :w]
    breast = (yy - h / 2) ** 2 / (h / 2) ** 2 + xx ** 2 / (0.8 * w) ** 2 <= 1
    image = flat_image_with_spots(h, w).to(CUDA)
    seg, gen = _default_models()
    import gc

    gc.collect()                       # earlier tests' modules, executors and graph pools
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    refine(image, torch.from_numpy(breast).to(CUDA), seg, gen, RefineConfig(), seed=0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    print(f"\npeak GPU memory, 2560×3328 default config: {peak / 1e9:.2f} GB")
    assert peak <= 8e9

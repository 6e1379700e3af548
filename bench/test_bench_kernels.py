"""The fast path's three kernels against their twins (pytest-benchmark), on a 2560×3328 canonical image with
the default tiles (T = 256, O = 32, ~140 active tiles, 2 samples).

On a CUDA machine: Triton (`mcgenref_fast.kernels`) vs the torch twin (`ops_torch`) on the GPU, plus a
plain device copy of the same bytes (the bandwidth yardstick; `extra_info['GB/s']` holds the effective
bandwidth of each run: the bytes a kernel must move at least, over its median time).
On a CPU-only machine: the torch twin (the CPU fast path) vs a naive reference (per-tile Python loops,
and autograd on `energy.energy` for the update, as `reference.py` does).

    pytest bench/test_bench_kernels.py --benchmark-enable --benchmark-group-by=group
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcgenref_fast import ops_torch, tiling
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.energy import energy
from mcgenref_fast.refine_types import TileTensors, blend_weight_map
from mcgenref_fast.refine_types import fuse_tiles as naive_fuse

H, W, SAMPLES, N_SEEDS = 3328, 2560, 2, 64
CFG = RefineConfig()
DT = (1.0 - CFG.t0) / CFG.euler_steps
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def case():
    return make_case()


def make_case() -> dict:
    """The benchmark's inputs on DEVICE: ~140 active tiles of an elliptic breast, random z / y / z0 / x / v."""
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:H, :W]
    mask = (yy - H / 2) ** 2 / (H / 2) ** 2 + xx ** 2 / (0.8 * W) ** 2 <= 1  # a breast against the left edge
    grid = tiling.make_grid((H, W), mask, CFG.tiles)
    index = ops_torch.TileIndex.from_grid(grid, DEVICE)
    n, t = grid.n_tiles, grid.tile_px
    g = torch.Generator().manual_seed(0)
    image = torch.from_numpy(tiling.gather(rng.random((H, W), dtype=np.float32), grid))
    z = torch.randn((n, t, t), generator=g)
    seeds = torch.randint(0, t, (n, N_SEEDS, 2), generator=g).float()
    counts = torch.randint(0, 9, (n,), generator=g)        # a few seeds per tile, like real canvases
    d = dict(grid=grid, index=index, tiles=TileTensors.from_grid(grid, DEVICE), image=image, z=z,
             y=torch.rand((n, t, t), generator=g), z0=torch.clamp(torch.randn((n, t, t), generator=g), -4, 4),
             x=torch.randn((SAMPLES, n, t, t), generator=g), v=torch.randn((SAMPLES, n, t, t), generator=g),
             seeds=seeds, counts=counts)
    d = {k: (val.to(DEVICE) if isinstance(val, torch.Tensor) else val) for k, val in d.items()}
    d["canvas"] = ops_torch.fuse_tiles(d["z"], index)
    _ = index.canvas_index  # build the torch twin's cached index outside the timings
    return d


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _timed(fn):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        _sync()
        return out
    return run


def _record_bandwidth(benchmark, n_bytes: int) -> None:
    benchmark.extra_info["bytes"] = n_bytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(n_bytes / stats.stats.median / 1e9, 1)


def _tile_bytes(c) -> int:
    return c["z"].numel() * 4


# ------------------------------------------------------------------------------------ naive references
def _naive_euler_last(c):
    """Per tile and sample, as `reference.project_tile` does (the generator left out)."""
    out = torch.empty_like(c["x"])
    for q in range(c["z"].shape[0]):
        k = int(c["counts"][q])
        w = blend_weight_map(c["seeds"][q, :k], c["grid"].tile_px, CFG.blend_rho_px, CFG.blend_gamma,
                             c["tiles"].valid[q], DEVICE)
        for r in range(SAMPLES):
            x = c["x"][r, q] + DT * c["v"][r, q]
            out[r, q] = torch.clamp(w * x + (1.0 - w) * c["image"][q], min=0.0)
    return out


def _naive_update(c):
    """One inner step with autograd on the reference energy (slice-loop fusion), as `reference.inner_loop`."""
    zz = c["z"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(zz, c["y"], c["z0"], c["image"], c["tiles"], CFG), zz)
    return c["z"] - CFG.eta * grad


# ------------------------------------------------------------------------------------------- fast paths
def _fast_impls():
    if CUDA:
        from mcgenref_fast.kernels import euler_step as ke
        from mcgenref_fast.kernels import fuse_tiles as kf
        from mcgenref_fast.kernels import gpr_update as ku
        return ke.euler_step, kf.fuse_tiles, ku.gpr_update
    return ops_torch.euler_step, ops_torch.fuse_tiles, ops_torch.gpr_update


FAST = "triton" if CUDA else "torch"
BASE = "torch" if CUDA else "naive"


def _euler_kwargs(c):
    return dict(image=c["image"], seeds=c["seeds"], seed_counts=c["counts"], rho_px=CFG.blend_rho_px,
                gamma=CFG.blend_gamma, last=True, extent=c["index"].extent)


@pytest.mark.benchmark(group="euler-last-step")
def test_euler_fast(benchmark, case):
    euler, _, _ = _fast_impls()
    out = benchmark(_timed(euler), case["x"], case["v"], DT, **_euler_kwargs(case))
    _record_bandwidth(benchmark, (3 * SAMPLES + 1) * _tile_bytes(case))
    benchmark.extra_info["impl"] = FAST
    assert out.shape == case["x"].shape


@pytest.mark.benchmark(group="euler-last-step")
def test_euler_baseline(benchmark, case):
    if CUDA:
        fn = _timed(lambda c: ops_torch.euler_step(c["x"], c["v"], DT, **_euler_kwargs(c)))
    else:
        fn = _naive_euler_last
    out = benchmark.pedantic(fn, args=(case,), rounds=3, iterations=1)
    _record_bandwidth(benchmark, (3 * SAMPLES + 1) * _tile_bytes(case))
    benchmark.extra_info["impl"] = BASE
    euler, _, _ = _fast_impls()
    assert (out - euler(case["x"], case["v"], DT, **_euler_kwargs(case))).abs().max() <= 1e-4


def _fuse_bytes(c) -> int:
    return 2 * SAMPLES * _tile_bytes(c) + SAMPLES * H * W * 4  # tiles + weights (per sample) + canvas


@pytest.mark.benchmark(group="fuse-tiles")
def test_fuse_fast(benchmark, case):
    _, fuse, _ = _fast_impls()
    out = benchmark(_timed(fuse), case["x"], case["index"])
    _record_bandwidth(benchmark, _fuse_bytes(case))
    benchmark.extra_info["impl"] = FAST
    assert out.shape == (SAMPLES, H, W)


@pytest.mark.benchmark(group="fuse-tiles")
def test_fuse_baseline(benchmark, case):
    if CUDA:
        fn = _timed(lambda c: ops_torch.fuse_tiles(c["x"], c["index"]))
    else:
        fn = lambda c: torch.stack([naive_fuse(c["x"][r], c["tiles"]) for r in range(SAMPLES)])  # noqa: E731
    out = benchmark.pedantic(fn, args=(case,), rounds=3, iterations=1)
    _record_bandwidth(benchmark, _fuse_bytes(case))
    benchmark.extra_info["impl"] = BASE
    _, fuse, _ = _fast_impls()
    assert (out - fuse(case["x"], case["index"])).abs().max() <= 1e-6


def _update_bytes(c) -> int:
    return 7 * _tile_bytes(c)  # z, y, z0, I, w, Z window read; z_new written


@pytest.mark.benchmark(group="gpr-update")
def test_update_fast(benchmark, case):
    _, _, update = _fast_impls()
    c = case
    out = benchmark(_timed(update), c["z"], c["y"], c["canvas"], c["z0"], c["image"], c["index"])
    _record_bandwidth(benchmark, _update_bytes(c))
    benchmark.extra_info["impl"] = FAST
    assert out.shape == c["z"].shape


@pytest.mark.benchmark(group="gpr-update")
def test_update_baseline(benchmark, case):
    c = case
    if CUDA:
        fn = _timed(lambda c: ops_torch.gpr_update(c["z"], c["y"], c["canvas"], c["z0"], c["image"], c["index"]))
    else:
        fn = _naive_update
    out = benchmark.pedantic(fn, args=(c,), rounds=3, iterations=1)
    _record_bandwidth(benchmark, _update_bytes(c))
    benchmark.extra_info["impl"] = BASE
    _, _, update = _fast_impls()
    assert (out - update(c["z"], c["y"], c["canvas"], c["z0"], c["image"], c["index"])).abs().max() <= 1e-4


@pytest.mark.benchmark(group="device-copy")
@pytest.mark.skipif(not CUDA, reason="the copy yardstick is for the GPU's bandwidth")
def test_copy_yardstick(benchmark, case):
    src = torch.empty(_update_bytes(case) // 8, dtype=torch.float32, device=DEVICE)  # read + write = same bytes
    dst = torch.empty_like(src)
    benchmark(_timed(dst.copy_), src)
    _record_bandwidth(benchmark, 2 * src.numel() * 4)

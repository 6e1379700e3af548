"""TT-GPR stage by stage and end to end on a 2560×3328 canonical mammogram, plus the device yardsticks
(issue 9; pytest-benchmark, one group each — render with bench/render_bench.py).

    pytest bench/test_bench_stages.py --benchmark-enable --benchmark-json=bench/stages.json
    python bench/render_bench.py bench/stages.json --out bench/stages

Image: the canonical `dev` background BCC_2_L_CC (0.07 mm → 3328×2560) with one injected cluster when
shared/data is present (`MCGENREF_SHARED_DATA`), else a synthetic 3328×2560 one (smooth tissue, a left
elliptic breast, three clusters of 2×2 px MCs); `extra_info['image']` says which. Default RefineConfig,
the shipped models (`load_default_models`). `extra_info` records the device, the seeded tiles, and on CUDA
`torch.cuda.max_memory_allocated` (bytes, reset before each benchmark).

Groups:
- `stage-segment`: f on every active tile (the z0 pass): the fast path (NetExecutor; CUDA: fp32 and bf16)
  vs per-tile batch-1 calls (what the reference does);
- `stage-project`, `stage-surrogate`, `stage-project+surrogate`: one outer iteration's projection (seed
  maps + N Euler steps of the generator on the seeded tiles; measured as `project_and_surrogate` with a
  zero segmentor), the surrogate (f on the S·c projected tiles, sigmoid, sample mean) and both together;
- `stage-update`: J inner steps (fusion + `gpr_update`), with and without the energy record;
- `stage-fuse`: one `ops.fuse_tiles` of the tile batch (`extra_info['GB/s']`);
- `end-to-end`: the fast refine on the full image (fp32, and bf16 on CUDA), and fast vs reference on a
  1024×1024 crop in the same run (the reference is per tile at batch 1 and slow on a full image: 1 round;
  the ratio on the crop is the figure to compare with the "≥ 20× the reference" target);
- `yardstick-matmul` (TFLOP/s, 8192² fp32 with TF32 off, and bf16), `yardstick-copy` (device copy of
  1 GiB, GB/s read + write) and `yardstick-h2d` (pinned host → device, 256 MiB): the measured rates for
  the roofline in bench/RESULTS.md.

On a CPU-only machine everything runs on a 512×512 crop, one round, and the reference end to end and the
bf16 cases are skipped (bench/test_bench_refine.py holds the CPU comparison): the whole file takes about
a minute with `--benchmark-disable`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from mcgenref_fast import net_exec, ops, tiling
from mcgenref_fast import reference as ref
from mcgenref_fast import refine as fast
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.refine_types import make_noise_canvas
from mcgenref_fast.seeds_fast import extract_seeds_fast

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MCGENREF_SHARED_DATA", REPO.parent / "shared" / "data"))
BACKGROUND = DATA / "ffdm_backgrounds" / "BCC_2_L_CC.png"
H, W = 3328, 2560
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
CPU_SIDE = 512                      # the CPU runs a crop of this size
CROP = 1024 if CUDA else CPU_SIDE   # fast vs reference end to end on this crop
ROUNDS = 5 if CUDA else 1
CFG = RefineConfig()
PRECISIONS = ["fp32", "bf16"] if CUDA else ["fp32"]
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# ------------------------------------------------------------------------------------------ the image
def _synthetic() -> tuple[np.ndarray, np.ndarray, str]:
    """3328×2560: smooth tissue 0.25-0.4 in a left elliptic breast, three clusters of 2×2 px MCs (+0.4)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    breast = (yy - H / 2) ** 2 / (0.48 * H) ** 2 + xx ** 2 / (0.75 * W) ** 2 <= 1
    tissue = 0.32 + 0.05 * np.sin(yy / 97.0) * np.cos(xx / 131.0) + 0.01 * rng.standard_normal((H, W))
    image = np.where(breast, tissue, 0.0).astype(np.float32)
    for cy, cx in ((900, 600), (1700, 1100), (2500, 500)):
        for _ in range(7):
            r, c = cy + int(rng.integers(-40, 40)), cx + int(rng.integers(-40, 40))
            image[r:r + 2, c:c + 2] += 0.4
    return image, breast, "synthetic 3328x2560, 3 clusters of 7 MCs"


def _real() -> tuple[np.ndarray, np.ndarray, str] | None:
    try:
        from mcgenref_fast.canonical import to_canonical
        from mcgenref_fast.io import read_mammogram
        from mcgenref_fast.synth import inject_clusters
    except ImportError:
        return None
    if not BACKGROUND.is_file():
        return None
    canonical = to_canonical(read_mammogram(BACKGROUND, spacing_mm=0.07))
    if canonical.image.shape != (H, W):
        return None
    breast = np.asarray(canonical.breast_mask, bool)
    rows = np.flatnonzero(breast.any(axis=1))
    site = np.array([[(rows[0] + rows[-1]) / 2, 500.0]])
    if not breast[int(site[0, 0]), int(site[0, 1])]:
        return None
    inj = inject_clusters(canonical, site, np.random.default_rng(0))
    return (np.ascontiguousarray(inj.image, np.float32), breast,
            f"BCC_2_L_CC canonical 3328x2560 + {len(inj.clusters[0].mcs)} MCs")


def _crop(image: np.ndarray, breast: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A side×side crop against the chest wall (left), centred on the breast's rows."""
    rows = np.flatnonzero(breast.any(axis=1))
    r0 = int(np.clip((rows[0] + rows[-1]) // 2 - side // 2, 0, image.shape[0] - side))
    return (np.ascontiguousarray(image[r0:r0 + side, :side]), np.ascontiguousarray(breast[r0:r0 + side, :side]))


def _models():
    from mcgenref_fast import models

    try:
        seg, gen = models.load_default_models(device=str(DEVICE))
        how = "shipped weights"
    except Exception as exc:  # no shipped weights: untrained nets with the default configs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            seg, gen = models.Segmentor(models.SegmentorConfig()), models.VelocityNet(models.GeneratorConfig())
        how = f"untrained default configs ({type(exc).__name__})"
    return seg.to(DEVICE).eval(), gen.to(DEVICE).eval(), how


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _timed(fn: Callable) -> Callable:
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        _sync()
        return out
    return run


def _net(model, precision: str, cuda_graphs: bool = True):
    """What refine calls: a NetExecutor on CUDA, the module itself on the CPU."""
    if not CUDA:
        return model
    cfg = fast.exec_config(precision, cuda_graphs, fast.default_max_batch(DEVICE))
    return net_exec.executor_for(model, DEVICE, cfg)


@pytest.fixture(scope="module")
def case():
    real = _real()
    image, breast, how = real if real is not None else _synthetic()
    if not CUDA:
        image, breast = _crop(image, breast, CPU_SIDE)
        how += f", CPU: {CPU_SIDE}x{CPU_SIDE} crop"
    seg, gen, models_how = _models()
    img_t = torch.from_numpy(image).to(DEVICE)
    mask_t = torch.from_numpy(breast).to(DEVICE)
    grid = tiling.make_grid(image.shape, breast.astype(np.uint8), CFG.tiles)
    index = TileIndex.from_grid(grid, DEVICE)
    i_tiles = ops.gather_tiles(img_t, index)
    eps_tiles = ops.gather_tiles(make_noise_canvas(CFG.n_samples, *image.shape, 0, DEVICE), index)
    runner = fast.NetRunner(DEVICE)
    max_batch = fast.default_max_batch(DEVICE)
    with torch.no_grad():
        z0, logits = fast.initial_logits(i_tiles, _net(seg, "fp32"), CFG, max_batch, runner)
        y_seedless = torch.sigmoid(logits)
        canvas = ops.fuse_tiles(z0, index)
        covered = torch.from_numpy(grid.covered).to(DEVICE)
        seeds = extract_seeds_fast(canvas, mask_t, covered, index, CFG)
        counts_host = seeds.counts.cpu()
        y, n_seeded = fast.project_and_surrogate(i_tiles, eps_tiles, seeds, _net(seg, "fp32"), _net(gen, "fp32"),
                                                 y_seedless, index.valid, CFG, max_batch, runner,
                                                 counts_host=counts_host)
    crop_img, crop_mask = _crop(image, breast, CROP)
    info = {"image": how, "models": models_how, "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
            "n_tiles": grid.n_tiles, "seeded_tiles_z0": n_seeded, "torch": torch.__version__}
    return dict(image=img_t, mask=mask_t, seg=seg, gen=gen, index=index, i_tiles=i_tiles, eps_tiles=eps_tiles,
                z0=z0, y=y, y_seedless=y_seedless, seeds=seeds, counts_host=counts_host, runner=runner,
                max_batch=max_batch, info=info, n_seeded=n_seeded,
                crop=(torch.from_numpy(crop_img).to(DEVICE), torch.from_numpy(crop_mask).to(DEVICE)))


@pytest.fixture(autouse=True)
def _memory(request):
    """Reset the peak before each benchmark, record it (bytes) after (CUDA)."""
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None and CUDA:
        bench.extra_info["max_memory_allocated"] = int(torch.cuda.max_memory_allocated())


def _run(benchmark, fn: Callable, *args, rounds: int = ROUNDS, warmup: int = 1 if CUDA else 0, **kwargs):
    """`fn(*args, **kwargs)` timed (device synchronised) over `rounds`, after `warmup` untimed runs (CUDA:
    1, which also captures the CUDA graphs)."""
    return benchmark.pedantic(_timed(fn), args=args, kwargs=kwargs, rounds=rounds, iterations=1,
                              warmup_rounds=warmup)


# ------------------------------------------------------------------------------------------- stages
@pytest.mark.benchmark(group="stage-segment")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_segment_fast(benchmark, case, precision):
    seg = _net(case["seg"], precision)
    with torch.no_grad():
        _run(benchmark, fast.initial_logits, case["i_tiles"], seg, CFG, case["max_batch"], case["runner"])
    benchmark.extra_info.update(case["info"], precision=precision, tile_evaluations=case["info"]["n_tiles"])


@pytest.mark.benchmark(group="stage-segment")
def test_segment_per_tile_batch1(benchmark, case):
    def per_tile(i_tiles):
        return torch.cat([case["seg"](i_tiles[q:q + 1, None])[:, 0] for q in range(i_tiles.shape[0])])

    with torch.no_grad():
        _run(benchmark, per_tile, case["i_tiles"], rounds=min(ROUNDS, 2))
    benchmark.extra_info.update(case["info"], impl="per tile, batch 1, eager fp32 (the reference's calls)")


def _zero_segmentor(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@pytest.mark.benchmark(group="stage-project")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_project(benchmark, case, precision):
    c = case
    with torch.no_grad():
        _run(benchmark, fast.project_and_surrogate, c["i_tiles"], c["eps_tiles"], c["seeds"], _zero_segmentor,
             _net(c["gen"], precision), c["y_seedless"], c["index"].valid, CFG, c["max_batch"], c["runner"],
             counts_host=c["counts_host"])
    benchmark.extra_info.update(c["info"], precision=precision,
                                generator_evaluations=c["n_seeded"] * CFG.n_samples * CFG.euler_steps)


def _surrogate(x_hat: torch.Tensor, seg, max_batch: int, runner) -> torch.Tensor:
    """y of the seeded tiles from their projections x̂ (S, c, T, T): f in batches, sigmoid, sample mean."""
    s, c, t, _ = x_hat.shape
    sig = torch.sigmoid(fast._segment(x_hat.reshape(s * c, t, t), seg, max_batch, runner))
    return fast._sample_mean(sig.reshape(s, c, t, t))


@pytest.mark.benchmark(group="stage-surrogate")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_surrogate(benchmark, case, precision):
    c = case
    n = max(1, c["n_seeded"])
    x_hat = torch.clamp(c["eps_tiles"][:, :n] * 0.3 + c["i_tiles"][:n] * 0.7, min=0.0).contiguous()
    with torch.no_grad():
        _run(benchmark, _surrogate, x_hat, _net(c["seg"], precision), c["max_batch"], c["runner"])
    benchmark.extra_info.update(c["info"], precision=precision, segmentor_evaluations=n * CFG.n_samples)


@pytest.mark.benchmark(group="stage-project+surrogate")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_project_and_surrogate(benchmark, case, precision):
    c = case
    with torch.no_grad():
        _run(benchmark, fast.project_and_surrogate, c["i_tiles"], c["eps_tiles"], c["seeds"],
             _net(c["seg"], precision), _net(c["gen"], precision), c["y_seedless"], c["index"].valid, CFG,
             c["max_batch"], c["runner"], counts_host=c["counts_host"])
    benchmark.extra_info.update(c["info"], precision=precision)


@pytest.mark.benchmark(group="stage-update")
@pytest.mark.parametrize("record_energy", [True, False])
def test_update(benchmark, case, record_energy):
    c = case
    _run(benchmark, fast.inner_loop, c["z0"], c["y"], c["z0"], c["i_tiles"], c["index"], CFG, None, record_energy)
    n = c["z0"].numel() * 4
    benchmark.extra_info.update(c["info"], record_energy=record_energy, inner_steps=CFG.inner_steps,
                                min_bytes_per_step=7 * n + 2 * c["image"].numel() * 4)


@pytest.mark.benchmark(group="stage-fuse")
def test_fuse(benchmark, case):
    c = case
    _run(benchmark, ops.fuse_tiles, c["z0"], c["index"], rounds=20 if CUDA else 3)
    n_bytes = 2 * c["z0"].numel() * 4 + c["image"].numel() * 4          # tiles + weights read, canvas written
    benchmark.extra_info.update(c["info"], bytes=n_bytes)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(n_bytes / benchmark.stats.stats.median / 1e9, 1)


# --------------------------------------------------------------------------------------- end to end
def _seeded(result) -> list[int]:
    return [sum(1 for n in d.seeds_per_tile if n > 0) for d in result.diagnostics]


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_refine_fast_full(benchmark, case, precision):
    c = case
    result = _run(benchmark, fast.refine, c["image"], c["mask"], c["seg"], c["gen"], CFG, 0, precision=precision)
    benchmark.extra_info.update(c["info"], precision=precision, seeded_tiles_per_iteration=_seeded(result),
                                size=list(c["image"].shape))


_crop_results: dict[str, object] = {}


@pytest.mark.benchmark(group="end-to-end-crop")
def test_refine_fast_crop(benchmark, case):
    image, mask = case["crop"]
    result = _run(benchmark, fast.refine, image, mask, case["seg"], case["gen"], CFG, 0)
    _crop_results["fast"] = result
    benchmark.extra_info.update(case["info"], size=list(image.shape), seeded_tiles_per_iteration=_seeded(result))


@pytest.mark.benchmark(group="end-to-end-crop")
@pytest.mark.skipif(not CUDA, reason="CPU: bench/test_bench_refine.py compares with the reference")
def test_refine_reference_crop(benchmark, case):
    image, mask = case["crop"]
    result = _run(benchmark, ref.refine, image, mask, case["seg"], case["gen"], CFG, 0, rounds=1, warmup=0)
    _crop_results["reference"] = result
    benchmark.extra_info.update(case["info"], size=list(image.shape), seeded_tiles_per_iteration=_seeded(result))
    if "fast" in _crop_results:
        p_fast, p_ref = _crop_results["fast"].probability(), result.probability()
        benchmark.extra_info["max_abs_p_diff"] = float((p_fast - p_ref).abs().max())


# ---------------------------------------------------------------------------------------- yardsticks
@pytest.mark.benchmark(group="yardstick-matmul")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if CUDA else [torch.float32])
def test_matmul_rate(benchmark, dtype):
    n = 8192 if CUDA else 1024
    g = torch.Generator(device=DEVICE).manual_seed(0)
    a = torch.randn((n, n), device=DEVICE, generator=g).to(dtype)
    b = torch.randn((n, n), device=DEVICE, generator=g).to(dtype)
    _run(benchmark, torch.matmul, a, b, rounds=10 if CUDA else 2)
    flops = 2 * n ** 3
    benchmark.extra_info.update(n=n, dtype=str(dtype), flops=flops, tf32=False)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        benchmark.extra_info["TFLOP/s"] = round(flops / benchmark.stats.stats.median / 1e12, 2)


@pytest.mark.benchmark(group="yardstick-copy")
def test_copy_bandwidth(benchmark):
    n_bytes = (1 << 30) if CUDA else (64 << 20)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=DEVICE).fill_(1.0)
    dst = torch.empty_like(src)
    _run(benchmark, dst.copy_, src, rounds=20 if CUDA else 3)
    benchmark.extra_info.update(bytes_moved=2 * n_bytes)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(2 * n_bytes / benchmark.stats.stats.median / 1e9, 1)


@pytest.mark.benchmark(group="yardstick-h2d")
@pytest.mark.skipif(not CUDA, reason="host → device copies need a GPU")
def test_h2d_pinned_bandwidth(benchmark):
    n_bytes = 256 << 20
    src = torch.empty(n_bytes // 4, dtype=torch.float32).pin_memory()
    dst = torch.empty(n_bytes // 4, dtype=torch.float32, device=DEVICE)
    _run(benchmark, lambda: dst.copy_(src, non_blocking=True), rounds=10)
    benchmark.extra_info.update(bytes=n_bytes)
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(n_bytes / benchmark.stats.stats.median / 1e9, 1)


def test_stage_case_is_sane(case):
    """The stage inputs are what refine would see (z0 within the clamp, y a probability)."""
    assert case["z0"].abs().max() <= CFG.z_clamp
    assert 0.0 <= float(case["y"].min()) and float(case["y"].max()) <= 1.0
    assert case["i_tiles"].shape[-1] == CFG.tiles.tile_px

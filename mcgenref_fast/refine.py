"""TT-GPR, fast path (SPEC §4, §5): the reference's signature, noise, seeds and result, computed in batches.

`refine(image, breast_mask, segmentor, generator, cfg=RefineConfig(), seed=0, progress=False, *,
record_energy=True, max_batch=None, cpu_workers=None, precision="fp32", cuda_graphs=True) -> RefineResult`
is a drop-in for
`mcgenref_fast.reference.refine` and matches it within 1e-4 (SPEC §7; tests/test_fast_refine.py). What
changes (docs/fast_path.md):

- all active tiles are processed as one batch: the tile windows of the image and of the noise canvas ε
  (`make_noise_canvas`, the reference's draw) are gathered once; the networks see batches of at most
  `max_batch` tile images (small on the CPU, where several single-threaded workers share the cores:
  `NetRunner`);
- f(I_q) is evaluated once: it gives z0 = clamp(f(I_q), −4, 4) and, for every tile without seeds, the
  surrogate y_q = sigmoid(f(I_q)) (exact, SPEC §4.2: W ≡ 0 so x̂ = max(I_q, 0)), so seedless tiles never
  call the generator nor the segmentor again;
- seeds are extracted vectorised (`seeds_fast`), the seed dots S_q and blend maps W_q of all seeded tiles
  come from one squared-distance-to-nearest-seed map per tile;
- the Euler steps and the seed blend run through `ops.euler_step`, the fusion through `ops.fuse_tiles`
  and the gathers through `ops.gather_tiles` (both the C++ tiler on the CPU), each inner step is one
  `ops.gpr_update` (analytic gradient, no autograd); all under `torch.no_grad()`;
- the energy diagnostics come from the same update pass (`return_energy=True`, float32 per tile, summed in
  float64 over tiles): within ~1e-6 relative of the reference's float64 values. `record_energy=False`
  skips them (the update pass is cheaper) and leaves `IterationDiagnostics.energy` empty.
- on CUDA (issue 9) the networks run through `net_exec.NetExecutor` (channels-last with bf16/fp16, `precision`
  bf16/fp16 autocast, CUDA-graph replay in batch buckets), the noise canvas is drawn on the CPU while the
  z0 segmentation runs and uploaded through pinned memory, and the loop takes one host sync per outer
  iteration (the seed counts; `seeds_fast` and `seed_maps` take their fixed-shape, sync-free routes on
  CUDA): energies and seed diagnostics stay on the device until the end (two transfers). The CPU path is
  unchanged.

Stage functions (public, for the stage-by-stage tests): `initial_logits`, `seed_maps`,
`project_and_surrogate`, `inner_loop`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from mcgenref_fast import net_exec, ops, tiling
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.reference import _check_inputs
from mcgenref_fast.refine_types import IterationDiagnostics, RefineResult, make_noise_canvas
from mcgenref_fast.seeds_fast import TileSeeds, extract_seeds_fast

__all__ = ["refine", "initial_logits", "seed_maps", "project_and_surrogate", "inner_loop", "NetRunner",
           "default_max_batch"]

# Tile images per network call (tiles × samples in the projection), when `max_batch` is None. On the CPU
# small batches win: a 256² tile's activations stay in cache (one thread: 15 ms per tile at batch 1, 44 ms
# at batch 16 for the default segmentor), and the cores are used by several workers instead (NetRunner).
CPU_MAX_BATCH = 2
CUDA_MAX_BATCH = 32

_T = TypeVar("_T")
_R = TypeVar("_R")


def exec_config(precision: str, cuda_graphs: bool, max_batch: int) -> net_exec.ExecConfig:
    """How the fast refine runs its networks on CUDA. Channels-last only with the low-precision networks: in
    float32 its GroupNorm kernels round differently (measured 4e-3 in the segmentor's logits on the CPU),
    beyond SPEC §7's 1e-4 on p."""
    return net_exec.ExecConfig(precision=precision, channels_last=precision != "fp32", cuda_graphs=cuda_graphs,
                               max_batch=max_batch)


def default_max_batch(device: torch.device | str) -> int:
    """`max_batch` used when None: CPU_MAX_BATCH on the CPU, CUDA_MAX_BATCH elsewhere."""
    return CPU_MAX_BATCH if torch.device(device).type == "cpu" else CUDA_MAX_BATCH


class NetRunner:
    """Runs the network work items of one refine: on the CPU in `workers` threads, each single-threaded;
    elsewhere (or with one worker) one after the other in the calling thread.

    Why: at batch 1-2 a tile's activations stay in cache, and PyTorch's intra-op threads on such small ops
    spend their time in barriers (2 threads on 2 cores: ~11 ms per segmentor tile on an idle machine, and
    ~0.8 s when another process holds a core, the spinning threads waiting for the descheduled one);
    independent single-threaded workers avoid both. While `map` runs, the process-wide intra-op thread
    count is 1 (restored on return). Items are independent and results come back in order, so the output
    does not depend on the number of workers (up to the networks' thread-count rounding, ~1e-6).
    """

    def __init__(self, device: torch.device | str, workers: int | None = None) -> None:
        cpu = torch.device(device).type == "cpu"
        if workers is None:
            workers = torch.get_num_threads() if cpu else 1
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers if cpu else 1

    def map(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        if self.workers <= 1 or len(items) <= 1:
            return [fn(item) for item in items]

        def run(item: _T) -> _R:
            with torch.no_grad():          # grad mode is thread-local: the workers start with it on
                return fn(item)

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
                return list(pool.map(run, items))
        finally:
            torch.set_num_threads(previous)

Segmentor = Callable[[torch.Tensor], torch.Tensor]
Generator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- stages
def _segment(x: torch.Tensor, segmentor: Segmentor, max_batch: int, runner: NetRunner | None = None
             ) -> torch.Tensor:
    """Logits f(x) (B, T, T) float32 of tile images x (B, T, T), in batches of at most `max_batch`."""
    def run(chunk: torch.Tensor) -> torch.Tensor:
        return segmentor(chunk[:, None]).to(torch.float32)[:, 0]

    chunks = list(torch.split(x, max_batch))
    outs = runner.map(run, chunks) if runner is not None else [run(c) for c in chunks]
    if not outs:
        return torch.empty_like(x)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _sample_mean(values: torch.Tensor) -> torch.Tensor:
    """mean over the leading (sample) dimension, as the reference sums: (0 + v_0 + v_1 + ...) / S."""
    total = torch.zeros_like(values[0])
    for r in range(values.shape[0]):
        total = total + values[r]
    return total / values.shape[0]


@torch.no_grad()
def initial_logits(i_tiles: torch.Tensor, segmentor: Segmentor, cfg: RefineConfig = RefineConfig(),
                   max_batch: int | None = None, runner: NetRunner | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z0, f(I_q)): z0 = clamp(f(I_q), −c, c) (n, T, T), and the unclamped logits, in batches."""
    logits = _segment(i_tiles, segmentor, max_batch or default_max_batch(i_tiles.device), runner)
    return torch.clamp(logits, -cfg.z_clamp, cfg.z_clamp), logits


def seed_maps(local: torch.Tensor, counts: torch.Tensor, tile_px: int, cfg: RefineConfig = RefineConfig(),
              valid: torch.Tensor | None = None, fixed_shape: bool | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed dots S (c, T, T) and blend maps W (c, T, T) of c tiles from their padded seed lists.

    `local` (c, m, 2) tile-local px, the first `counts[q]` used. Both come from one map per tile, the
    squared distance to the nearest seed d², as `exp(−d²/2σ²)` and `min(1, γ·exp(−d²/2ρ²))` (W = 0 where
    `valid` is False): the reference's `seed_dots` / `blend_weight_map` (a max of exps of the same values,
    and exp is monotone). `ops.seed_blend_maps` computes them (on the CPU the C++ extension, through
    tables of the same torch ops over the integer d²; on CUDA, or with `fixed_shape`, a fixed loop over
    the seed slots with a validity mask, no host sync: `ops_torch.seed_distance2_fixed`). A tile without
    seeds gets S = W = 0. `counts` may be on the host (`project_and_surrogate`) or on `local`'s device.
    """
    return ops.seed_blend_maps(local, counts, tile_px, cfg.seed_sigma_px, cfg.blend_rho_px, cfg.blend_gamma,
                               valid, fixed_shape)


@torch.no_grad()
def project_and_surrogate(i_tiles: torch.Tensor, eps_tiles: torch.Tensor, seeds: TileSeeds,
                          segmentor: Segmentor, generator: Generator, y_seedless: torch.Tensor,
                          valid: torch.Tensor, cfg: RefineConfig = RefineConfig(),
                          max_batch: int | None = None, runner: NetRunner | None = None, *,
                          counts_host: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Surrogate y (n, T, T) (SPEC §4 steps 2-3) and the number of seeded tiles.

    Tiles with seeds: for every sample r, x ← (1 − t0)ε_r + t0·I_q, N Euler steps x ← x + Δ·v([x, S_q], t_n)
    (`ops.euler_step`; the last one fused with x̂ = max(W·x + (1 − W)·I_q, 0)), then y_q = mean_r
    sigmoid(f(x̂_r)); the generator and the segmentor see max(1, max_batch // S) tiles × S samples per call
    (one work item of `runner`). Tiles without seeds: y_q = `y_seedless[q]` (sigmoid(f(max(I_q, 0)))
    averaged like the reference), no network call. `eps_tiles` (S, n, T, T); `valid` (n, T, T) the
    non-padding pixels. `counts_host`: `seeds.counts` already on the CPU (refine takes it once per outer
    iteration); None: copied here. The chunks are planned on the host and their seed counts handed to
    `seed_maps` from the host copy, so this stage adds no device→host transfer of its own.
    """
    y = y_seedless.clone()
    counts = seeds.counts.cpu() if counts_host is None else counts_host
    n_seeded = int((counts > 0).sum())
    if n_seeded == 0:
        return y, 0
    device = i_tiles.device
    tile = i_tiles.shape[-1]
    n_samples = eps_tiles.shape[0]
    max_batch = max_batch or default_max_batch(device)
    # seeded tiles in decreasing seed count (chunks then need about the same work for their maps)
    sel_host = torch.sort(counts, descending=True, stable=True).indices[:n_seeded]
    sel = net_exec.upload(sel_host, device)
    t0, n_steps = cfg.t0, cfg.euler_steps
    dt = (1.0 - t0) / n_steps if n_steps > 0 else 0.0
    per_chunk = max(1, max_batch // max(1, n_samples))

    def run(item: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        chunk, chunk_host = item
        c = int(chunk.shape[0])
        s_map, w_map = seed_maps(seeds.local[chunk], counts[chunk_host], tile, cfg, valid[chunk])
        i_c = i_tiles[chunk]                                                       # (c, T, T)
        x = (1.0 - t0) * eps_tiles[:, chunk] + t0 * i_c                             # (S, c, T, T)
        s_in = s_map.expand(n_samples, c, tile, tile).reshape(n_samples * c, tile, tile)
        for n in range(n_steps):
            t_n = torch.full((n_samples * c,), t0 + n * dt, device=device, dtype=torch.float32)
            v = generator(torch.stack([x.reshape(n_samples * c, tile, tile), s_in], dim=1), t_n)
            v = v.to(torch.float32).reshape(n_samples, c, tile, tile)
            if n == n_steps - 1:
                x = ops.euler_step(x, v, dt, blend_w=w_map, image=i_c, last=True)
            else:
                x = ops.euler_step(x, v, dt)
        if n_steps == 0:
            x = torch.clamp(w_map * x + (1.0 - w_map) * i_c, min=0.0)
        sig = torch.sigmoid(_segment(x.reshape(n_samples * c, tile, tile), segmentor, n_samples * c))
        return _sample_mean(sig.reshape(n_samples, c, tile, tile))

    chunks = list(zip(torch.split(sel, per_chunk), torch.split(sel_host, per_chunk)))
    results = runner.map(run, chunks) if runner is not None else [run(c) for c in chunks]
    for (chunk, _), y_chunk in zip(chunks, results):
        y[chunk] = y_chunk
    return y, n_seeded


@torch.no_grad()
def inner_loop(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, i_tiles: torch.Tensor, index: TileIndex,
               cfg: RefineConfig = RefineConfig(), fuse: Callable[[torch.Tensor], torch.Tensor] | None = None,
               record_energy: bool = True) -> tuple[torch.Tensor, list[float], torch.Tensor]:
    """J Jacobi steps (SPEC §4 step 4): Z = fuse(z), z ← `ops.gpr_update(z, y, Z, z0, I, ...)`.

    Returns (z, energies, Z) with Z the fused canvas of the returned z. `energies`: J + 1 values of E (before
    step 1, then after each step; from the update pass, float32 per tile summed in float64), or [] without
    `record_energy`.
    """
    z, energy, canvas = _inner_steps(z, y, z0, i_tiles, index, cfg, fuse, record_energy)
    energies = [] if energy is None else [float(v) for v in energy.cpu()]
    return z, energies, canvas


def _inner_steps(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, i_tiles: torch.Tensor, index: TileIndex,
                 cfg: RefineConfig, fuse: Callable[[torch.Tensor], torch.Tensor] | None, record_energy: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`inner_loop` without the host transfer: (z, energies (J + 1,) float64 on z's device or None, Z)."""
    fuse = fuse if fuse is not None else (lambda t: ops.fuse_tiles(t, index))
    parts: list[torch.Tensor] = []
    canvas = fuse(z)
    for _ in range(cfg.inner_steps):
        if record_energy:
            z_new, e = ops.gpr_update(z, y, canvas, z0, i_tiles, index, cfg, return_energy=True)
            parts.append(e)
        else:
            z_new = ops.gpr_update(z, y, canvas, z0, i_tiles, index, cfg)
        z = z_new
        canvas = fuse(z)
    if not record_energy:
        return z, None, canvas
    _, e = ops.gpr_update(z, y, canvas, z0, i_tiles, index, cfg, return_energy=True)
    parts.append(e)
    return z, torch.stack(parts).double().sum(dim=1), canvas


# ---------------------------------------------------------------------------------------------- refine
def _diagnostics(counts: list[list[int]], seeds: list[TileSeeds], energies: list[torch.Tensor]
                 ) -> list[IterationDiagnostics]:
    """The per-iteration diagnostics from device tensors, in two device→host transfers (seeds, energies).

    Same values as `IterationDiagnostics(counts, [float(e) ...], seeds.as_list(canvas=True))` per iteration.
    """
    if not seeds:
        return []
    flat = torch.cat([(s.local + s.origins[:, None, :]).reshape(-1) for s in seeds]).cpu().numpy()
    energy_rows = torch.stack(energies).cpu().tolist() if energies else [[] for _ in seeds]
    out: list[IterationDiagnostics] = []
    start = 0
    for count, s, energy in zip(counts, seeds, energy_rows):
        size = s.local.numel()
        local = flat[start:start + size].reshape(tuple(s.local.shape))
        start += size
        out.append(IterationDiagnostics(count, energy, [local[q, :c].copy() for q, c in enumerate(count)]))
    return out


@torch.no_grad()
def refine(image: torch.Tensor, breast_mask: torch.Tensor, segmentor: nn.Module, generator: nn.Module,
           cfg: RefineConfig = RefineConfig(), seed: int = 0, progress: bool = False, *,
           record_energy: bool = True, max_batch: int | None = None, cpu_workers: int | None = None,
           precision: net_exec.Precision = "fp32", cuda_graphs: bool = True) -> RefineResult:
    """TT-GPR on a canonical image (SPEC §4), fast path; same arguments and result as `reference.refine`.

    `image`: (H, W) float, I ≥ 0, canonical space (computed in float32; the result is float32);
    `breast_mask`: (H, W) bool; `segmentor`: (B,1,H,W) → logits (B,1,H,W); `generator`: ((B,2,H,W) =
    cat[x_t, S], t (B,)) → velocity (B,1,H,W). Both are put in eval mode and run without gradients on the
    image's device. `seed` fixes the noise canvas ε (`make_noise_canvas`, as the reference). `progress`
    shows a tqdm bar over the outer iterations × stages.

    Keyword-only extras (docs/fast_path.md): `record_energy` (default True, as the reference's diagnostics)
    computes E for `IterationDiagnostics.energy` in the update pass; False leaves it empty (faster).
    `max_batch`: at most this many tile images per network call (the projection batches
    max(1, max_batch // n_samples) tiles × n_samples); None: 2 on the CPU, 32 on CUDA. `cpu_workers`: on
    the CPU the network calls run in this many single-threaded worker threads (None: torch's intra-op
    thread count; 1: in the calling thread with torch's settings), see `NetRunner`. The result depends on
    neither beyond the networks' float32 rounding.
    CUDA only (`net_exec`): `precision` 'fp32' (default), 'bf16' or 'fp16' — the networks under autocast,
    outputs cast to float32 (SPEC §7's low-precision rule); anything but 'fp32' on the CPU is a
    ValueError. `cuda_graphs` (default True): the network calls replay CUDA graphs captured once per
    process per batch bucket (`max_batch` is the largest bucket); False runs them eagerly.
    """
    _check_inputs(image, breast_mask)
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    device = image.device
    net_exec.check_precision(precision, device)
    cuda = device.type == "cuda"
    max_batch = max_batch or default_max_batch(device)
    if cpu_workers is None and device.type == "cpu" and ops.backend_for(image) == "triton":
        cpu_workers = 1                     # the Triton interpreter (tests) is not made for threads
    runner = NetRunner(device, cpu_workers)
    img = image.to(torch.float32)
    height, width = img.shape
    segmentor.eval()
    generator.eval()
    seg_fn: Segmentor = segmentor
    gen_fn: Generator = generator
    if cuda:                                # the CPU path calls the modules directly (bit-identical)
        exec_cfg = exec_config(precision, cuda_graphs, max_batch)
        seg_fn = net_exec.executor_for(segmentor, device, exec_cfg)
        gen_fn = net_exec.executor_for(generator, device, exec_cfg)
    mask = breast_mask.to(device=device, dtype=torch.bool)

    grid = tiling.make_grid((height, width), mask.cpu().numpy().astype(np.uint8), cfg.tiles)
    covered = net_exec.upload(torch.from_numpy(grid.covered), device)
    n_tiles = grid.n_tiles
    n_stages = 3
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=1 + n_stages * cfg.outer_iters, desc="TT-GPR (fast)", unit="stage")

    def tick(stage: str, k: int | None = None) -> None:
        if bar is not None:
            bar.set_postfix_str(stage if k is None else f"{k + 1}/{cfg.outer_iters} {stage}")
            bar.update(1)

    if n_tiles == 0:   # nothing to refine: an empty canvas, diagnostics shaped like the reference's
        zeros = torch.zeros((height, width), dtype=torch.float32, device=device)
        diagnostics = [IterationDiagnostics([], [0.0] * (cfg.inner_steps + 1) if record_energy else [], [])
                       for _ in range(cfg.outer_iters)]
        if bar is not None:
            bar.update(bar.total)
            bar.close()
        return RefineResult(logits=zeros, z0_logits=zeros.clone(), covered=covered, diagnostics=diagnostics)

    index = TileIndex.from_grid(grid, device)
    valid = index.valid

    def fuse(tiles: torch.Tensor) -> torch.Tensor:
        return ops.fuse_tiles(tiles, index)

    i_tiles = ops.gather_tiles(img.contiguous(), index)                          # (n, T, T), 0 on padding
    has_negative = bool((i_tiles < 0).any())    # x̂ of a seedless tile is max(I_q, 0), not I_q (one sync)
    z0, logits_i = initial_logits(i_tiles, seg_fn, cfg, max_batch, runner)
    if has_negative:
        logits_i = _segment(torch.clamp(i_tiles, min=0.0), seg_fn, max_batch, runner)
    # ε is drawn on the CPU (SPEC §4); on CUDA while the z0 segmentation runs, uploaded from pinned memory
    noise = make_noise_canvas(cfg.n_samples, height, width, seed, "cpu" if cuda else device)
    eps_tiles = ops.gather_tiles(net_exec.upload(noise, device), index)
    y_seedless = _sample_mean(torch.sigmoid(logits_i).expand(max(1, cfg.n_samples), *logits_i.shape))
    tick("start")

    z = z0
    canvas = fuse(z0)
    z0_canvas = canvas
    counts_per_iter: list[list[int]] = []
    seeds_per_iter: list[TileSeeds] = []
    energy_per_iter: list[torch.Tensor] = []
    for k in range(cfg.outer_iters):
        seeds = extract_seeds_fast(canvas, mask, covered, index, cfg)
        counts_host = seeds.counts.cpu()        # this loop's one device→host transfer per iteration
        tick("seeds", k)
        y, _ = project_and_surrogate(i_tiles, eps_tiles, seeds, seg_fn, gen_fn, y_seedless, valid, cfg,
                                     max_batch, runner, counts_host=counts_host)
        tick("projection", k)
        z, energy, canvas = _inner_steps(z, y, z0, i_tiles, index, cfg, fuse, record_energy)
        tick("update", k)
        counts_per_iter.append([int(c) for c in counts_host])
        seeds_per_iter.append(seeds)
        if energy is not None:
            energy_per_iter.append(energy)
    diagnostics = _diagnostics(counts_per_iter, seeds_per_iter, energy_per_iter)
    if bar is not None:
        bar.close()
    logits = canvas if canvas is not z0_canvas else canvas.clone()       # K = 0: the fused z0, own copy
    return RefineResult(logits=logits, z0_logits=z0_canvas, covered=covered, diagnostics=diagnostics)

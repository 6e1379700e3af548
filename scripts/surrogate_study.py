"""What the TT-GPR surrogate does to true and false MC pixels: sigmoid(f(I)) vs the first outer iteration's y.

For each semi-real `dev` crop with injected MCs (`runs/devsets/semireal_shifted`, made by
`scripts/make_dev_sets.py`): z0 = f(I) on the active tiles, seeds from the fused z0 (SPEC §4 step 1), the
seed-consistent projection and surrogate y of step 2-3 (`refine.project_and_surrogate`), both fused to the
canvas. Reported over all crops:

Only crops at 0.07 mm are used (the film crops' truth lies on their 0.2 mm grid).

- true-MC pixels (the injected mask): mean p0 = sigmoid(f(I)) and mean y, and the share at ≥ 0.5 of each —
  TT-GPR can only raise recall where y > p0 on them;
- false-positive pixels (p0 ≥ 0.5 outside the 7-step 4-connected dilation of the true-MC pixels, i.e. more
  than 7 px = 0.49 mm from every true-MC pixel in city-block distance: 0.49 mm along the axes, 0.35 mm on
  the diagonal): mean p0, mean y and the share with y ≥ 0.5 — how strongly the surrogate pulls false
  positives down.

`--probe`: instead, the seed response on a flat field (mean 0.5, texture σ 0.02, 128² px, one seed dot in
the centre and no MC): the projection's mean x̂ at the seed and 5 px away over 8 noise draws, and the
segmentor's p at the seed, with and without the seed — does the generator put an MC where a seed says?

Example (README, "TT-GPR's surrogate"):
    python scripts/surrogate_study.py --n 16 --t0 0.7
    python scripts/surrogate_study.py --n 16 --t0 0.7 --generator runs/gen2/weights
    python scripts/surrogate_study.py --probe
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mcgenref_fast import ops, tiling
from mcgenref_fast import refine as fast
from mcgenref_fast.config import RefineConfig, parse_refine_overrides
from mcgenref_fast.evaluation.datasets import load_dataset
from mcgenref_fast.models.flow import euler_project
from mcgenref_fast.models.weights import load_default_models, load_model
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.refine_types import make_noise_canvas
from mcgenref_fast.seeds_fast import extract_seeds_fast

FP_DISTANCE_PX = 7          # a false-positive pixel lies farther than this (city-block px) from every true-MC pixel


def crop_pixels(image: np.ndarray, breast: np.ndarray, truth: np.ndarray, segmentor: torch.nn.Module,
                generator: torch.nn.Module, cfg: RefineConfig, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p0, y) at the true-MC pixels, (p0, y) at the false-positive pixels of one canonical crop, and the
    largest p0 and the largest y inside each true MC (8-connected component of the truth)."""
    img = torch.from_numpy(np.asarray(image, np.float32))
    mask = torch.from_numpy(np.asarray(breast, bool))
    grid = tiling.make_grid(tuple(img.shape), mask.numpy().astype(np.uint8), cfg.tiles)
    index = TileIndex.from_grid(grid, "cpu")
    i_tiles = ops.gather_tiles(img.contiguous(), index)
    eps = ops.gather_tiles(make_noise_canvas(cfg.n_samples, *img.shape, seed, "cpu"), index)
    z0, logits = fast.initial_logits(i_tiles, segmentor, cfg)
    seeds = extract_seeds_fast(ops.fuse_tiles(z0, index), mask, torch.from_numpy(grid.covered), index, cfg)
    y, _ = fast.project_and_surrogate(i_tiles, eps, seeds, segmentor, generator, torch.sigmoid(logits),
                                      index.valid, cfg)
    p0_canvas = ops.fuse_tiles(torch.sigmoid(logits), index).numpy()
    y_canvas = ops.fuse_tiles(y, index).numpy()
    true = np.asarray(truth, bool)
    far = ~ndimage.binary_dilation(true, iterations=FP_DISTANCE_PX)
    fp = (p0_canvas >= 0.5) & far & np.asarray(breast, bool)
    labels, n_mcs = ndimage.label(true, structure=np.ones((3, 3)))
    ids = np.arange(1, n_mcs + 1)
    peak = np.asarray(ndimage.maximum(p0_canvas, labels, ids), np.float32).reshape(-1)
    peak_y = np.asarray(ndimage.maximum(y_canvas, labels, ids), np.float32).reshape(-1)
    return p0_canvas[true], y_canvas[true], p0_canvas[fp], y_canvas[fp], peak, peak_y


@torch.no_grad()
def flat_field_probe(segmentor: torch.nn.Module, generator: torch.nn.Module, cfg: RefineConfig,
                     size: int = 128, draws: int = 8) -> None:
    """Print the projection's response to one seed on a flat textured field (see the module docstring)."""
    torch.manual_seed(0)
    image = 0.5 + 0.02 * torch.randn(1, 1, size, size)
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dot = torch.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2.0 * cfg.seed_sigma_px ** 2)).float()[None, None]
    for with_seed in (True, False):
        seed_map = dot if with_seed else torch.zeros_like(dot)
        outs = []
        for r in range(draws):
            eps = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(r))
            outs.append(euler_project(image, seed_map, generator, cfg.t0, cfg.euler_steps, eps=eps))
        x = torch.cat(outs)
        p = torch.sigmoid(segmentor(x))[:, 0, c, c]
        mean = x.mean(0)[0]
        print(f"{'seed   ' if with_seed else 'no seed'}: x̂ at the seed {float(mean[c, c]):.3f}, 5 px away "
              f"{float(mean[c - 5, c]):.3f} (field 0.5); p at the seed {float(p.mean()):.3f}")


def parse_fields(text: str) -> dict[str, float]:
    """`a=1,b=0.5` → RefineConfig overrides (`config.parse_refine_overrides`); a bad part exits with why."""
    try:
        return parse_refine_overrides(text)
    except ValueError as exc:
        raise SystemExit(f"--set: {exc}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=Path("runs/devsets/semireal_shifted"))
    ap.add_argument("--n", type=int, default=16, help="first N crops that hold injected MCs")
    ap.add_argument("--t0", type=float, default=RefineConfig().t0)
    ap.add_argument("--euler-steps", type=int, default=RefineConfig().euler_steps)
    ap.add_argument("--set", default="", help="other RefineConfig fields, e.g. seed_threshold=0.1,blend_rho_mm=0.5")
    ap.add_argument("--generator", type=Path, default=None, help="weights directory (default: shipped)")
    ap.add_argument("--probe", action="store_true", help="the flat-field seed response instead")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*laterality unknown.*")
    segmentor, generator = load_default_models()
    if args.generator is not None:
        generator = load_model(args.generator, "generator")
    cfg = replace(RefineConfig(), t0=args.t0, euler_steps=args.euler_steps, **parse_fields(args.set))
    if args.probe:
        print(f"generator {'shipped' if args.generator is None else args.generator}, t0 {cfg.t0}, "
              f"N {cfg.euler_steps}")
        flat_field_probe(segmentor, generator, cfg)
        return
    parts: list[tuple[np.ndarray, ...]] = []
    skipped = 0
    for item in load_dataset("semireal", args.path):
        if len(parts) >= args.n:
            break
        canonical = item.load_canonical()
        truth = item.load_truth(tuple(canonical.input_shape))
        if truth.mask is None or not truth.mask.any():
            continue
        if truth.mask.shape != np.asarray(canonical.image).shape:
            skipped += 1            # film crops (0.2 mm): the truth is on the input grid, not the canonical one
            continue
        parts.append(crop_pixels(canonical.image, canonical.breast_mask, truth.mask, segmentor, generator, cfg))
    if not parts:
        raise SystemExit(f"{args.path}: no semi-real crop at 0.07 mm with injected MCs ({skipped} film crops "
                         "skipped); make the development sets first: python scripts/make_dev_sets.py")
    p0_t, y_t, p0_f, y_f, peak, peak_y = (np.concatenate([p[i] for p in parts]) for i in range(6))
    name = "shipped" if args.generator is None else str(args.generator)
    print(f"generator {name}, t0 {cfg.t0}, N {cfg.euler_steps}, {args.set or 'defaults'}, {len(parts)} crops at 0.07 mm "
          f"({skipped} film crops skipped)")
    print(f"true-MC pixels {p0_t.size}: mean p0 {p0_t.mean():.3f} -> mean y {y_t.mean():.3f}; "
          f"share >= 0.5: p0 {(p0_t >= 0.5).mean():.3f} -> y {(y_t >= 0.5).mean():.3f}")
    print(f"false-positive pixels {p0_f.size}: mean p0 {p0_f.mean():.3f} -> mean y {y_f.mean():.3f}; "
          f"share with y >= 0.5: {(y_f >= 0.5).mean():.3f}")
    print(f"true MCs {peak.size}: max p0 inside < {cfg.seed_threshold} (no seed can reach them) "
          f"{(peak < cfg.seed_threshold).mean():.3f}, < 0.03: {(peak < 0.03).mean():.3f}, "
          f">= 0.5: {(peak >= 0.5).mean():.3f}")
    seeded = peak >= cfg.seed_threshold
    print(f"true MCs reaching 0.5 somewhere inside: p0 {(peak >= 0.5).sum()} -> y {(peak_y >= 0.5).sum()} of "
          f"{peak.size}; of the {seeded.sum()} that can hold a seed (max p0 >= {cfg.seed_threshold}): mean max p0 "
          f"{peak[seeded].mean() if seeded.any() else float('nan'):.3f} -> mean max y "
          f"{peak_y[seeded].mean() if seeded.any() else float('nan'):.3f}")


if __name__ == "__main__":
    main()

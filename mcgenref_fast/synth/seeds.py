"""Generator seed maps (SPEC §3): Gaussian dots of σ = 1 px and peak 1, combined by max, at a random
30-100 % of the MC centres plus occasional spurious dots. Dots sit on integer pixels (as the seeds that
TT-GPR finds at test time do), so each map is exactly 1 at its dots."""
from __future__ import annotations

import math

import numpy as np

from mcgenref_fast.synth.config import SynthConfig


def gaussian_dots(points_px: np.ndarray, shape: tuple[int, int], sigma_px: float = 1.0,
                  radius_sigmas: float = 4.0) -> np.ndarray:
    """float32 (H, W): max over points of exp(-|u - c|² / (2σ²)); points are rounded to pixels, those
    outside the grid are ignored. Each dot is drawn only within radius_sigmas·σ of its pixel."""
    out = np.zeros(shape, np.float32)
    pts = np.rint(np.asarray(points_px, np.float64).reshape(-1, 2)).astype(np.int64)
    if len(pts) == 0:
        return out
    h, w = shape
    rad = max(1, int(math.ceil(radius_sigmas * sigma_px)))
    offs = np.arange(-rad, rad + 1)
    g1 = np.exp(-(offs.astype(np.float64) ** 2) / (2.0 * sigma_px * sigma_px))
    kernel = np.outer(g1, g1).astype(np.float32)
    for r, c in pts:
        if not (0 <= r < h and 0 <= c < w):
            continue
        r0, r1 = max(0, r - rad), min(h, r + rad + 1)
        c0, c1 = max(0, c - rad), min(w, c + rad + 1)
        k = kernel[r0 - r + rad:r1 - r + rad, c0 - c + rad:c1 - c + rad]
        np.maximum(out[r0:r1, c0:c1], k, out=out[r0:r1, c0:c1])
    return out


def choose_seed_points(centres_px: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                       cfg: SynthConfig) -> np.ndarray:
    """(k, 2) int pixel seeds: a random seed_fraction of the MC centres (≥ 1 when there are MCs) followed
    by Poisson(spurious_seed_mean) uniform spurious pixels. Always makes the same rng draws per call shape."""
    centres = np.asarray(centres_px, np.float64).reshape(-1, 2)
    n = len(centres)
    frac = rng.uniform(*cfg.seed_fraction)
    k = min(n, max(1, int(round(frac * n)))) if n else 0
    chosen = centres[rng.permutation(n)[:k]] if n else centres
    n_spur = int(rng.poisson(cfg.spurious_seed_mean))
    spur = np.stack([rng.integers(0, shape[0], n_spur), rng.integers(0, shape[1], n_spur)], axis=1)
    pts = np.concatenate([np.rint(chosen), spur.astype(np.float64)], axis=0)
    pts[:, 0] = np.clip(pts[:, 0], 0, shape[0] - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, shape[1] - 1)
    return pts.astype(np.int64)


def seed_map(centres_px: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
             cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """The seed map S of a training pair (float32 (H, W), peak 1 at every chosen pixel)."""
    pts = choose_seed_points(centres_px, shape, rng, cfg)
    return gaussian_dots(pts, shape, cfg.seed_sigma_px, cfg.seed_radius_sigmas)

"""Image formation (SPEC §2): PSF blur, density-dependent contrast, signal-dependent noise, exact masks.

    sig = G_psf * Σ thk                          (thk in mm, Gaussian PSF σ in mm)
    k   = c0 · (1 - 0.5·L),  L = clip(mean of B over a 2 mm window, 0, 1)
    x0  = B + k·sig;   x = max(0, x0 + N(0, σ_n²·max(x0, 0)))
    m   = coverage ≥ 50 %, plus each MC's best pixel when its own coverage never reaches 50 %

Filters run only over the MCs' bounding region (plus the filter reach), which gives the same values as a
whole-patch filter at a fraction of the cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from mcgenref_fast.synth.config import SynthConfig
from mcgenref_fast.synth.mc import Raster

PSF_TRUNCATE_SIGMAS: float = 4.0


@dataclass(frozen=True)
class FormationParams:
    """Per-pair draws: PSF σ (mm), contrast c0 (per mm of thickness), noise σ_n."""

    psf_sigma_mm: float
    c0: float
    noise_sigma: float


def sample_formation(rng: np.random.Generator, cfg: SynthConfig) -> FormationParams:
    lo, hi = cfg.contrast_c0
    return FormationParams(
        psf_sigma_mm=float(rng.uniform(*cfg.psf_sigma_mm)),
        c0=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
        noise_sigma=float(rng.uniform(*cfg.noise_sigma)),
    )


def window_px(window_mm: float, spacing_mm: float) -> int:
    """Odd window size in px closest to window_mm."""
    n = max(1, int(round(window_mm / spacing_mm)))
    return n if n % 2 else n + 1


def _support(thickness: np.ndarray, reach_px: int) -> tuple[slice, slice] | None:
    """Bounding box of thickness > 0 grown by reach_px, clipped to the grid; None when empty."""
    rows = np.flatnonzero(thickness.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(thickness.any(axis=0))
    h, w = thickness.shape
    return (slice(max(0, rows[0] - reach_px), min(h, rows[-1] + 1 + reach_px)),
            slice(max(0, cols[0] - reach_px), min(w, cols[-1] + 1 + reach_px)))


def local_mean(background: np.ndarray, window: int, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """L = clip(window×window mean of B, 0, 1) (reflecting edges) over `region` (default: everything)."""
    if region is None:
        return np.clip(ndi.uniform_filter(background, window, mode="reflect"), 0.0, 1.0)
    h, w = background.shape
    half = window // 2
    ys, xs = region
    y0, y1 = max(0, ys.start - half), min(h, ys.stop + half)
    x0, x1 = max(0, xs.start - half), min(w, xs.stop + half)
    big = ndi.uniform_filter(background[y0:y1, x0:x1], window, mode="reflect")
    return np.clip(big[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0], 0.0, 1.0)


def contrast_gain(local: np.ndarray, c0: float, cfg: SynthConfig) -> np.ndarray:
    """k = c0 · (1 - density_attenuation · L): MCs over dense tissue look fainter."""
    return c0 * (1.0 - cfg.density_attenuation * local)


def mc_signal(background: np.ndarray, thickness_mm: np.ndarray, params: FormationParams, spacing_mm: float,
              cfg: SynthConfig) -> np.ndarray:
    """k·(G_psf * thk): the intensity the MCs add to B (float32 (H, W), zero away from them)."""
    out = np.zeros(background.shape, np.float32)
    sigma_px = params.psf_sigma_mm / spacing_mm
    reach = int(math.ceil(PSF_TRUNCATE_SIGMAS * sigma_px)) + 1
    region = _support(thickness_mm, reach)
    if region is None:
        return out
    sig = ndi.gaussian_filter(thickness_mm[region], sigma_px, mode="constant", truncate=PSF_TRUNCATE_SIGMAS)
    local = local_mean(background, window_px(cfg.local_mean_window_mm, spacing_mm), region)
    out[region] = contrast_gain(local, params.c0, cfg) * sig
    return out


def add_noise(x0: np.ndarray, noise_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """x = max(0, x0 + N(0, σ_n²·max(x0, 0))) (float32); the normal draws happen even when σ_n = 0."""
    x = rng.standard_normal(x0.shape, dtype=np.float32)
    scale = np.maximum(x0, np.float32(0.0))
    np.sqrt(scale, out=scale)
    scale *= np.float32(noise_sigma)
    x *= scale
    x += x0
    return np.maximum(x, np.float32(0.0), out=x)


def form_image(background: np.ndarray, thickness_mm: np.ndarray, params: FormationParams, spacing_mm: float,
               cfg: SynthConfig, rng: np.random.Generator | None = None, noise: bool = True) -> np.ndarray:
    """x = noise(B + k·sig), or x0 = B + k·sig when `noise` is False (float32 (H, W))."""
    x0 = np.asarray(background, np.float32) + mc_signal(background, thickness_mm, params, spacing_mm, cfg)
    if not noise:
        return x0
    if rng is None:
        raise ValueError("form_image(noise=True) needs an rng")
    return add_noise(x0, params.noise_sigma, rng)


def exact_mask(raster: Raster, cfg: SynthConfig) -> np.ndarray:
    """m = coverage ≥ mask_min_coverage, plus the best pixel of every MC whose own coverage stays below it
    (so every MC has at least one mask pixel, and no pixel outside the grid is ever referenced)."""
    mask = raster.coverage >= cfg.mask_min_coverage
    small = raster.best_cov < cfg.mask_min_coverage
    if small.any():
        pts = raster.best_px[small]
        mask[pts[:, 0], pts[:, 1]] = True
    return mask

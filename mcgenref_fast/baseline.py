"""Classical annotation-free MC detector: white top-hat on the canonical image (issue 7).

The top-hat `r = I - opening(I, disk)` keeps bright details narrower than the disk (MCs) and removes the
smooth tissue; a detection is `r ≥ thr` with `thr = mean + k·sd` of `r` inside the breast. The output is a
pseudo-probability `p = sigmoid((r - thr) / (scale_sd·sd))`, pinned so that `p ≥ 0.5 ⇔ detection`
exactly, and `p = 0` outside the breast, so the findings and writers apply unchanged.
See docs/baseline.md for how the defaults were chosen.

Speed: the grey opening with a flat disk is computed exactly (equal to `scipy.ndimage.grey_opening` with
the same footprint and its default `reflect` boundary) by decomposing the disk into horizontal chords:
one running min/max per chord half-width (built incrementally) and one shifted min/max per row, i.e.
O(radius) vectorised passes. Only the breast's bounding box (plus the 2-radius support) is processed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage as ndi

from mcgenref_fast.config import CANONICAL_SPACING_MM

_MIN_THRESHOLD = float(np.finfo(np.float32).tiny)  # a zero response is never a detection
_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))  # largest float32 < 0.5


@dataclass(frozen=True)
class TopHatConfig:
    """White top-hat baseline settings (mm are converted with the image's spacing)."""

    radius_mm: float = 0.5          # disk radius: keeps bright details narrower than ~2·radius
    k: float = 6.0                  # threshold = mean + k·sd of the response inside the breast (dev-tuned)
    presmooth_sigma_mm: float = 0.0  # Gaussian pre-smoothing against pixel noise (0 = none)
    scale_sd: float = 1.0           # sigmoid scale of the pseudo-probability, in response sd
    min_area_px: int = 1            # components smaller than this are dropped

    def __post_init__(self) -> None:
        if not self.radius_mm > 0:
            raise ValueError(f"radius_mm must be > 0, got {self.radius_mm}")
        if self.presmooth_sigma_mm < 0 or not self.scale_sd > 0 or self.min_area_px < 1:
            raise ValueError(f"invalid TopHatConfig {self}")


@dataclass(frozen=True, eq=False)
class TopHatResult:
    """prob float32 (H, W) in [0, 1]; mask bool (H, W) = prob ≥ 0.5; response float32; threshold."""

    prob: np.ndarray
    mask: np.ndarray
    response: np.ndarray
    threshold: float
    response_mean: float
    response_sd: float


# --------------------------------------------------------------------------------------------------
# Exact flat-disk morphology by chords
# --------------------------------------------------------------------------------------------------
def disk_footprint(radius_px: float) -> np.ndarray:
    """Flat disk `{(dy, dx): dy² + dx² ≤ radius²}` as a bool array of side 2·floor(radius) + 1."""
    r = int(math.floor(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dy**2 + dx**2 <= radius_px**2 + 1e-9


def _chord_half_widths(radius_px: float) -> np.ndarray:
    fp = disk_footprint(radius_px)
    return (fp.sum(axis=1) - 1) // 2


def _disk_filter(f: np.ndarray, radius_px: float, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Grey erosion (op = np.minimum) or dilation (np.maximum) by a flat disk, `reflect` boundary."""
    half = _chord_half_widths(radius_px)
    r = half.size // 2
    h, w = f.shape
    g = np.pad(f, r, mode="symmetric")  # numpy 'symmetric' == scipy.ndimage 'reflect'
    out: Optional[np.ndarray] = None
    run = g  # run[:, j] = op over g[:, j .. j + 2k] (centre j + k)
    for k in range(int(half.max()) + 1):
        if k == 1:
            run = op(op(run[:, :-2], run[:, 1:-1]), run[:, 2:])
        elif k > 1:
            run = op(run[:, :-2], run[:, 2:])
        centred = run[:, r - k : r - k + w]
        for dy in np.flatnonzero(half == k) - r:
            rows = centred[r + dy : r + dy + h]
            out = rows.copy() if out is None else op(out, rows, out=out)
    assert out is not None
    return out


def grey_opening_disk(f: np.ndarray, radius_px: float) -> np.ndarray:
    """Exact grey opening by a flat disk (== ndi.grey_opening(f, footprint=disk_footprint(radius)))."""
    return _disk_filter(_disk_filter(f, radius_px, np.minimum), radius_px, np.maximum)


def white_tophat_disk(f: np.ndarray, radius_px: float) -> np.ndarray:
    """`f - opening(f)` with a flat disk (≥ 0)."""
    return f - grey_opening_disk(f, radius_px)


# --------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------
def _breast_window(breast_mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(breast_mask.any(axis=1))
    cols = np.flatnonzero(breast_mask.any(axis=0))
    h, w = breast_mask.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)))


def tophat_response(image: np.ndarray, breast_mask: np.ndarray, spacing_mm: float = CANONICAL_SPACING_MM,
                    cfg: TopHatConfig = TopHatConfig()) -> np.ndarray:
    """White top-hat response (float32, image units) inside the breast, 0 outside it.

    Computed on the breast's bounding box grown by the filters' support, so it equals the full-image
    computation on every breast pixel.
    """
    image = np.asarray(image, dtype=np.float32)
    breast_mask = np.asarray(breast_mask, dtype=bool)
    if image.ndim != 2 or image.shape != breast_mask.shape:
        raise ValueError(f"image and breast_mask must be 2-D of one shape, got {image.shape}, {breast_mask.shape}")
    out = np.zeros(image.shape, dtype=np.float32)
    if not breast_mask.any():
        return out
    radius_px = cfg.radius_mm / spacing_mm
    sigma_px = cfg.presmooth_sigma_mm / spacing_mm
    smooth_support = int(math.ceil(4.0 * sigma_px)) if sigma_px > 0 else 0  # ndi.gaussian_filter truncate=4
    margin = 2 * int(math.floor(radius_px)) + smooth_support
    win = _breast_window(breast_mask, margin)
    crop = image[win]
    if sigma_px > 0:
        crop = ndi.gaussian_filter(crop, sigma_px, mode="reflect")
    resp = white_tophat_disk(crop, radius_px)
    out[win] = np.where(breast_mask[win], resp, np.float32(0.0))
    return out


def tophat_detect(image: np.ndarray, breast_mask: np.ndarray, spacing_mm: float = CANONICAL_SPACING_MM,
                  cfg: TopHatConfig = TopHatConfig()) -> TopHatResult:
    """Top-hat detection: pseudo-probability map, mask (= prob ≥ 0.5), response and threshold."""
    breast_mask = np.asarray(breast_mask, dtype=bool)
    return detect_from_response(tophat_response(image, breast_mask, spacing_mm, cfg), breast_mask, cfg)


def detect_from_response(resp: np.ndarray, breast_mask: np.ndarray, cfg: TopHatConfig = TopHatConfig()) -> TopHatResult:
    """`tophat_detect`'s thresholding of a computed `tophat_response` (only this part depends on `cfg.k`,
    `scale_sd`, `min_area_px`: a sweep over them reuses one response)."""
    breast_mask = np.asarray(breast_mask, dtype=bool)
    vals = resp[breast_mask].astype(np.float64)
    mean = float(vals.mean()) if vals.size else 0.0
    sd = float(vals.std()) if vals.size else 0.0
    thr = max(mean + cfg.k * sd, _MIN_THRESHOLD)
    return _pseudo_probability(resp, breast_mask, thr, mean, sd, cfg)


def _pseudo_probability(resp: np.ndarray, breast_mask: np.ndarray, thr: float, mean: float, sd: float,
                        cfg: TopHatConfig) -> TopHatResult:
    det = (resp >= np.float32(thr)) & breast_mask
    if cfg.min_area_px > 1 and det.any():
        lab, n = ndi.label(det, structure=np.ones((3, 3), dtype=bool))
        big = np.bincount(lab.ravel(), minlength=n + 1) >= cfg.min_area_px
        big[0] = False
        det = big[lab]
    half_inv_scale = np.float32(0.5 / max(cfg.scale_sd * sd, _MIN_THRESHOLD))
    z = (resp - np.float32(thr)) * half_inv_scale
    prob = np.float32(0.5) * (np.float32(1.0) + np.tanh(z))  # sigmoid((r - thr)/scale) without overflow
    prob = np.where(det, np.maximum(prob, np.float32(0.5)), np.minimum(prob, np.float32(_BELOW_HALF)))
    prob = np.where(breast_mask, prob, np.float32(0.0)).astype(np.float32)
    return TopHatResult(prob, det, resp, float(thr), mean, sd)

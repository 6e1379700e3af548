"""Breast mask (SPEC §1): threshold + largest connected component + hole filling.

The threshold is found on a block-averaged, lightly smoothed copy (at most `work_max_side_px` on a
side): Otsu's threshold `t_otsu` separates background from tissue, but on fatty breasts and film scans
it cuts into the faint periphery, so the mask uses `t = bg + threshold_fraction * (t_otsu - bg)` with
`bg` the median below `t_otsu`. A small opening detaches thin bridges (film borders, burned-in labels
touching the breast by a thread); the largest 4-connected component is kept and its holes filled, so
labels and markers that touch no breast tissue are outside the mask. The low-resolution mask is brought
back to full resolution exactly inside, and its one-block boundary band is re-thresholded at full
resolution so the edge is not blocky. Works on any dense-bright image, whatever its scale or offset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu


@dataclass(frozen=True)
class BreastMaskConfig:
    """Settings of `breast_mask` (checked visually on FFDM, INbreast, CBIS-DDSM and mini-MIAS images)."""

    work_max_side_px: int = 512
    smooth_sigma_px: float = 1.0  # in working (block) pixels
    threshold_fraction: float = 0.3
    opening_iterations: int = 2
    chest_wall_min_ratio: float = 1.2  # tissue(half) / tissue(other half) to call a chest-wall side


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over `factor`×`factor` blocks (edge-padded to a multiple of `factor`)."""
    if factor == 1:
        return image.astype(np.float32, copy=True)
    h, w = image.shape
    ph, pw = (-h) % factor, (-w) % factor
    padded = np.pad(image, ((0, ph), (0, pw)), mode="edge") if (ph or pw) else image
    hb, wb = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(hb, factor, wb, factor).mean(axis=(1, 3), dtype=np.float32)


def _upsample(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour block upsampling of a working-grid mask, cropped to `shape`."""
    if factor == 1:
        return mask[: shape[0], : shape[1]]
    up = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
    return up[: shape[0], : shape[1]]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def breast_threshold(image: np.ndarray, cfg: BreastMaskConfig = BreastMaskConfig()) -> tuple[float, np.ndarray, int]:
    """The tissue threshold, the smoothed working image it was found on, and the block factor."""
    factor = max(1, int(np.ceil(max(image.shape) / cfg.work_max_side_px)))
    small = _block_mean(image, factor)
    if cfg.smooth_sigma_px > 0:
        small = ndi.gaussian_filter(small, cfg.smooth_sigma_px)
    if float(small.min()) == float(small.max()):
        return float(small.max()), small, factor
    try:
        t_otsu = float(threshold_otsu(small))
    except ValueError:  # a range too narrow for 256 finite bins (float noise on a constant): nothing to separate
        return float(small.max()), small, factor
    bg = float(np.median(small[small <= t_otsu]))
    return bg + cfg.threshold_fraction * (t_otsu - bg), small, factor


def _low_res_mask(image: np.ndarray, cfg: BreastMaskConfig) -> tuple[np.ndarray, float, int]:
    """Breast mask on the working grid (threshold, opening, largest component, holes filled)."""
    t, small, factor = breast_threshold(image, cfg)
    low = small > t
    if not low.any():
        return low, t, factor
    opened = ndi.binary_opening(low, iterations=cfg.opening_iterations) if cfg.opening_iterations > 0 else low
    if opened.any():
        low = opened
    return ndi.binary_fill_holes(_largest_component(low)), t, factor


def _as_finite_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"breast_mask needs a non-empty 2-D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        finite = image[np.isfinite(image)]
        fill = float(finite.min()) if finite.size else 0.0
        image = np.where(np.isfinite(image), image, fill).astype(np.float32)
    return image


def breast_mask(image: np.ndarray, cfg: BreastMaskConfig = BreastMaskConfig()) -> np.ndarray:
    """Bool (H, W) mask of the breast in a dense-bright image (all False for a constant image)."""
    image = _as_finite_image(image)
    low, t, factor = _low_res_mask(image, cfg)
    if factor == 1 or not low.any():
        return low if factor == 1 else np.zeros(image.shape, dtype=bool)
    inner = ndi.binary_erosion(low, border_value=1)
    band = ndi.binary_dilation(low) & ~inner
    # Full-resolution edge inside the one-block band only; the interior is the low-resolution mask.
    full = _upsample(inner, factor, image.shape).copy()
    band_full = _upsample(band, factor, image.shape)
    full[band_full] = image[band_full] > t
    # Keep only what is connected to the interior (drops specks the band threshold made).
    labels, n = ndi.label(full)
    if n > 1:
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.unique(labels[_upsample(inner, factor, image.shape)])] = True
        keep[0] = False
        if keep.any():
            full = keep[labels]
    return full


def chest_wall_side_of_image(image: np.ndarray, cfg: BreastMaskConfig = BreastMaskConfig()) -> Literal["left", "right"] | None:
    """`chest_wall_side` of the image's (working-resolution) breast mask; None when undecided."""
    low, _, _ = _low_res_mask(_as_finite_image(image), cfg)
    return chest_wall_side(low, cfg.chest_wall_min_ratio)


def chest_wall_side(mask: np.ndarray, min_ratio: float = BreastMaskConfig().chest_wall_min_ratio) -> Literal["left", "right"] | None:
    """The image side holding the chest wall: the half with more breast tissue; None when undecided.

    A breast is widest at the chest wall and tapers to the nipple, so the half of the image holding the
    chest wall holds clearly more of the mask (`min_ratio` times the other half, or the other is empty).
    """
    mask = np.asarray(mask, dtype=bool)
    w = mask.shape[1]
    half = w // 2
    left = int(mask[:, :half].sum())
    right = int(mask[:, w - half :].sum())
    if left == right == 0:
        return None
    if left >= min_ratio * right:
        return "left"
    if right >= min_ratio * left:
        return "right"
    return None

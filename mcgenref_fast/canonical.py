"""Canonical form (SPEC §1): 0.07 mm pixels, chest wall on the left, breast-percentile normalisation.

Forward: each axis is resampled on its own (separable): exact area averaging when shrinking (every
input pixel contributes in proportion to its overlap with the output pixel, fractional factors
included), bicubic (Keys, a = -0.5) when enlarging; then a left-right flip when the chest wall is on the right; then
`I = max(0, (v - lo) / (hi - lo))` with lo/hi the breast's 0.5 % / 99.8 % percentiles (no upper clip).

Back to the file's grid (geometric only): masks and probabilities go nearest-neighbour where the input
is finer and any-pixel / max where it is coarser, so thresholding commutes with the mapping
(`prob_to_input(p) >= t == mask_to_input(p >= t)`) and no component is ever lost. Pixel centres are
aligned: canonical pixel j sits at input coordinate `(j + 0.5) * n_in / n_can - 0.5`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from mcgenref_fast.breast_mask import breast_mask
from mcgenref_fast.config import CanonicalConfig
from mcgenref_fast.io.meta import Mammogram

_MIN_BREAST_PIXELS = 64  # fewer breast pixels than this: normalise on the whole image instead
# A mammogram is at most a 35 × 43 cm film / detector: an input wider than this in mm has a wrong pixel spacing
# (and at 0.07 mm/px it would need gigabytes), one under MIN_CANONICAL_SIDE_PX canonical pixels a tiny one.
MAX_SIDE_MM = 600.0
MIN_CANONICAL_SIDE_PX = 4
BICUBIC_A = -0.5  # Keys' kernel: exact on linear and quadratic ramps (torch's -0.75 is not)


def canonical_shape(shape: tuple[int, int], input_spacing_mm: float, spacing_mm: float) -> tuple[int, int]:
    """(h, w) of the canonical image: the input's extent in mm divided by the canonical spacing."""
    scale = input_spacing_mm / spacing_mm
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def area_weights(n_in: int, n_out: int) -> sp.csr_matrix:
    """Sparse (n_out, n_in) exact area-averaging matrix (rows sum to 1) for n_out <= n_in."""
    ratio = n_in / n_out
    j = np.arange(n_out, dtype=np.float64)
    start, end = j * ratio, (j + 1) * ratio
    first = np.floor(start).astype(np.int64)
    span = int(np.ceil(ratio)) + 1
    rows, cols, vals = [], [], []
    for d in range(span):
        k = first + d
        overlap = np.minimum(k + 1, end) - np.maximum(k, start)
        ok = (k < n_in) & (overlap > 1e-12)
        rows.append(j[ok].astype(np.int64))
        cols.append(k[ok])
        vals.append(overlap[ok] / ratio)
    weights = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_in)
    )
    return weights


def _keys(s: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: reproduces quadratics; Catmull-Rom)."""
    s = np.abs(s)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


def cubic_weights(n_in: int, n_out: int, a: float = BICUBIC_A) -> sp.csr_matrix:
    """Sparse (n_out, n_in) bicubic interpolation matrix, pixel centres aligned, edges replicated."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(x).astype(np.int64)
    t = x - base
    rows = np.repeat(np.arange(n_out, dtype=np.int64), 4)
    taps = base[:, None] + np.arange(-1, 3)[None, :]
    vals = _keys(t[:, None] - np.arange(-1, 3)[None, :], a)
    cols = np.clip(taps, 0, n_in - 1)
    return sp.csr_matrix((vals.ravel().astype(np.float32), (rows, cols.ravel())), shape=(n_out, n_in))


def _resample_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resample one axis of a float32 image: area average down, bicubic up, identity when equal."""
    n_in = image.shape[axis]
    if n_out == n_in:
        return image
    weights = area_weights(n_in, n_out) if n_out < n_in else cubic_weights(n_in, n_out)
    if axis == 0:
        return np.ascontiguousarray(weights @ image, dtype=np.float32)
    return np.ascontiguousarray((weights @ image.T).T, dtype=np.float32)


def resample(image: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Separable resampling of a float32 (H, W) image to `out_shape` (area down, bicubic up)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    return _resample_axis(_resample_axis(image, out_shape[0], 0), out_shape[1], 1)


def _nearest_index(n_target: int, n_source: int) -> np.ndarray:
    """Source index whose pixel contains each target pixel's centre (exact integer arithmetic)."""
    i = np.arange(n_target, dtype=np.int64)
    return ((2 * i + 1) * n_source) // (2 * n_target)


def _axis_to_grid(arr: np.ndarray, n_target: int, axis: int) -> np.ndarray:
    """Map one axis onto `n_target` pixels: nearest when enlarging, max over the footprint when shrinking."""
    n_source = arr.shape[axis]
    if n_target == n_source:
        return arr
    if n_target > n_source:
        return np.take(arr, _nearest_index(n_target, n_source), axis=axis)
    i = np.arange(n_target, dtype=np.int64)
    start = (i * n_source) // n_target
    end = -((-(i + 1) * n_source) // n_target)  # ceil; footprint [start, end) overlaps by > 0
    reduced = np.maximum.reduceat(arr, start, axis=axis)
    return np.maximum(reduced, np.take(arr, end - 1, axis=axis))


@dataclass(frozen=True, eq=False)
class CanonicalImage:
    """A mammogram in canonical space plus what is needed to map results back to the file's grid."""

    image: np.ndarray = field(repr=False)
    breast_mask: np.ndarray = field(repr=False)
    spacing_mm: float
    flipped_lr: bool
    input_shape: tuple[int, int]
    input_spacing_mm: float
    lo: float
    hi: float

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def _check(self, arr: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise ValueError(f"{what} has shape {arr.shape}, expected the canonical shape {self.shape}")
        return arr[:, ::-1] if self.flipped_lr else arr

    def _to_input(self, arr: np.ndarray) -> np.ndarray:
        arr = _axis_to_grid(arr, self.input_shape[0], 0)
        return np.ascontiguousarray(_axis_to_grid(arr, self.input_shape[1], 1))

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        """Bool mask on the input grid and orientation; every canonical component keeps >= 1 pixel."""
        arr = self._check(mask, "mask").astype(np.uint8)
        return self._to_input(arr).astype(bool)

    def prob_to_input(self, prob: np.ndarray) -> np.ndarray:
        """Float32 map on the input grid (nearest up, max down: thresholds commute with the mapping)."""
        arr = self._check(prob, "probability map").astype(np.float32)
        return self._to_input(arr).astype(np.float32)

    def points_to_input(self, rc_px: np.ndarray) -> np.ndarray:
        """(n, 2) canonical (row, col) px -> (n, 2) input (row, col) px (float, pixel centres aligned)."""
        rc = np.asarray(rc_px, dtype=np.float64).reshape(-1, 2)
        h, w = self.shape
        rows, cols = rc[:, 0], rc[:, 1]
        if self.flipped_lr:
            cols = (w - 1) - cols
        big_h, big_w = self.input_shape
        return np.stack([(rows + 0.5) * big_h / h - 0.5, (cols + 0.5) * big_w / w - 0.5], axis=1)

    def points_to_canonical(self, rc_px: np.ndarray) -> np.ndarray:
        """Inverse of `points_to_input`: input (row, col) px -> canonical (row, col) px."""
        rc = np.asarray(rc_px, dtype=np.float64).reshape(-1, 2)
        h, w = self.shape
        big_h, big_w = self.input_shape
        rows = (rc[:, 0] + 0.5) * h / big_h - 0.5
        cols = (rc[:, 1] + 0.5) * w / big_w - 0.5
        if self.flipped_lr:
            cols = (w - 1) - cols
        return np.stack([rows, cols], axis=1)


def normalise(image: np.ndarray, mask: np.ndarray, cfg: CanonicalConfig) -> tuple[np.ndarray, float, float]:
    """`max(0, (v - lo) / (hi - lo))` with the breast's percentiles (whole image if the mask is tiny)."""
    values = image[mask] if int(mask.sum()) >= _MIN_BREAST_PIXELS else image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [cfg.lo_percentile, cfg.hi_percentile]))
    if not hi > lo:
        lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        hi = lo + 1.0
    out = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.maximum(out, 0.0, out=out)
    return out.astype(np.float32, copy=False), lo, hi


def check_extent(shape: tuple[int, int], input_spacing_mm: float, spacing_mm: float, path: str | None) -> None:
    """SpacingError when the image, at its pixel spacing, is larger than any mammogram (MAX_SIDE_MM a side) or
    shrinks to under MIN_CANONICAL_SIDE_PX canonical pixels: in both cases the spacing is wrong."""
    from mcgenref_fast.errors import SpacingError

    h_mm, w_mm = shape[0] * input_spacing_mm, shape[1] * input_spacing_mm
    where = f"{shape[1]} × {shape[0]} px at {input_spacing_mm:g} mm/px is {w_mm:.4g} × {h_mm:.4g} mm"
    if max(h_mm, w_mm) > MAX_SIDE_MM:
        raise SpacingError(path, f"{where}, larger than any mammogram (at most {MAX_SIDE_MM:g} mm a side)",
                           "check the pixel spacing: --spacing, or the file's spacing tags")
    if min(canonical_shape(shape, input_spacing_mm, spacing_mm)) < MIN_CANONICAL_SIDE_PX:
        raise SpacingError(path, f"{where}, under {MIN_CANONICAL_SIDE_PX} px at the canonical {spacing_mm:g} mm/px",
                           "check the pixel spacing: --spacing, or the file's spacing tags")


def to_canonical(mammogram: Mammogram, cfg: CanonicalConfig = CanonicalConfig()) -> CanonicalImage:
    """Resample to `cfg.spacing_mm`, flip so the chest wall is on the left, normalise (SPEC §1). SpacingError
    for an extent no mammogram has (`check_extent`), before anything is allocated."""
    meta = mammogram.meta
    check_extent(mammogram.image.shape, meta.spacing_mm, cfg.spacing_mm, meta.path)
    image = np.asarray(mammogram.image, dtype=np.float32)
    out_shape = canonical_shape(image.shape, meta.spacing_mm, cfg.spacing_mm)
    resampled = resample(image, out_shape)
    flipped = meta.chest_wall_side == "right"
    if flipped:
        resampled = np.ascontiguousarray(resampled[:, ::-1])
    mask = breast_mask(resampled)
    normalised, lo, hi = normalise(resampled, mask, cfg)
    return CanonicalImage(
        image=normalised,
        breast_mask=mask,
        spacing_mm=float(cfg.spacing_mm),
        flipped_lr=flipped,
        input_shape=(int(image.shape[0]), int(image.shape[1])),
        input_spacing_mm=float(meta.spacing_mm),
        lo=lo,
        hi=hi,
    )

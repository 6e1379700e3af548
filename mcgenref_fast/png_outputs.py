"""mask.png and prob.png: the result in the input file's own grid, lossless and easy to read anywhere.

- mask.png: uint8 grayscale, 0 = background, 255 = microcalcification (visible in any viewer).
- prob.png: uint16 grayscale, value = round(p * 65535), so p is recovered to within 1/131070.
Both have exactly the input image's rows and columns (SPEC: every output is written in the file's grid).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import write_png_atomic
from .errors import OutputError

MASK_ON_VALUE = 255
PROB_MAX_VALUE = 65535


def _check_2d(path: str | Path | None, name: str, array: np.ndarray, expected_shape: tuple[int, int] | None) -> None:
    where = f"{path}: " if path is not None else ""
    if array.ndim != 2:
        raise OutputError(f"{where}{name} must be 2-D (H, W), got shape {array.shape}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise OutputError(
            f"{where}{name} has shape {tuple(array.shape)} but the input image is {tuple(expected_shape)}"
            " (outputs are written in the input grid: map canonical results back first)"
        )


def mask_to_png_array(mask_hw: np.ndarray) -> np.ndarray:
    """bool/0-1 mask → uint8 0/255."""
    mask = np.asarray(mask_hw)
    _check_2d(None, "mask", mask, None)
    return np.where(mask.astype(bool), np.uint8(MASK_ON_VALUE), np.uint8(0))


def prob_to_png_array(prob_hw: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] → uint16 round(p * 65535); NaN is refused, values outside [0, 1] clipped."""
    prob = np.asarray(prob_hw, dtype=np.float64)
    _check_2d(None, "probability map", prob, None)
    if not np.isfinite(prob).all():
        raise OutputError("probability map holds NaN or inf values")
    return np.rint(np.clip(prob, 0.0, 1.0) * PROB_MAX_VALUE).astype(np.uint16)


def write_mask_png(path: str | Path, mask_hw: np.ndarray, expected_shape: tuple[int, int] | None = None) -> Path:
    """Atomically write mask.png (uint8 0/255); `expected_shape` guards against a canonical-grid mask."""
    _check_2d(path, "mask", np.asarray(mask_hw), expected_shape)
    return write_png_atomic(path, mask_to_png_array(mask_hw))


def write_prob_png(path: str | Path, prob_hw: np.ndarray, expected_shape: tuple[int, int] | None = None) -> Path:
    """Atomically write prob.png (uint16 round(p * 65535))."""
    _check_2d(path, "probability map", np.asarray(prob_hw), expected_shape)
    try:
        pixels = prob_to_png_array(prob_hw)
    except OutputError as exc:
        raise OutputError(f"{path}: {exc}") from exc
    return write_png_atomic(path, pixels)


def _read_png(path: str | Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read PNG ({exc})") from exc


def read_mask_png(path: str | Path) -> np.ndarray:
    """mask.png → bool (H, W) (any non-zero pixel is on)."""
    return _read_png(path) > 0


def read_prob_png(path: str | Path) -> np.ndarray:
    """prob.png → float32 probability (H, W) = value / 65535."""
    pixels = _read_png(path)
    if pixels.dtype != np.uint16:
        raise OutputError(f"{path}: prob.png must be 16-bit grayscale, got {pixels.dtype}")
    return (pixels.astype(np.float64) / PROB_MAX_VALUE).astype(np.float32)

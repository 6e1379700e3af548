"""A preview grid of synthetic pairs a person can judge at a glance: each tile is the image (windowed on
its own 0.5 %..99.9 % percentiles, so MCs may saturate to white) with a one-pixel red ring just outside
the mask. Built as a palette image (gray levels + 2 colours) to keep the PNG small."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

PREVIEW_GRAY_LEVELS: int = 128
PREVIEW_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.9)
PREVIEW_OUTLINE_RGB: tuple[int, int, int] = (255, 40, 40)
PREVIEW_GAP_RGB: tuple[int, int, int] = (20, 40, 90)
PREVIEW_GAP_PX: int = 3


def preview_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], cols: int = 4,
                 gap_px: int = PREVIEW_GAP_PX) -> tuple[np.ndarray, list[int]]:
    """(palette indices uint8 (H, W), flat RGB palette) of the tiles laid out row-major, `cols` per row."""
    if len(images) != len(masks) or not images:
        raise ValueError("preview_grid needs as many masks as images, at least one")
    g = PREVIEW_GRAY_LEVELS
    outline_idx, gap_idx = g, g + 1
    th, tw = images[0].shape
    rows = -(-len(images) // cols)
    canvas = np.full((rows * th + (rows + 1) * gap_px, cols * tw + (cols + 1) * gap_px), gap_idx, np.uint8)
    for i, (img, m) in enumerate(zip(images, masks)):
        lo, hi = np.percentile(img, PREVIEW_WINDOW_PERCENTILES)
        tile = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        idx = np.rint(tile * (g - 1)).astype(np.uint8)
        m = np.asarray(m, bool)
        idx[ndi.binary_dilation(m) & ~m] = outline_idx
        r, c = divmod(i, cols)
        y, x = gap_px + r * (th + gap_px), gap_px + c * (tw + gap_px)
        canvas[y:y + th, x:x + tw] = idx
    palette = [v for k in range(g) for v in (round(255 * k / (g - 1)),) * 3]
    palette += list(PREVIEW_OUTLINE_RGB) + list(PREVIEW_GAP_RGB)
    return canvas, palette


def write_preview_png(path: str | Path, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      cols: int = 4) -> Path:
    """Atomically write the preview grid as a palette PNG."""
    from PIL import Image

    from mcgenref_fast.atomic import write_with

    canvas, palette = preview_grid(images, masks, cols)
    image = Image.fromarray(canvas, mode="P")
    image.putpalette(palette)
    return write_with(path, lambda fh: image.save(fh, format="PNG", optimize=True))

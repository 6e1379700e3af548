"""Plain numpy twin of the C++ tiler (`csrc/tiler.cpp`), operation for operation.

Used by the tests (the C++ path must equal it exactly) and as the fallback where the extension is not
built. Weights are computed in float64 with the same summation order, then rounded to float32; the fusion
accumulates float32 products in tile order, like the C++ loop.
"""
from __future__ import annotations

import math

import numpy as np


def axis_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis (px): stride `tile - overlap`, the last tile shifted onto the edge."""
    if tile < 1:
        raise ValueError("tile size must be >= 1")
    if overlap < 0 or 2 * overlap > tile:
        raise ValueError("overlap must be in [0, tile/2]")
    if length < 1:
        raise ValueError("image side must be >= 1 px")
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = (length - tile + stride - 1) // stride + 1
    origins = [i * stride for i in range(n)]
    origins[-1] = length - tile
    return origins


def ramp(overlap: int) -> np.ndarray:
    """Raised-cosine ramp (float64), rising from the tile edge inwards; r[i] + r[O-1-i] = 1."""
    return np.array([0.5 - 0.5 * math.cos(math.pi * (i + 0.5) / overlap) for i in range(overlap)], dtype=np.float64)


def profile(tile: int, overlap: int, taper_lo: bool, taper_hi: bool) -> np.ndarray:
    """1-D weight profile of a tile side, tapered only toward active neighbours."""
    p = np.ones(tile, dtype=np.float64)
    r = ramp(overlap)
    if taper_lo and overlap:
        p[:overlap] *= r
    if taper_hi and overlap:
        p[tile - overlap:] *= r[::-1]
    return p


def make_grid(height: int, width: int, tile: int, overlap: int, mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origins (n,2) int64, grid_rc (n,2) int64, weights (n,T,T) float32) of the active tiles, raster order."""
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError("breast mask must have the image's shape (H, W)")
    oy, ox = axis_origins(height, tile, overlap), axis_origins(width, tile, overlap)
    ny, nx = len(oy), len(ox)
    active = np.zeros((ny, nx), dtype=bool)
    for gy, y0 in enumerate(oy):
        for gx, x0 in enumerate(ox):
            active[gy, gx] = bool(mask[y0:y0 + tile, x0:x0 + tile].any())
    grid_rc = np.argwhere(active).astype(np.int64).reshape(-1, 2)
    origins = np.array([[oy[gy], ox[gx]] for gy, gx in grid_rc], dtype=np.int64).reshape(-1, 2)

    def is_active(gy: int, gx: int) -> bool:
        return 0 <= gy < ny and 0 <= gx < nx and bool(active[gy, gx])

    n = len(origins)
    raw = np.zeros((n, tile, tile), dtype=np.float64)
    for q, ((gy, gx), (y0, x0)) in enumerate(zip(grid_rc, origins)):
        py_ = profile(tile, overlap, is_active(gy - 1, gx), is_active(gy + 1, gx))
        px_ = profile(tile, overlap, is_active(gy, gx - 1), is_active(gy, gx + 1))
        hy, hx = min(tile, height - y0), min(tile, width - x0)
        raw[q, :hy, :hx] = np.outer(py_, px_)[:hy, :hx]
    total = np.zeros((height, width), dtype=np.float64)
    for q, (y0, x0) in enumerate(origins):
        hy, hx = min(tile, height - y0), min(tile, width - x0)
        total[y0:y0 + hy, x0:x0 + hx] += raw[q, :hy, :hx]
    weights = np.zeros((n, tile, tile), dtype=np.float32)
    for q, (y0, x0) in enumerate(origins):
        hy, hx = min(tile, height - y0), min(tile, width - x0)
        weights[q, :hy, :hx] = (raw[q, :hy, :hx] / total[y0:y0 + hy, x0:x0 + hx]).astype(np.float32)
    return origins, grid_rc, weights


def gather(image: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
    """image (H, W) float32 → tiles (n, T, T), zeros outside the image."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    height, width = image.shape
    out = np.zeros((len(origins), tile, tile), dtype=np.float32)
    for q, (y0, x0) in enumerate(origins):
        hy, hx = min(tile, height - y0), min(tile, width - x0)
        out[q, :hy, :hx] = image[y0:y0 + hy, x0:x0 + hx]
    return out


def fuse(tiles: np.ndarray, weights: np.ndarray, origins: np.ndarray, height: int, width: int) -> np.ndarray:
    """canvas (H, W) = sum_q weights_q * tiles_q, accumulated in float32 in tile order."""
    tiles = np.asarray(tiles, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    canvas = np.zeros((height, width), dtype=np.float32)
    tile = tiles.shape[1]
    for q, (y0, x0) in enumerate(origins):
        hy, hx = min(tile, height - y0), min(tile, width - x0)
        canvas[y0:y0 + hy, x0:x0 + hx] += weights[q, :hy, :hx] * tiles[q, :hy, :hx]
    return canvas

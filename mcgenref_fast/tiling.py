"""Tiling of a canonical image (SPEC §4 "Tiles"): the grid, active tiles, blend weights, gather and fusion.

The work is done by the C++ extension `mcgenref_fast._tiler` (OpenMP); `tiling_numpy` is its exact twin,
used when the extension is not built (e.g. a GPU box without pybind11) or when `MCGENREF_TILER=numpy`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from mcgenref_fast import tiling_numpy
from mcgenref_fast.config import TileConfig
from mcgenref_fast.errors import ConfigError


def _load_backend() -> ModuleType:
    choice = os.environ.get("MCGENREF_TILER", "auto").lower()
    if choice == "numpy":
        return tiling_numpy
    try:
        from mcgenref_fast import _tiler  # type: ignore[attr-defined]
    except ImportError as exc:
        if choice == "cpp":
            raise ImportError("MCGENREF_TILER=cpp but the C++ tiler is not built: run `pip install -e .`") from exc
        warnings.warn("C++ tiler not built; using the numpy twin (slower)", RuntimeWarning, stacklevel=2)
        return tiling_numpy
    return _tiler


_backend: ModuleType | None = None


def backend() -> ModuleType:
    """The tiler implementation in use (the C++ module, or `tiling_numpy`)."""
    global _backend
    if _backend is None:
        _backend = _load_backend()
    return _backend


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Active tiles of one canonical image (all px).

    `origins[q] = (y, x)` of active tile q in raster order; `grid_rc[q]` its (row, col) in the full grid;
    `weights[q]` its normalised blend weights (sum over tiles = 1 on covered pixels, 0 outside the image);
    `covered` marks the pixels inside at least one active tile.
    """

    image_shape: tuple[int, int]
    tile_px: int
    overlap_px: int
    origins: np.ndarray
    grid_rc: np.ndarray
    weights: np.ndarray
    covered: np.ndarray

    @property
    def n_tiles(self) -> int:
        return int(self.origins.shape[0])


def make_grid(shape: tuple[int, int], breast_mask: np.ndarray, cfg: TileConfig = TileConfig()) -> TileGrid:
    """Tile grid of an image of `shape` (H, W) px; a tile is active when it holds a breast pixel."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ConfigError(f"cannot tile an empty image of shape {shape}")
    mask = np.ascontiguousarray(breast_mask, dtype=np.uint8)
    if mask.shape != (height, width):
        raise ConfigError(f"breast mask shape {mask.shape} differs from the image shape {(height, width)}")
    origins, grid_rc, weights = backend().make_grid(height, width, cfg.tile_px, cfg.overlap_px, mask)
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    covered = np.zeros((height, width), dtype=bool)
    for y0, x0 in origins:
        covered[y0:y0 + cfg.tile_px, x0:x0 + cfg.tile_px] = True
    return TileGrid((height, width), cfg.tile_px, cfg.overlap_px, origins,
                    np.asarray(grid_rc, dtype=np.int64).reshape(-1, 2), np.asarray(weights), covered)


def gather(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Image (H, W) → tile batch (n, T, T) float32, zeros outside the image."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.shape != grid.image_shape:
        raise ConfigError(f"image shape {image.shape} differs from the grid's {grid.image_shape}")
    return np.asarray(backend().gather(image, grid.origins, grid.tile_px))


def fuse(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Tile batch (n, T, T) → canvas (H, W) float32: sum_q w_q · tile_q, deterministic; 0 outside coverage."""
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)
    expected = (grid.n_tiles, grid.tile_px, grid.tile_px)
    if tiles.shape != expected:
        raise ConfigError(f"tile batch shape {tiles.shape} differs from the grid's {expected}")
    return np.asarray(backend().fuse(tiles, grid.weights, grid.origins, *grid.image_shape))

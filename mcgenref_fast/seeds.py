"""Seed extraction from the fused canvas Z (SPEC §4 step 1), reference version.

A pixel p is a seed when
  1. Z[p] ≥ logit(τ_s)   (the threshold is computed in float64, then compared in Z's dtype),
  2. p lies in the breast mask, and
  3. p is a strict local maximum of its 3×3 window with ties broken by raster order.

The tie rule, precisely: "a pixel wins a tie against neighbours later in raster order", so among equal
values the pixel earliest in raster order is the maximum. Equivalently, order pixels by the key
(Z, -raster index) and ask p's key to be strictly larger than each of its 8 neighbours' keys:
  Z[p] >  Z[n]  for neighbours n EARLIER in raster order (row above, or same row to the left), and
  Z[p] >= Z[n]  for neighbours n LATER in raster order (row below, or same row to the right).
So a flat 2×2 plateau yields one seed, at its top-left pixel.

Outside the image counts as -inf (a border pixel competes only with its in-image neighbours). Pixels
inside the image but outside every active tile also count as -inf, since p = 0 there (SPEC §4 "Tiles").
They can only touch a breast pixel when the overlap is 0.

Each tile keeps the seeds inside its window, at most n_s, ranked by (Z descending, raster index
ascending), and reports them in tile-local px (row, col).
"""
from __future__ import annotations

import math

import torch

from mcgenref_fast.config import RefineConfig

# The 8 neighbour offsets (dy, dx), split by raster order relative to the centre pixel.
EARLIER_OFFSETS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1))
LATER_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (1, -1), (1, 0), (1, 1))


def logit(prob: float) -> float:
    """log(p / (1 - p)) in float64."""
    return math.log(prob / (1.0 - prob))


def _neighbour(padded: torch.Tensor, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    """Value of the neighbour at offset (dy, dx) of every pixel, from a canvas padded by 1 px."""
    return padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def local_maxima(z: torch.Tensor, considered: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (H, W): strict 3×3 local maxima of `z` with the raster-order tie rule (module docstring).

    Pixels where `considered` is False, and everything outside the image, count as -inf. A pixel that is
    itself -inf is never a maximum.
    """
    height, width = z.shape
    minus_inf = torch.full_like(z, -math.inf)
    values = z if considered is None else torch.where(considered, z, minus_inf)
    padded = torch.nn.functional.pad(values, (1, 1, 1, 1), value=-math.inf)
    is_max = values > -math.inf
    for dy, dx in EARLIER_OFFSETS:
        is_max &= values > _neighbour(padded, dy, dx, height, width)
    for dy, dx in LATER_OFFSETS:
        is_max &= values >= _neighbour(padded, dy, dx, height, width)
    return is_max


def seed_mask(z: torch.Tensor, breast_mask: torch.Tensor, covered: torch.Tensor,
              threshold_prob: float) -> torch.Tensor:
    """Bool (H, W) of all seeds of the canvas `z` (conditions 1-3 of the module docstring).

    logit(τ_s) is rounded to Z's dtype on the host and compared as a Python scalar (exactly representable in
    that dtype, so the same comparison) — no host→device copy of the threshold on a GPU."""
    threshold = float(torch.tensor(logit(threshold_prob), dtype=z.dtype))  # rounded to Z's dtype, on the CPU
    above = z >= threshold
    return above & breast_mask & local_maxima(z, covered)


def rank_seeds(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(m, 2) int64 canvas (row, col) of the True pixels of `mask`, ranked (Z desc, raster index asc)."""
    rc = torch.nonzero(mask)                         # raster order
    if rc.shape[0] == 0:
        return rc
    order = torch.sort(z[rc[:, 0], rc[:, 1]], descending=True, stable=True).indices  # stable: raster asc
    return rc[order]


def tile_seeds(z: torch.Tensor, mask: torch.Tensor, origins: list[tuple[int, int]], tile_px: int,
               max_seeds: int) -> list[torch.Tensor]:
    """Per tile: (m_q, 2) int64 tile-local (row, col) px of its seeds, m_q ≤ `max_seeds`, ranked."""
    ranked = rank_seeds(z, mask)
    out = []
    for y0, x0 in origins:
        inside = ((ranked[:, 0] >= y0) & (ranked[:, 0] < y0 + tile_px)
                  & (ranked[:, 1] >= x0) & (ranked[:, 1] < x0 + tile_px))
        local = ranked[inside][:max_seeds] - torch.tensor([y0, x0], device=ranked.device)
        out.append(local)
    return out


def extract_seeds(z: torch.Tensor, breast_mask: torch.Tensor, covered: torch.Tensor,
                  origins: list[tuple[int, int]], cfg: RefineConfig = RefineConfig()) -> list[torch.Tensor]:
    """SPEC §4 step 1 on the fused canvas `z` (H, W): per active tile, its seeds in tile-local px."""
    mask = seed_mask(z, breast_mask.to(torch.bool), covered.to(torch.bool), cfg.seed_threshold)
    return tile_seeds(z, mask, origins, cfg.tiles.tile_px, cfg.max_seeds_per_tile)

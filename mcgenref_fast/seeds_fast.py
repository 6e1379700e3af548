"""Seed extraction from the fused canvas Z (SPEC §4 step 1), vectorised for the fast path.

Same result as `mcgenref_fast.seeds.extract_seeds` (the reference; its module docstring states the rule and
the tie break), computed without a Python loop over tiles or pixels:

1. Candidates: `Z ≥ logit(τ_s)` (threshold in float64 rounded to Z's dtype, as the reference), in the breast
   and covered by an active tile (an uncovered pixel counts as −inf, so it is never a maximum). One pass
   over the canvas; everything after works on the (few) candidates only.
2. Local maximum with the raster tie rule on the candidates: their 8 neighbours are gathered at once
   (−inf outside the image and outside the active tiles); a candidate is a seed when it is strictly
   greater than its 4 earlier neighbours (row above, left) and ≥ its 4 later ones.
3. Ranking: (Z descending, raster index ascending) by a stable descending sort of the raster-ordered list,
   the reference's sort on the same values, hence the same order.
4. Tiles: each seed lies in at most 3 tiles per axis; its candidate grid rows / cols are
   ⌊r/s⌋−1..⌊r/s⌋+1 (s = T − O; the argument is in `kernels/fuse_tiles.py`), kept when they exist,
   contain the seed and are active. The (tile, seed) pairs are sorted by (tile, rank); a seed's position
   inside its tile's run is its rank in the tile; positions < n_s are kept.

Output: `TileSeeds`: `local` (n, m_max, 2) int64 tile-local (row, col) px, padded with 0 past `counts[q]`;
`counts` (n,) int64; `canvas_rc(q)` / `as_list()` for the diagnostics (`IterationDiagnostics.seeds_rc`).

The steps above take host syncs on CUDA (`nonzero`, boolean indexing, `int(counts.max())`). On CUDA
`extract_seeds_fast` therefore runs a fixed-shape formulation instead (`extract_seeds_fixed`, issue 9), the
same seeds without a device→host transfer:

1. the per-pixel seed map of the canvas (`seeds.seed_mask`: threshold rounded to Z's dtype on the host,
   breast, covered, and the 3×3 rule by shifted comparisons);
2. per active tile, its T×T window of `key = Z where seed else −inf` (`TileIndex.canvas_index`, −inf on
   padding), laid out row by row: the within-tile flat index is monotone in the canvas raster index;
3. a stable descending sort of each tile's keys ranks its seeds (Z descending, raster ascending) ahead of
   the −inf non-seeds; the first k = min(n_s, T²) entries are kept, `counts` = how many of them are
   seeds (= min(n_s, seeds in the tile)), (row, col) = divmod(flat index, T), 0 past the count.

Its `local` is (n, k, 2) (fixed width k, not the data-dependent m_max); the first m_max columns equal the
compact path's and the rest are 0, so `as_list` / `tensors` / the diagnostics are identical.
Choice: `fixed_shape` argument; None reads `MCGENREF_SEEDS` (`ops_torch.fixed_shape_seeds`): `auto`
(default: fixed on CUDA, compact elsewhere) | `fixed` | `compact`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mcgenref_fast.config import RefineConfig
from mcgenref_fast.ops_torch import TileIndex, fixed_shape_seeds
from mcgenref_fast.seeds import EARLIER_OFFSETS, LATER_OFFSETS, logit, seed_mask

__all__ = ["TileSeeds", "candidate_seeds", "extract_seeds_fast", "extract_seeds_fixed", "assign_to_tiles",
           "tile_seeds_fixed"]


@dataclass(frozen=True, eq=False)
class TileSeeds:
    """Seeds of every active tile, padded: `local` (n, m_max, 2) int64 tile-local px, `counts` (n,) int64,
    `origins` (n, 2) int64 (canvas px of each tile's origin). Rows of `local` past `counts[q]` are 0."""

    local: torch.Tensor
    counts: torch.Tensor
    origins: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return int(self.counts.shape[0])

    def as_list(self, canvas: bool = False) -> list[np.ndarray]:
        """Per tile, its (m_q, 2) int64 seeds (ranked) as numpy: tile-local px, or canvas px with `canvas`."""
        local = self.local.cpu()
        if canvas:
            local = local + self.origins.cpu()[:, None, :]
        local_np = local.numpy()
        counts = self.counts.cpu().tolist()
        return [local_np[q, :c].copy() for q, c in enumerate(counts)]

    def tensors(self) -> list[torch.Tensor]:
        """Per tile, its (m_q, 2) int64 tile-local seeds as tensors (the reference's `extract_seeds` format)."""
        counts = self.counts.cpu().tolist()
        return [self.local[q, :c] for q, c in enumerate(counts)]


def candidate_seeds(z: torch.Tensor, breast_mask: torch.Tensor, covered: torch.Tensor,
                    threshold_prob: float) -> torch.Tensor:
    """(m, 2) int64 canvas (row, col) of all seeds of the canvas `z` (H, W), ranked (Z desc, raster asc)."""
    height, width = z.shape
    threshold = torch.tensor(logit(threshold_prob), dtype=z.dtype, device=z.device)  # rounded to Z's dtype
    cand = (z >= threshold) & breast_mask & covered
    rc = torch.nonzero(cand)                                             # raster order
    if rc.shape[0] == 0:
        return rc
    # the canvas padded by 1 px, −inf outside the image and outside the active tiles, read flat
    values = torch.where(covered, z, torch.tensor(-math.inf, dtype=z.dtype, device=z.device))
    padded = F.pad(values[None], (1, 1, 1, 1), value=-math.inf)[0].reshape(-1)
    pitch = width + 2
    flat = (rc[:, 0] + 1) * pitch + (rc[:, 1] + 1)
    zc = padded.index_select(0, flat)
    keep = torch.ones_like(flat, dtype=torch.bool)
    for offsets, strict in ((EARLIER_OFFSETS, True), (LATER_OFFSETS, False)):
        for dy, dx in offsets:
            nv = padded.index_select(0, flat + (dy * pitch + dx))
            keep &= (zc > nv) if strict else (zc >= nv)
    rc, zc = rc[keep], zc[keep]
    order = torch.sort(zc, descending=True, stable=True).indices                     # stable: raster asc
    return rc[order]


def _axis_candidates(pos: torch.Tensor, axis: torch.Tensor, tile: int, stride: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions (m,), the 3 candidate grid indices (m, 3) along one axis and whether each contains pos."""
    g = (pos // stride)[:, None] + torch.arange(-1, 2, device=pos.device)[None, :]          # (m, 3)
    exists = (g >= 0) & (g < axis.shape[0])
    origin = axis.to(torch.int64)[g.clamp(0, axis.shape[0] - 1)]
    ok = exists & (origin <= pos[:, None]) & (pos[:, None] < origin + tile)
    return g.clamp(0, axis.shape[0] - 1), ok


def assign_to_tiles(ranked_rc: torch.Tensor, index: TileIndex, max_seeds: int) -> TileSeeds:
    """Each tile keeps the ranked canvas seeds inside its window, the first `max_seeds` (SPEC §4 step 1)."""
    device = index.device
    n, tile = index.n_tiles, index.tile_px
    origins = index.origins.to(torch.int64)
    counts = torch.zeros(n, dtype=torch.int64, device=device)
    m = int(ranked_rc.shape[0])
    if m == 0 or n == 0 or max_seeds <= 0:
        return TileSeeds(torch.zeros((n, 0, 2), dtype=torch.int64, device=device), counts, origins)
    rc = ranked_rc.to(device=device, dtype=torch.int64)
    stride = max(1, index.stride_px)
    gy, oky = _axis_candidates(rc[:, 0], index.axis_y, tile, stride)                        # (m, 3)
    gx, okx = _axis_candidates(rc[:, 1], index.axis_x, tile, stride)
    q = index.tile_map.to(torch.int64)[gy[:, :, None], gx[:, None, :]]                     # (m, 3, 3)
    ok = oky[:, :, None] & okx[:, None, :] & (q >= 0)
    rank = torch.arange(m, device=device)[:, None, None].expand(m, 3, 3)
    q_sel, rank_sel = q[ok], rank[ok]                                                       # (p,) pairs
    key = q_sel * m + rank_sel                                      # (tile, rank): unique per pair
    _, order = torch.sort(key)
    q_sorted, rank_sorted = q_sel[order], rank_sel[order]
    per_tile = torch.bincount(q_sorted, minlength=n)                                        # (n,)
    start = torch.cumsum(per_tile, 0) - per_tile
    pos = torch.arange(q_sorted.shape[0], device=device) - start[q_sorted]                # rank within tile
    keep = pos < max_seeds
    q_k, pos_k, rank_k = q_sorted[keep], pos[keep], rank_sorted[keep]
    counts = torch.clamp(per_tile, max=max_seeds)
    m_max = int(counts.max()) if n else 0
    local = torch.zeros((n, m_max, 2), dtype=torch.int64, device=device)
    local[q_k, pos_k] = rc[rank_k] - origins[q_k]
    return TileSeeds(local, counts, origins)


def extract_seeds_fast(z: torch.Tensor, breast_mask: torch.Tensor, covered: torch.Tensor, index: TileIndex,
                       cfg: RefineConfig = RefineConfig(), fixed_shape: bool | None = None) -> TileSeeds:
    """SPEC §4 step 1 on the fused canvas `z` (H, W), for every active tile of `index` at once.

    `fixed_shape`: True runs `extract_seeds_fixed` (no host sync; `local` has width min(n_s, T²)), False
    the compact path (`candidate_seeds` + `assign_to_tiles`; width = the largest count), None chooses by
    `ops_torch.fixed_shape_seeds` (fixed on CUDA unless `MCGENREF_SEEDS` says otherwise). Same seeds.
    """
    if fixed_shape_seeds(z.device, fixed_shape):
        return extract_seeds_fixed(z, breast_mask, covered, index, cfg)
    ranked = candidate_seeds(z, breast_mask.to(torch.bool), covered.to(torch.bool), cfg.seed_threshold)
    return assign_to_tiles(ranked, index, cfg.max_seeds_per_tile)


# ------------------------------------------------------------------------------ fixed shapes (CUDA)
def tile_seeds_fixed(z: torch.Tensor, seeds_px: torch.Tensor, index: TileIndex, max_seeds: int) -> TileSeeds:
    """Each tile's first `max_seeds` seeds of the seed map `seeds_px` (H, W), ranked (Z desc, raster asc),
    with fixed shapes: `local` (n, k, 2), k = min(max_seeds, T²), 0 past `counts[q]` (module docstring)."""
    device = index.device
    n, tile = index.n_tiles, index.tile_px
    origins = index.origins.to(torch.int64)
    k = max(0, min(int(max_seeds), tile * tile))
    if n == 0 or k == 0:
        return TileSeeds(torch.zeros((n, k, 2), dtype=torch.int64, device=device),
                         torch.zeros(n, dtype=torch.int64, device=device), origins)
    key = torch.where(seeds_px, z, torch.full_like(z, -math.inf)).reshape(-1)
    key = torch.cat([key, key.new_full((1,), -math.inf)])                  # the spare slot: padding = −inf
    key_tiles = key.index_select(0, index.canvas_index).reshape(n, tile * tile)
    values, flat = torch.sort(key_tiles, dim=1, descending=True, stable=True)     # stable: raster asc
    values, flat = values[:, :k], flat[:, :k]
    is_seed = values > -math.inf                    # seeds first (Z ≥ logit(τ_s) > −inf), then −inf
    counts = is_seed.sum(dim=1, dtype=torch.int64)
    local = torch.stack((torch.div(flat, tile, rounding_mode="floor"), torch.remainder(flat, tile)), dim=-1)
    local = local.masked_fill_(~is_seed[:, :, None], 0)
    return TileSeeds(local, counts, origins)


def extract_seeds_fixed(z: torch.Tensor, breast_mask: torch.Tensor, covered: torch.Tensor, index: TileIndex,
                        cfg: RefineConfig = RefineConfig()) -> TileSeeds:
    """`extract_seeds_fast` without host syncs (fixed shapes; module docstring): the same seeds and counts,
    `local` (n, min(n_s, T²), 2)."""
    seeds_px = seed_mask(z, breast_mask.to(torch.bool), covered.to(torch.bool), cfg.seed_threshold)
    return tile_seeds_fixed(z, seeds_px, index, cfg.max_seeds_per_tile)

"""Results of TT-GPR and the pure helpers that the reference and the fast path share (SPEC §4).

Both `mcgenref_fast.reference.refine` and the fast `mcgenref_fast.refine.refine` return a `RefineResult`
and MUST draw their noise with `make_noise_canvas` and build seed maps / blend weights with `seed_dots` /
`blend_weight_map`, so that the two paths see bit-identical inputs and can be held to 1e-4 (SPEC §7).

Tile tensors: `TileTensors` is the torch view of a `tiling.TileGrid` (origins, normalised blend weights,
and the validity mask of each tile's pixels). `gather_tiles` / `fuse_tiles` are the plain slice loops the
reference uses; both are differentiable (explicit adjoints, linear cost), so autograd sees
`Z = Σ_q w_q z_q` and its tile windows as functions of z.

Padding convention (an interpretation; SPEC §4 does not say): a tile only leaves the image when the image
is smaller than the tile along that axis (the last tile is shifted back onto the edge). Pixels of a tile
outside the image are *padding*: the image and the noise are 0 there, their blend weight is 0, the blend
map W is 0 there (so x̂ stays 0, as the segmentor saw it for z0), and they are left out of every energy
term (so their gradient is 0 and their z stays z0). `TileTensors.valid` marks the non-padding pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mcgenref_fast.tiling import TileGrid


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class IterationDiagnostics:
    """What one outer iteration k did.

    `seeds_per_tile[q]`: number of seeds kept by active tile q (≤ n_s).
    `energy`: E(z) before inner step 1, then after each of the J steps (J + 1 values, evaluated in float64
    so that float32 summation noise does not blur the record); E depends on this iteration's surrogate y.
    `seeds_rc[q]`: (m_q, 2) int64 canvas px (row, col) of tile q's seeds, ranked (Z desc, raster asc);
    an addition to docs/interfaces.md so that the fast path can be compared "when both found the same seeds".
    """

    seeds_per_tile: list[int]
    energy: list[float]
    seeds_rc: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class RefineResult:
    """Output of TT-GPR on one canonical image (H, W) px.

    `logits`: the final fused canvas Z (float32, on the image's device); 0 where no active tile covers
    (use `probability()`, which is 0 there as SPEC §4 says). `z0_logits`: the fused initial logits
    Σ_q w_q z0_q. `covered`: pixels inside at least one active tile. `diagnostics`: one per outer iteration.
    """

    logits: torch.Tensor
    z0_logits: torch.Tensor
    covered: torch.Tensor
    diagnostics: list[IterationDiagnostics]

    def probability(self) -> torch.Tensor:
        """p = sigmoid(Z) on covered pixels, 0 elsewhere (H, W) float32."""
        return torch.where(self.covered, torch.sigmoid(self.logits), torch.zeros_like(self.logits))

    def mask(self, threshold: float = 0.5) -> torch.Tensor:
        """Bool (H, W) mask at the operating threshold on p (default 0.5)."""
        return self.probability() > threshold


# ------------------------------------------------------------------------------------- noise and maps
def make_noise_canvas(n_samples: int, height: int, width: int, seed: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """ε: (n_samples, H, W) float32 N(0, 1), drawn once on the CPU from `manual_seed(seed)`, then moved.

    Drawing on the CPU makes the noise independent of the device (SPEC §4 "Start").
    """
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((n_samples, height, width), generator=gen, dtype=torch.float32)
    return eps.to(device)


def _max_gaussian(seeds_px: torch.Tensor, tile_px: int, sigma_px: float, device: torch.device | str,
                  dtype: torch.dtype) -> torch.Tensor:
    """max_c exp(-|u - c|² / (2σ²)) over seeds c (tile-local px (row, col)), (T, T); 0 without seeds."""
    if seeds_px.numel() == 0:
        return torch.zeros((tile_px, tile_px), device=device, dtype=dtype)
    coords = torch.arange(tile_px, device=device, dtype=dtype)
    c = seeds_px.to(device=device, dtype=dtype)
    dy = coords[None, :, None] - c[:, 0, None, None]            # (m, T, 1)
    dx = coords[None, None, :] - c[:, 1, None, None]            # (m, 1, T)
    d2 = dy * dy + dx * dx                                       # (m, T, T)
    return torch.exp(-d2 / (2.0 * sigma_px * sigma_px)).amax(dim=0)


def seed_dots(seeds_px: torch.Tensor, tile_px: int, sigma_px: float = 1.0,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seed map S_q (T, T): Gaussian dots of σ = `sigma_px` px and peak 1 at the seeds, combined by max.

    `seeds_px`: (m, 2) tile-local (row, col) px; m = 0 gives S ≡ 0 (SPEC §3 and §4 step 1).
    """
    return _max_gaussian(seeds_px, tile_px, sigma_px, device, dtype)


def blend_weight_map(seeds_px: torch.Tensor, tile_px: int, rho_px: float, gamma: float = 2.0,
                     valid: torch.Tensor | None = None, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seed-consistent blend W (T, T) = min(1, γ · max_c exp(-|u - c|² / (2ρ²))), ρ in px (SPEC §4 step 2).

    W ≡ 0 without seeds, so x̂ = I_q exactly. `valid` (T, T) bool, when given, zeroes W on padding pixels
    (see the module docstring).
    """
    w = torch.clamp(gamma * _max_gaussian(seeds_px, tile_px, rho_px, device, dtype), max=1.0)
    if valid is not None:
        w = torch.where(valid.to(w.device), w, torch.zeros_like(w))
    return w


# ------------------------------------------------------------------------------------- tiles in torch
@dataclass(frozen=True, eq=False)
class TileTensors:
    """Torch view of a `TileGrid` on one device/dtype.

    `origins`: list of (y0, x0) px per active tile (raster order); `weights` (n, T, T) normalised blend
    weights; `valid` (n, T, T) bool, True on tile pixels inside the image.
    """

    image_shape: tuple[int, int]
    tile_px: int
    origins: list[tuple[int, int]]
    weights: torch.Tensor
    valid: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return len(self.origins)

    @staticmethod
    def from_grid(grid: TileGrid, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> "TileTensors":
        height, width = grid.image_shape
        tile = grid.tile_px
        origins = [(int(y0), int(x0)) for y0, x0 in grid.origins]
        valid = torch.zeros((len(origins), tile, tile), dtype=torch.bool)
        for q, (y0, x0) in enumerate(origins):
            valid[q, :min(tile, height - y0), :min(tile, width - x0)] = True
        weights = torch.from_numpy(np.ascontiguousarray(grid.weights, dtype=np.float32)).to(device, dtype)
        return TileTensors((height, width), tile, origins, weights, valid.to(device))

    def window(self, q: int) -> tuple[int, int, int, int]:
        """(y0, x0, hy, hx): tile q's origin and the extent (px) of its part inside the image."""
        y0, x0 = self.origins[q]
        return y0, x0, min(self.tile_px, self.image_shape[0] - y0), min(self.tile_px, self.image_shape[1] - x0)


def _gather(canvas: torch.Tensor, tiles: TileTensors) -> torch.Tensor:
    lead = canvas.shape[:-2]
    out = canvas.new_zeros((tiles.n_tiles, *lead, tiles.tile_px, tiles.tile_px))
    for q in range(tiles.n_tiles):
        y0, x0, hy, hx = tiles.window(q)
        out[q, ..., :hy, :hx] = canvas[..., y0:y0 + hy, x0:x0 + hx]
    return out


def _scatter_add(tile_batch: torch.Tensor, tiles: TileTensors) -> torch.Tensor:
    """Adjoint of `_gather`: canvas (H, W) = Σ_q tile_q placed at its origin (padding dropped)."""
    canvas = tile_batch.new_zeros(tiles.image_shape)
    for q in range(tiles.n_tiles):
        y0, x0, hy, hx = tiles.window(q)
        canvas[y0:y0 + hy, x0:x0 + hx] += tile_batch[q, :hy, :hx]
    return canvas


class _GatherTiles(torch.autograd.Function):
    """`gather_tiles` of an (H, W) canvas with an explicit adjoint (scatter-add), linear in n·T²."""

    @staticmethod
    def forward(ctx, canvas: torch.Tensor, tiles: TileTensors) -> torch.Tensor:  # type: ignore[override]
        ctx.tiles = tiles
        return _gather(canvas, tiles)

    @staticmethod
    def backward(ctx, grad_tiles: torch.Tensor):  # type: ignore[override]
        return _scatter_add(grad_tiles, ctx.tiles), None


def gather_tiles(canvas: torch.Tensor, tiles: TileTensors) -> torch.Tensor:
    """Canvas (..., H, W) → tile batch (n, ..., T, T), zeros on padding (plain slice loop).

    Differentiable for an (H, W) canvas (the adjoint adds each tile back at its origin).
    """
    if canvas.requires_grad and canvas.ndim == 2:
        return _GatherTiles.apply(canvas, tiles)
    return _gather(canvas, tiles)


class _FuseTiles(torch.autograd.Function):
    """Z = Σ_q w_q · z_q with an explicit adjoint: the gradient for z_q is w_q times tile q's window of
    the incoming gradient. (Plain autograd through slice-adds copies the whole canvas once per tile in
    the backward pass: O(n·H·W) instead of O(n·T²).) Checked by `torch.autograd.gradcheck` in
    tests/test_energy.py, like `_GatherTiles`."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tiles: TileTensors) -> torch.Tensor:  # type: ignore[override]
        ctx.tiles = tiles
        height, width = tiles.image_shape
        weights = tiles.weights.to(z.dtype)
        canvas = z.new_zeros((height, width))
        for q in range(tiles.n_tiles):
            y0, x0, hy, hx = tiles.window(q)
            canvas[y0:y0 + hy, x0:x0 + hx] += weights[q, :hy, :hx] * z[q, :hy, :hx]
        return canvas

    @staticmethod
    def backward(ctx, grad_canvas: torch.Tensor):  # type: ignore[override]
        tiles: TileTensors = ctx.tiles
        return tiles.weights.to(grad_canvas.dtype) * _gather(grad_canvas, tiles), None


def fuse_tiles(z: torch.Tensor, tiles: TileTensors) -> torch.Tensor:
    """Z (H, W) = Σ_q w_q · z_q placed at the origins, accumulated in tile order; 0 outside coverage.

    Differentiable in z. The products w_q·z_q are added in float32 in tile order, like `tiling.fuse`.
    """
    return _FuseTiles.apply(z, tiles)

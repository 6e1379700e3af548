"""TT-GPR, reference version: SPEC §4 written for clarity. It is the specification in code.

The fast path (`mcgenref_fast.refine.refine`) has the same signature, config and noise and must match this
within 1e-4 (SPEC §7). Here everything is a plain loop: over tiles, over samples, over Euler steps, and
the inner update takes ∇E from torch.autograd on `energy.energy`.

Stages (each a function, so that the fast path can be checked stage by stage on injected inputs):
  initial_logits      z0_q = clamp(f(I_q), −4, 4)                                     SPEC §4 "Start"
  extract_seeds       seeds from the fused canvas Z (mcgenref_fast.seeds)               step 1
  project_tile        n_samples Euler projections from t0 and the seed-consistent blend  step 2
  surrogate           y_q = mean_r sigmoid(f(x̂_r))                                       step 3
  inner_loop          J Jacobi gradient steps on E(z)                                     step 4
See docs/refine.md for the mapping and the interpretation decisions.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from mcgenref_fast import tiling
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.energy import energy
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.refine_types import (IterationDiagnostics, RefineResult, TileTensors, blend_weight_map,
                                        fuse_tiles, gather_tiles, make_noise_canvas, seed_dots)
from mcgenref_fast.seeds import extract_seeds

Segmentor = Callable[[torch.Tensor], torch.Tensor]            # (B,1,H,W) -> logits (B,1,H,W)
Generator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # ((B,2,H,W), t (B,)) -> (B,1,H,W)


# ------------------------------------------------------------------------------------------- stages
@torch.no_grad()
def initial_logits(i_tiles: torch.Tensor, segmentor: Segmentor, cfg: RefineConfig = RefineConfig()
                   ) -> torch.Tensor:
    """z0 (n, T, T): clamp(f(I_q), −c, c) tile by tile (c = `cfg.z_clamp` = 4)."""
    z0 = torch.empty_like(i_tiles)
    for q in range(i_tiles.shape[0]):
        logits = segmentor(i_tiles[q][None, None]).to(i_tiles.dtype)
        z0[q] = torch.clamp(logits[0, 0], -cfg.z_clamp, cfg.z_clamp)
    return z0


@torch.no_grad()
def project_tile(i_tile: torch.Tensor, eps_tile: torch.Tensor, seeds_px: torch.Tensor, generator: Generator,
                 cfg: RefineConfig = RefineConfig(), valid: torch.Tensor | None = None) -> torch.Tensor:
    """Seed-consistent projections x̂ (n_samples, T, T) of one tile (SPEC §4 step 2).

    `i_tile` (T, T); `eps_tile` (n_samples, T, T) the tile's window of the noise canvas; `seeds_px` (m, 2)
    tile-local (row, col) px. For each sample r: x ← (1 − t0)·ε_r + t0·I_q, then N Euler steps
    x ← x + Δ·v([x, S_q], t_n), t_n = t0 + n·Δ, Δ = (1 − t0)/N; then x̂ = max(W·x + (1 − W)·I_q, 0).
    With no seed W ≡ 0 and x̂ = I_q exactly (the generator still runs here; the fast path may skip it).
    """
    tile_px = i_tile.shape[-1]
    device, dtype = i_tile.device, i_tile.dtype
    s_map = seed_dots(seeds_px, tile_px, cfg.seed_sigma_px, device, dtype)
    w_map = blend_weight_map(seeds_px, tile_px, cfg.blend_rho_px, cfg.blend_gamma, valid, device, dtype)
    t0, n_steps = cfg.t0, cfg.euler_steps
    dt = (1.0 - t0) / n_steps if n_steps > 0 else 0.0
    x_hat = torch.empty_like(eps_tile)
    for r in range(eps_tile.shape[0]):
        x = (1.0 - t0) * eps_tile[r] + t0 * i_tile
        for n in range(n_steps):
            t_n = torch.full((1,), t0 + n * dt, device=device, dtype=torch.float32)
            v = generator(torch.stack([x, s_map])[None], t_n)     # input (1, 2, T, T) = cat[x, S_q]
            x = x + dt * v[0, 0].to(dtype)
        x_hat[r] = torch.clamp(w_map * x + (1.0 - w_map) * i_tile, min=0.0)
    return x_hat


@torch.no_grad()
def surrogate(x_hat: torch.Tensor, segmentor: Segmentor) -> torch.Tensor:
    """y_q (T, T) = mean over samples r of sigmoid(f(x̂_r)) (frozen segmentor; not clamped; step 3)."""
    total = torch.zeros_like(x_hat[0])
    for r in range(x_hat.shape[0]):
        total = total + torch.sigmoid(segmentor(x_hat[r][None, None])[0, 0].to(x_hat.dtype))
    return total / x_hat.shape[0]


def inner_loop(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, i_tiles: torch.Tensor,
               grid: tiling.TileGrid | TileTensors, cfg: RefineConfig = RefineConfig()
               ) -> tuple[torch.Tensor, list[float]]:
    """J Jacobi steps z ← z − η·∇E(z) on all tiles at once (SPEC §4 step 4); returns (z, energies).

    ∇E comes from torch.autograd on `energy.energy`, which recomputes Z = Σ_q w_q z_q from the current z
    at every step. `energies` holds J + 1 values of E (before step 1, then after each step), evaluated in
    float64 so that the record is not blurred by float32 summation.
    """
    tiles = grid if isinstance(grid, TileTensors) else TileTensors.from_grid(grid, z.device)

    def energy64(zz: torch.Tensor) -> float:
        with torch.no_grad():
            return float(energy(zz.double(), y.double(), z0.double(), i_tiles.double(), tiles, cfg))

    z = z.detach()
    energies = [energy64(z)]
    for _ in range(cfg.inner_steps):
        with torch.enable_grad():
            z_var = z.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(z_var, y, z0, i_tiles, tiles, cfg), z_var)
        z = z - cfg.eta * grad                      # out of place: every tile steps from the same state
        energies.append(energy64(z))
    return z, energies


# ------------------------------------------------------------------------------------------ refine
def _check_inputs(image: torch.Tensor, breast_mask: torch.Tensor) -> None:
    if image.ndim != 2:
        raise ConfigError(f"refine expects a canonical image of shape (H, W), got {tuple(image.shape)}")
    if tuple(breast_mask.shape) != tuple(image.shape):
        raise ConfigError(f"breast mask shape {tuple(breast_mask.shape)} differs from the image's "
                          f"{tuple(image.shape)}")
    if not image.is_floating_point():
        raise ConfigError(f"refine expects a floating-point image, got {image.dtype}")


def refine(image: torch.Tensor, breast_mask: torch.Tensor, segmentor: nn.Module, generator: nn.Module,
           cfg: RefineConfig = RefineConfig(), seed: int = 0, progress: bool = False) -> RefineResult:
    """TT-GPR on a canonical image (SPEC §4), reference version.

    `image`: (H, W) float32, I ≥ 0, canonical space; `breast_mask`: (H, W) bool; `segmentor`:
    (B,1,H,W) → logits (B,1,H,W); `generator`: ((B,2,H,W) = cat[x_t, S], t (B,)) → velocity (B,1,H,W).
    Both networks are put in eval mode and run without gradients, on the image's device. `seed` fixes
    the noise canvas ε (n_samples, H, W) (drawn once, on the CPU). `progress` shows a tqdm bar.
    """
    _check_inputs(image, breast_mask)
    device, dtype = image.device, image.dtype
    height, width = image.shape
    segmentor.eval()
    generator.eval()
    mask = breast_mask.to(device=device, dtype=torch.bool)

    grid = tiling.make_grid((height, width), mask.cpu().numpy().astype(np.uint8), cfg.tiles)
    tiles = TileTensors.from_grid(grid, device, dtype)
    covered = torch.from_numpy(grid.covered).to(device)
    i_tiles = gather_tiles(image, tiles)                                     # (n, T, T), 0 on padding
    eps_tiles = gather_tiles(make_noise_canvas(cfg.n_samples, height, width, seed, device).to(dtype),
                             tiles)                                          # (n, n_samples, T, T)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=tiles.n_tiles * (cfg.outer_iters + 1), desc="TT-GPR tiles", unit="tile")

    z0 = initial_logits(i_tiles, segmentor, cfg)
    if bar is not None:
        bar.update(tiles.n_tiles)
    z = z0.clone()
    diagnostics: list[IterationDiagnostics] = []
    for k in range(cfg.outer_iters):
        if bar is not None:
            bar.set_postfix(iteration=f"{k + 1}/{cfg.outer_iters}")
        z_canvas = fuse_tiles(z, tiles)
        seeds = extract_seeds(z_canvas, mask, covered, tiles.origins, cfg)   # tile-local px
        y = torch.empty_like(z)
        for q in range(tiles.n_tiles):
            x_hat = project_tile(i_tiles[q], eps_tiles[q], seeds[q], generator, cfg, tiles.valid[q])
            y[q] = surrogate(x_hat, segmentor)
            if bar is not None:
                bar.update(1)
        z, energies = inner_loop(z, y, z0, i_tiles, tiles, cfg)
        seeds_rc = [(s + torch.tensor(o, device=s.device)).cpu().numpy() for s, o in zip(seeds, tiles.origins)]
        diagnostics.append(IterationDiagnostics([int(s.shape[0]) for s in seeds], energies, seeds_rc))
    if bar is not None:
        bar.close()

    with torch.no_grad():
        return RefineResult(logits=fuse_tiles(z, tiles), z0_logits=fuse_tiles(z0, tiles), covered=covered,
                            diagnostics=diagnostics)

"""The TT-GPR energy E(z) of SPEC §4 step 4, in torch (so autograd can differentiate it), and its gradient.

All tile tensors are (n, T, T): logits `z`, surrogate `y`, initial logits `z0`, image tiles `I_tiles`.

  E(z) = Σ_q Σ_u BCEwithLogits(z_q(u), y_q(u))                    data
       + λ_ov   · ½ Σ_q Σ_u w_q(u) (z_q(u) − Z(u))²,  Z = Σ_q w_q z_q   overlap consistency
       + λ_edge · Σ_{pairs {u,v}} ω_uv sqrt((z_u − z_v)² + δ²)      edge-aware smoothness
       + λ_prox · ½ Σ_q Σ_u (z_q(u) − z0_q(u))²                        proximity to the start

Pairs are the unordered 4-neighbour pairs inside one tile, ω_uv = exp(−(I_u − I_v)² / (2σ_I²)).
Padding pixels (tile pixels outside the image, see `refine_types`) are left out of the data, edge and
prox terms (a pair counts only when both its pixels are in the image); their blend weight is 0, so they
drop out of E_ov too. Their gradient is therefore exactly 0.

In `energy`, Z is computed from z, so autograd differentiates E_ov through Z as well. Its gradient is
still w_q·(z_q − Z): the extra term −Σ_q' w_q'(z_q' − Z)·w_q vanishes because Σ_q' w_q' = 1 on covered
pixels (SPEC §4). `analytic_gradient` uses that closed form; the tests hold the two together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mcgenref_fast.config import RefineConfig
from mcgenref_fast.refine_types import TileTensors, fuse_tiles, gather_tiles


def edge_weights(i_tiles: torch.Tensor, sigma_i: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ω for horizontal pairs (n, T, T−1) (u = (r, c), v = (r, c+1)) and vertical pairs (n, T−1, T)."""
    d_h = i_tiles[..., :, 1:] - i_tiles[..., :, :-1]
    d_v = i_tiles[..., 1:, :] - i_tiles[..., :-1, :]
    two_s2 = 2.0 * sigma_i * sigma_i
    return torch.exp(-(d_h * d_h) / two_s2), torch.exp(-(d_v * d_v) / two_s2)


def pair_valid(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which horizontal / vertical pairs have both pixels inside the image."""
    return valid[..., :, 1:] & valid[..., :, :-1], valid[..., 1:, :] & valid[..., :-1, :]


def energy_terms(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, i_tiles: torch.Tensor,
                 tiles: TileTensors, cfg: RefineConfig = RefineConfig()) -> dict[str, torch.Tensor]:
    """The four unweighted terms of E as scalars: 'data', 'ov', 'edge', 'prox' (prox includes the ½)."""
    valid = tiles.valid
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    weights = tiles.weights.to(z.dtype)

    data = torch.where(valid, F.binary_cross_entropy_with_logits(z, y, reduction="none"), zero).sum()

    z_canvas = fuse_tiles(z, tiles)                 # Z as a function of z
    z_fused_tiles = gather_tiles(z_canvas, tiles)   # each tile's window of Z
    ov = 0.5 * (weights * (z - z_fused_tiles) ** 2).sum()

    omega_h, omega_v = edge_weights(i_tiles, cfg.edge_sigma_i)
    valid_h, valid_v = pair_valid(valid)
    dz_h = z[..., :, 1:] - z[..., :, :-1]
    dz_v = z[..., 1:, :] - z[..., :-1, :]
    delta2 = cfg.edge_delta * cfg.edge_delta
    edge = (torch.where(valid_h, omega_h * torch.sqrt(dz_h * dz_h + delta2), zero).sum()
            + torch.where(valid_v, omega_v * torch.sqrt(dz_v * dz_v + delta2), zero).sum())

    prox = 0.5 * torch.where(valid, (z - z0) ** 2, zero).sum()
    return {"data": data, "ov": ov, "edge": edge, "prox": prox}


def energy(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, i_tiles: torch.Tensor,
           tiles: TileTensors, cfg: RefineConfig = RefineConfig()) -> torch.Tensor:
    """E(z) (a scalar tensor, differentiable in z)."""
    t = energy_terms(z, y, z0, i_tiles, tiles, cfg)
    return t["data"] + cfg.lam_ov * t["ov"] + cfg.lam_edge * t["edge"] + cfg.lam_prox * t["prox"]


def edge_gradient(z: torch.Tensor, i_tiles: torch.Tensor, cfg: RefineConfig = RefineConfig(),
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """∇E_edge (n, T, T): at u, Σ_v ω_uv (z_u − z_v) / sqrt((z_u − z_v)² + δ²) over its in-tile 4-neighbours."""
    if valid is None:
        valid = torch.ones_like(z, dtype=torch.bool)
    omega_h, omega_v = edge_weights(i_tiles, cfg.edge_sigma_i)
    valid_h, valid_v = pair_valid(valid)
    delta2 = cfg.edge_delta * cfg.edge_delta
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    dz_h = z[..., :, 1:] - z[..., :, :-1]            # z_v − z_u, v right of u
    dz_v = z[..., 1:, :] - z[..., :-1, :]            # z_v − z_u, v below u
    r_h = torch.where(valid_h, omega_h * dz_h / torch.sqrt(dz_h * dz_h + delta2), zero)
    r_v = torch.where(valid_v, omega_v * dz_v / torch.sqrt(dz_v * dz_v + delta2), zero)
    grad = torch.zeros_like(z)
    grad[..., :, 1:] += r_h       # ∂/∂z_v of ω sqrt((z_v − z_u)² + δ²)
    grad[..., :, :-1] -= r_h      # ∂/∂z_u
    grad[..., 1:, :] += r_v
    grad[..., :-1, :] -= r_v
    return grad


def analytic_gradient(z: torch.Tensor, y: torch.Tensor, z_fused_tiles: torch.Tensor, w: torch.Tensor,
                      z0: torch.Tensor, i_tiles: torch.Tensor, cfg: RefineConfig = RefineConfig(),
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """SPEC §4: g = (p − y) + λ_ov·w·(z − Z) + λ_edge·∇E_edge + λ_prox·(z − z0), 0 on padding.

    `z_fused_tiles`: each tile's window of the current fused canvas Z (n, T, T); `w`: blend weights;
    `valid`: non-padding pixels (all True when None).
    """
    if valid is None:
        valid = torch.ones_like(z, dtype=torch.bool)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    g = (torch.where(valid, torch.sigmoid(z) - y, zero)
         + cfg.lam_ov * w.to(z.dtype) * (z - z_fused_tiles)
         + cfg.lam_edge * edge_gradient(z, i_tiles, cfg, valid)
         + cfg.lam_prox * torch.where(valid, z - z0, zero))
    return g

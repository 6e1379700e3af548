"""Kernel (c): one inner TT-GPR step for every tile (SPEC §4.4, §5), one pass over z, y, Z, z0, I (and w).

    g      = (σ(z) - y) + λ_ov·w·(z - Z) + λ_edge·∇E_edge + λ_prox·(z - z0)
    z_new  = z - η·g                                                           (a new buffer)
    ∇E_edge(u) = Σ_{v ∈ N4(u) inside the tile} ω_uv (z_u - z_v)/sqrt((z_u - z_v)² + δ²),
    ω_uv = exp(-(I_u - I_v)²/(2σ_I²))

Z is the fused canvas (H, W) of the current z, read at the tile's window (origin + local). Padding pixels
(a tile sticking out of an image smaller than the tile) follow `mcgenref_fast.energy`: they are left out
of every term (w = 0 there; an edge pair counts only when both pixels are in the image), so g = 0 and z
is copied unchanged. Optionally, in the same
pass, the energy at z per (tile, row block) — BCE + λ_ov·½w(z-Z)² + λ_edge Σ_{right, down pairs} ω·sqrt(d²+δ²)
+ λ_prox/2 (z-z0)² — summed per tile by the launcher in a fixed order (deterministic, no atomics).

One program per (tile, block of rows) over full rows (coalesced); the four neighbour reads of z and I hit
the cache lines the block itself (or its neighbour block) loads, so DRAM traffic is ~one read of each input
and one write. Twin: `mcgenref_fast.ops_torch.gpr_update`; dispatch: `mcgenref_fast.ops.gpr_update`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mcgenref_fast.kernels.launch import check_launch
from mcgenref_fast.ops_torch import TileIndex, check_gpr_args, gpr_params

_DEFAULTS = gpr_params()


@triton.jit
def _edge_term(z, img, z_ptr, img_ptr, offs, nmask, delta2, inv_two_sig2):
    """(ω·d/r, ω·r) of the pair (u, u + shift): neighbour values loaded at `offs` (masked by `nmask`)."""
    zn = tl.load(z_ptr + offs, mask=nmask, other=0.0)
    iv = tl.load(img_ptr + offs, mask=nmask, other=0.0)
    d = z - zn
    di = img - iv
    om = tl.exp(-(di * di) * inv_two_sig2)
    r2 = d * d + delta2
    inv_r = tl.rsqrt(r2)
    grad = tl.where(nmask, om * d * inv_r, 0.0)
    energy = tl.where(nmask, om * (r2 * inv_r), 0.0)
    return grad, energy


@triton.jit
def _gpr_update_kernel(z_ptr, y_ptr, canvas_ptr, z0_ptr, img_ptr, w_ptr, origins_ptr, out_ptr, energy_ptr,
                       height, width, tile, n_row_blocks,
                       eta, lam_ov, lam_edge, delta2, inv_two_sig2, lam_prox,
                       ENERGY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    r_in = rows < tile
    c_in = cols < tile
    mask = r_in[:, None] & c_in[None, :]
    offs = (rows * tile)[:, None] + cols[None, :]
    base = pid_t.to(tl.int64) * tile * tile
    zp = z_ptr + base
    ip = img_ptr + base
    z = tl.load(zp + offs, mask=mask, other=0.0)
    img = tl.load(ip + offs, mask=mask, other=0.0)
    y = tl.load(y_ptr + base + offs, mask=mask, other=0.0)
    z0 = tl.load(z0_ptr + base + offs, mask=mask, other=0.0)
    w = tl.load(w_ptr + base + offs, mask=mask, other=0.0)
    oy = tl.load(origins_ptr + 2 * pid_t)
    ox = tl.load(origins_ptr + 2 * pid_t + 1)
    cy = oy + rows
    cx = ox + cols
    y_in = cy < height
    x_in = cx < width
    valid = mask & y_in[:, None] & x_in[None, :]          # False on padding (outside the image)
    zc = tl.load(canvas_ptr + (cy.to(tl.int64) * width)[:, None] + cx[None, :], mask=valid, other=0.0)

    # 4-neighbour edge term; a pair counts when both pixels are inside the tile and the image
    up_ok = valid & (rows >= 1)[:, None]
    dn_ok = valid & ((rows < tile - 1) & (cy + 1 < height))[:, None]
    lf_ok = valid & (cols >= 1)[None, :]
    rt_ok = valid & ((cols < tile - 1) & (cx + 1 < width))[None, :]
    g_up, _e_up = _edge_term(z, img, zp, ip, offs - tile, up_ok, delta2, inv_two_sig2)
    g_dn, e_dn = _edge_term(z, img, zp, ip, offs + tile, dn_ok, delta2, inv_two_sig2)
    g_lf, _e_lf = _edge_term(z, img, zp, ip, offs - 1, lf_ok, delta2, inv_two_sig2)
    g_rt, e_rt = _edge_term(z, img, zp, ip, offs + 1, rt_ok, delta2, inv_two_sig2)
    grad_edge = (g_up + g_dn) + (g_lf + g_rt)

    p = 1.0 / (1.0 + tl.exp(-z))
    diff_ov = z - zc
    diff_prox = tl.where(valid, z - z0, 0.0)
    g = tl.where(valid, p - y, 0.0) + lam_ov * (w * diff_ov) + lam_edge * grad_edge + lam_prox * diff_prox
    tl.store(out_ptr + base + offs, z - eta * g, mask=mask)

    if ENERGY:
        bce = tl.where(valid, tl.maximum(z, 0.0) - z * y + tl.log(1.0 + tl.exp(-tl.abs(z))), 0.0)
        e = bce + (0.5 * lam_ov) * (w * diff_ov * diff_ov) + lam_edge * (e_dn + e_rt) \
            + (0.5 * lam_prox) * (diff_prox * diff_prox)
        e = tl.where(mask, e, 0.0)
        tl.store(energy_ptr + pid_t * n_row_blocks + pid_r, tl.sum(tl.sum(e, axis=1), axis=0))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def gpr_update(z: torch.Tensor, y: torch.Tensor, canvas: torch.Tensor, z0: torch.Tensor, image: torch.Tensor,
               index: TileIndex, *, eta: float = _DEFAULTS["eta"], lam_ov: float = _DEFAULTS["lam_ov"],
               lam_edge: float = _DEFAULTS["lam_edge"], edge_delta: float = _DEFAULTS["edge_delta"],
               edge_sigma_i: float = _DEFAULTS["edge_sigma_i"], lam_prox: float = _DEFAULTS["lam_prox"],
               return_energy: bool = False, block_r: int | None = None,
               num_warps: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `ops_torch.gpr_update` (same arguments and results). `block_r` (tile rows per program, a
    power of two) and `num_warps` override the launch shape for tuning (`bench/kernel_tuning.py`); the result
    does not depend on them."""
    check_gpr_args(z, y, canvas, z0, image, index)
    check_launch(block_r=block_r, num_warps=num_warps)
    n, tile = index.n_tiles, index.tile_px
    z, y, canvas, z0, image = (t.contiguous() for t in (z, y, canvas, z0, image))
    out = torch.empty_like(z)
    block_c = triton.next_power_of_2(tile)
    if block_r is not None:  # a tuning override, at most the whole tile
        block_r = min(block_r, block_c)
    elif _interpreting():  # few, large program instances: the interpreter pays per instance
        block_r = block_c
    else:  # ~4 elements per thread: ~80-95 registers (sm_90, T = 256), 3 blocks of 8 warps per SM
        block_r = max(1, min(block_c, 1024 // block_c))
    n_row_blocks = triton.cdiv(tile, block_r)
    energy_parts = torch.empty((n, n_row_blocks) if return_energy else (1,), dtype=torch.float32,
                               device=z.device)
    if n > 0:
        grid = (n, n_row_blocks)
        _gpr_update_kernel[grid](z, y, canvas, z0, image, index.weights, index.origins, out, energy_parts,
                                 index.height, index.width, tile, n_row_blocks,
                                 float(eta), float(lam_ov), float(lam_edge), float(edge_delta) ** 2,
                                 1.0 / (2.0 * float(edge_sigma_i) ** 2), float(lam_prox),
                                 ENERGY=bool(return_energy), BLOCK_R=block_r, BLOCK_C=block_c,
                                 num_warps=num_warps or max(1, min(8, block_r * block_c // 128)))
    if not return_energy:
        return out
    return out, energy_parts.sum(dim=1)

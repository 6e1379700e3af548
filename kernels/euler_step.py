"""Kernel (a): one Euler step of the projection, fused on the last step with the seed blend (SPEC §4.2).

    out = x + dt·v                                  (every step)
    out = max(W·out + (1 - W)·I, 0)                 (last step)
    W(u) = min(1, γ·exp(-min_c |u - c|² / (2ρ²)))  (from the tile's seeds, in the kernel; or a given map)

One program per (batch element, block of rows): x, v, out are (B, T, T) with B = S·n (samples folded in,
sample-major (S, n, T, T) or tile-major (n, S, T, T)), the tile image / W / seeds are indexed with
`(b // div) % n`. On padding (beyond the tile's `extent` inside the image) W = 0, as in
`refine_types.blend_weight_map`. Computing W from the seed list costs two
flops per pixel and seed (separable squared distances), cheaper than writing and re-reading a W map, and the
loop runs over the tile's own seed count only. Rows are contiguous: loads are coalesced along the columns.

Twin: `mcgenref_fast.ops_torch.euler_step`; dispatch: `mcgenref_fast.ops.euler_step`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mcgenref_fast.ops_torch import check_euler_args, euler_tiles

MODE_STEP, MODE_BLEND_MAP, MODE_BLEND_SEEDS = 0, 1, 2


@triton.jit
def _euler_step_kernel(x_ptr, v_ptr, out_ptr, w_ptr, img_ptr, seeds_ptr, counts_ptr, extent_ptr,
                       dt, n_tiles, tile_div, tile, max_seeds, inv_two_rho2, gamma,
                       MODE: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < tile)[:, None] & (cols < tile)[None, :]
    offs = rows[:, None] * tile + cols[None, :]
    tt = tile * tile
    base = pid_b.to(tl.int64) * tt
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + base + offs, mask=mask, other=0.0)
    x = x + dt * v
    if MODE != 0:
        q = (pid_b // tile_div) % n_tiles
        tbase = q.to(tl.int64) * tt
        img = tl.load(img_ptr + tbase + offs, mask=mask, other=0.0)
        if MODE == 1:
            w = tl.load(w_ptr + tbase + offs, mask=mask, other=0.0)
        else:
            count = tl.load(counts_ptr + q)
            rf = rows.to(tl.float32)
            cf = cols.to(tl.float32)
            d2 = tl.full([BLOCK_R, BLOCK_C], float("inf"), tl.float32)
            sbase = q.to(tl.int64) * max_seeds * 2
            c = 0
            while c < count:  # over this tile's own seeds only
                sy = tl.load(seeds_ptr + sbase + 2 * c)
                sx = tl.load(seeds_ptr + sbase + 2 * c + 1)
                dy = rf - sy
                dx = cf - sx
                d2 = tl.minimum(d2, (dy * dy)[:, None] + (dx * dx)[None, :])
                c += 1
            w = tl.minimum(gamma * tl.exp(-d2 * inv_two_rho2), 1.0)
            ext_r = tl.load(extent_ptr + 2 * q)
            ext_c = tl.load(extent_ptr + 2 * q + 1)
            w = tl.where((rows < ext_r)[:, None] & (cols < ext_c)[None, :], w, 0.0)  # 0 on padding
        x = w * x + (1.0 - w) * img
        x = tl.maximum(x, 0.0)
    tl.store(out_ptr + base + offs, x, mask=mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float, blend_w: torch.Tensor | None = None,
               image: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
               seed_counts: torch.Tensor | None = None, rho_px: float | None = None,
               gamma: float | None = None, last: bool = False, extent: torch.Tensor | None = None,
               samples_first: bool = True) -> torch.Tensor:
    """Triton twin of `ops_torch.euler_step` (same arguments and result); a new tensor."""
    check_euler_args(x, v, dt, blend_w, image, seeds, seed_counts, rho_px, gamma, last, extent, samples_first)
    tile = x.shape[-1]
    n = euler_tiles(x, samples_first)
    tile_div = 1 if (x.dim() == 3 or samples_first) else int(x.shape[1])  # batch b → tile (b // div) % n
    batch = x.numel() // (tile * tile)
    x = x.contiguous()
    v = v.contiguous()
    out = torch.empty_like(x)
    if batch == 0:
        return out
    mode = MODE_STEP
    dummy = x  # never read: its pointer fills the unused slots
    w_arg = img_arg = seeds_arg = counts_arg = extent_arg = dummy
    max_seeds, inv_two_rho2, gam = 1, 0.0, 0.0
    if last:
        img_arg = image.contiguous()
        if blend_w is not None:
            mode, w_arg = MODE_BLEND_MAP, blend_w.contiguous()
        else:
            mode = MODE_BLEND_SEEDS
            seeds_arg = seeds.to(torch.float32).contiguous()
            counts_arg = torch.clamp(seed_counts.to(torch.int32), 0, seeds.shape[1]).contiguous()
            max_seeds = max(1, int(seeds.shape[1]))
            if extent is None:
                extent_arg = torch.full((n, 2), tile, dtype=torch.int32, device=x.device)
            else:
                extent_arg = extent.to(torch.int32).contiguous()
            inv_two_rho2, gam = 1.0 / (2.0 * float(rho_px) ** 2), float(gamma)
            if seeds.shape[1] == 0:
                seeds_arg = torch.zeros((n, 1, 2), dtype=torch.float32, device=x.device)
    block_c = triton.next_power_of_2(tile)
    if _interpreting():  # few, large program instances: the interpreter pays per instance
        block_r = triton.next_power_of_2(tile)
    else:  # 8 elements per thread: 64 registers with the seed loop (sm_90, T = 256)
        block_r = max(1, min(triton.next_power_of_2(tile), 2048 // block_c))
    grid = (batch, triton.cdiv(tile, block_r))
    _euler_step_kernel[grid](x, v, out, w_arg, img_arg, seeds_arg, counts_arg, extent_arg,
                             float(dt), n, tile_div, tile, max_seeds, inv_two_rho2, gam,
                             MODE=mode, BLOCK_R=block_r, BLOCK_C=block_c,
                             num_warps=max(1, min(8, block_r * block_c // 256)))
    return out

"""Kernel (b): fusion of a tile batch into the canvas, Z = Σ_q w_q·z_q (SPEC §4 "Tiles", §5), by gathering.

Each canvas pixel (y, x) reads from the tiles covering it, at most 3 per axis (with O ≤ T/2 two regular
tiles, plus the last one shifted back onto the edge). Along an axis with origins o_0..o_{m-1} and stride
s = T - O, the covering grid indices are among floor(y/s) - 1 .. floor(y/s) + 1 (regular tiles g cover y iff
g ∈ {⌊y/s⌋-1, ⌊y/s⌋}; the last tile, when it covers y, has y ≥ o_{m-1} > (m-2)s, so m-1 ≤ ⌊y/s⌋+1, and
y < o_{m-1} + T ≤ (m-1)s + 2s, so m-1 ≥ ⌊y/s⌋-1); each candidate is kept only when it exists, contains y
(o_g ≤ y < o_g + T) and is active (`tile_map[gy, gx] ≥ 0`).

Deterministic, no atomics: the 3×3 candidates are visited in (gy, gx) raster order, which is the active
tiles' index order (a candidate row / column covering nothing in the block is skipped: with O ≪ T most
blocks evaluate one or two candidates, not nine), and each pixel accumulates `0 + w·t + w·t ...` in
float32 — the C++ tiler's arithmetic.
The launch disables FMA contraction (`enable_fp_fusion=False`) so the products round like the C++ loop
(built with -ffp-contract=off): the canvas equals `tiling.fuse` bit for bit.

Grid: (row blocks, column blocks, samples). Tiles may carry a leading sample dimension (S, n, T, T) → (S, H, W).
Twin: `mcgenref_fast.ops_torch.fuse_tiles`; dispatch: `mcgenref_fast.ops.fuse_tiles`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mcgenref_fast.kernels.launch import check_launch
from mcgenref_fast.ops_torch import TileIndex, check_fuse_args


@triton.jit
def _fuse_tiles_kernel(tiles_ptr, w_ptr, out_ptr, axis_y_ptr, axis_x_ptr, tile_map_ptr,
                       height, width, tile, stride, ny, nx, n_tiles,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_s = tl.program_id(2)
    ys = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    xs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    in_y = ys < height
    in_x = xs < width
    tt = tile * tile
    tiles_base = tiles_ptr + pid_s.to(tl.int64) * n_tiles * tt
    gy0 = ys // stride - 1
    gx0 = xs // stride - 1
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for ky in tl.static_range(3):
        gy = gy0 + ky
        vy = in_y & (gy >= 0) & (gy < ny)
        oy = tl.load(axis_y_ptr + gy, mask=vy, other=0)
        vy = vy & (oy <= ys) & (ys < oy + tile)
        ly = ys - oy
        if tl.max(vy.to(tl.int32), axis=0) > 0:  # skip a candidate row that covers no row of the block
            for kx in tl.static_range(3):
                gx = gx0 + kx
                vx = in_x & (gx >= 0) & (gx < nx)
                ox = tl.load(axis_x_ptr + gx, mask=vx, other=0)
                vx = vx & (ox <= xs) & (xs < ox + tile)
                lx = xs - ox
                if tl.max(vx.to(tl.int32), axis=0) > 0:
                    m = vy[:, None] & vx[None, :]
                    q = tl.load(tile_map_ptr + (gy * nx)[:, None] + gx[None, :], mask=m, other=-1)
                    m = m & (q >= 0)
                    off = q.to(tl.int64) * tt + (ly * tile)[:, None] + lx[None, :]
                    wq = tl.load(w_ptr + off, mask=m, other=0.0)
                    zq = tl.load(tiles_base + off, mask=m, other=0.0)
                    acc = acc + wq * zq
    out_off = pid_s.to(tl.int64) * height * width + (ys * width)[:, None] + xs[None, :]
    tl.store(out_ptr + out_off, acc, mask=in_y[:, None] & in_x[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def fuse_tiles(tiles: torch.Tensor, index: TileIndex, *, block_r: int | None = None, block_c: int | None = None,
               num_warps: int | None = None) -> torch.Tensor:
    """Triton twin of `ops_torch.fuse_tiles`: (n, T, T) → (H, W), or (S, n, T, T) → (S, H, W); a new tensor.
    `block_r` × `block_c` canvas pixels per program (powers of two) and `num_warps` override the launch shape
    for tuning (`bench/kernel_tuning.py`); the result does not depend on them."""
    check_launch(block_r=block_r, block_c=block_c, num_warps=num_warps)
    check_fuse_args(tiles, index)
    lead = tuple(tiles.shape[:-3])
    samples = 1
    for d in lead:
        samples *= d
    h, w = index.height, index.width
    out = torch.empty((*lead, h, w), dtype=torch.float32, device=tiles.device)
    if samples == 0:
        return out
    if index.n_tiles == 0:
        return out.zero_()
    tiles = tiles.contiguous()
    if _interpreting():  # few, large program instances: the interpreter pays per instance
        default_r, default_c = min(triton.next_power_of_2(h), 128), min(triton.next_power_of_2(w), 128)
        default_warps = 4
    else:
        default_r, default_c, default_warps = 4, 128, 4  # a warp per 128-float row segment; ~40 registers
    block_r, block_c, num_warps = block_r or default_r, block_c or default_c, num_warps or default_warps
    grid = (triton.cdiv(h, block_r), triton.cdiv(w, block_c), samples)
    _fuse_tiles_kernel[grid](tiles, index.weights, out, index.axis_y, index.axis_x, index.tile_map,
                             h, w, index.tile_px, index.stride_px, int(index.axis_y.shape[0]),
                             int(index.axis_x.shape[0]), index.n_tiles,
                             BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps, enable_fp_fusion=False)
    return out

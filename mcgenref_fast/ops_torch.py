"""Torch twins of the Triton kernels (SPEC §4, §5): the reference the kernels are tested against, and the
fast path on a machine without a GPU (fused, vectorised torch, no Python loop over tiles or pixels; the
fusion and gather run the C++ tiler on the CPU, which does the same arithmetic, else pure torch).

Three operations, the same signatures as the launchers in `mcgenref_fast.kernels` (dispatch: `ops.py`):

- `euler_step`  one Euler step `x + dt·v` of the projection; on the last step fused with the seed-consistent
  blend `x̂ = W·x + (1 - W)·I` and the clip `max(x̂, 0)` (SPEC §4.2). `W` is given (`blend_w`) or built
  from the tiles' seed lists (`seeds`, `seed_counts`), like the kernel does on the fly.
- `fuse_tiles`  canvas `Z = Σ_q w_q·z_q` (SPEC §4 "Tiles"), accumulated per pixel in tile order, the C++
  tiler's order (bit-identical to `tiling.fuse` on the CPU).
- `gpr_update`  one inner step of TT-GPR (SPEC §4.4): the analytic gradient `g` and `z - η·g`, optionally
  the energy `E` at `z` per tile. Padding pixels follow `mcgenref_fast.energy` (left out of E: g = 0).
  On the CPU it runs the C++ extension's fused one-pass update (`_tiler.gpr_update`), `gpr_update_torch`
  (the torch twin) elsewhere.

Tile batches are float32 `(n, T, T)`, C-contiguous; samples may be folded into a leading batch dimension
`(S, n, T, T)` where noted. `TileIndex` is the device-side description of a `tiling.TileGrid`.
"""
from __future__ import annotations

import functools
import math
import os
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mcgenref_fast import tiling_numpy
from mcgenref_fast.net_exec import upload
from mcgenref_fast.config import RefineConfig

if TYPE_CHECKING:  # pragma: no cover
    from mcgenref_fast.tiling import TileGrid

__all__ = [
    "TileIndex", "blend_map", "edge_weights", "euler_step", "euler_tiles", "fuse_tiles", "gather_tiles",
    "gpr_update", "gpr_update_torch", "gpr_params", "seed_blend_maps", "seed_distance2", "seed_distance2_fixed",
    "fixed_shape_seeds", "check_euler_args", "check_fuse_args", "check_gpr_args",
]


# --------------------------------------------------------------------------------------------------------
# The tile grid on a device
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TileIndex:
    """A `TileGrid` as tensors on one device, what the fusion and the update read.

    `origins` int32 (n, 2) [y, x] of the active tiles (raster order); `axis_y` (ny,) / `axis_x` (nx,) int32
    origins of every grid row / column; `tile_map` int32 (ny, nx): active tile index at grid (row, col), -1
    where inactive; `weights` float32 (n, T, T) normalised blend weights (0 outside the image).
    """

    height: int
    width: int
    tile_px: int
    overlap_px: int
    origins: torch.Tensor
    axis_y: torch.Tensor
    axis_x: torch.Tensor
    tile_map: torch.Tensor
    weights: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return int(self.origins.shape[0])

    @property
    def stride_px(self) -> int:
        return self.tile_px - self.overlap_px

    @property
    def device(self) -> torch.device:
        return self.weights.device

    @classmethod
    def from_grid(cls, grid: "TileGrid", device: torch.device | str | None = None) -> "TileIndex":
        """Tensors of `grid` on `device` (default CPU)."""
        height, width = (int(s) for s in grid.image_shape)
        tile, overlap = int(grid.tile_px), int(grid.overlap_px)
        oy = np.asarray(tiling_numpy.axis_origins(height, tile, overlap), dtype=np.int64)
        ox = np.asarray(tiling_numpy.axis_origins(width, tile, overlap), dtype=np.int64)
        origins = np.asarray(grid.origins, dtype=np.int64).reshape(-1, 2)
        grid_rc = np.asarray(grid.grid_rc, dtype=np.int64).reshape(-1, 2)
        n = origins.shape[0]
        if grid_rc.shape[0] != n or (n and (not np.array_equal(oy[grid_rc[:, 0]], origins[:, 0])
                                            or not np.array_equal(ox[grid_rc[:, 1]], origins[:, 1]))):
            raise ValueError("grid.origins disagree with grid.grid_rc and the axis origins of the grid")
        if n > 1 and not np.all(np.diff(grid_rc[:, 0] * len(ox) + grid_rc[:, 1]) > 0):
            raise ValueError("grid tiles must be in raster order (the C++ tiler's order)")
        tile_map = np.full((len(oy), len(ox)), -1, dtype=np.int64)
        tile_map[grid_rc[:, 0], grid_rc[:, 1]] = np.arange(n)
        weights = np.asarray(grid.weights, dtype=np.float32)
        if weights.shape != (n, tile, tile):
            raise ValueError(f"grid.weights has shape {weights.shape}, expected {(n, tile, tile)}")

        def i32(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a.astype(np.int32)).to(device)

        return cls(height, width, tile, overlap, i32(origins), i32(oy), i32(ox), i32(tile_map),
                   torch.as_tensor(weights).to(device).contiguous())

    def to(self, device: torch.device | str) -> "TileIndex":
        return TileIndex(self.height, self.width, self.tile_px, self.overlap_px,
                         *(t.to(device) for t in (self.origins, self.axis_y, self.axis_x, self.tile_map,
                                                   self.weights)))

    @cached_property
    def extent(self) -> torch.Tensor:
        """int32 (n, 2): rows, cols of each tile inside the image (T, T unless the image is smaller)."""
        size = torch.tensor([self.height, self.width], dtype=torch.int32, device=self.device)
        return torch.clamp(size - self.origins, max=self.tile_px).to(torch.int32)

    @property
    def has_padding(self) -> bool:
        """Whether some tile sticks out of the image (only when the image is smaller than a tile)."""
        return self.n_tiles > 0 and (self.height < self.tile_px or self.width < self.tile_px)

    @cached_property
    def origins_np(self) -> np.ndarray:
        """int64 (n, 2) numpy copy of `origins` (for the C++ tiler)."""
        return np.ascontiguousarray(self.origins.cpu().numpy(), dtype=np.int64)

    @cached_property
    def valid(self) -> torch.Tensor:
        """bool (n, T, T): tile pixels inside the image (the rest is padding, see `gpr_update`)."""
        return (self.canvas_index < self.height * self.width).reshape(self.n_tiles, self.tile_px, self.tile_px)

    @cached_property
    def canvas_index(self) -> torch.Tensor:
        """int64 (n·T·T,): flat canvas index of every tile pixel, `H·W` (a spare slot) outside the image."""
        tile, h, w = self.tile_px, self.height, self.width
        ar = torch.arange(tile, device=self.device, dtype=torch.int64)
        rows = self.origins[:, 0, None].to(torch.int64) + ar          # (n, T)
        cols = self.origins[:, 1, None].to(torch.int64) + ar
        inside = (rows < h)[:, :, None] & (cols < w)[:, None, :]
        idx = rows[:, :, None] * w + cols[:, None, :]
        return torch.where(inside, idx, torch.full_like(idx, h * w)).reshape(-1)


# --------------------------------------------------------------------------------------------------------
# Argument checks (shared with the launchers): ValueError saying what was expected
# --------------------------------------------------------------------------------------------------------
def _check_tensor(name: str, t: object, *, ndim: int | tuple[int, ...] | None = None,
                  dtype: torch.dtype | tuple[torch.dtype, ...] | None = torch.float32,
                  device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in ndims:
            raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape "
                             f"{tuple(t.shape)}")
    if dtype is not None:
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else dtype
        if t.dtype not in dtypes:
            raise ValueError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs on one device)")
    return t


def _check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def euler_tiles(x: torch.Tensor, samples_first: bool = True) -> int:
    """Number of tiles n in an Euler batch x: (n, T, T), (S, n, T, T) (samples first) or (n, S, T, T)."""
    return int(x.shape[-3] if (x.dim() == 3 or samples_first) else x.shape[0])


def check_euler_args(x, v, dt, blend_w=None, image=None, seeds=None, seed_counts=None,
                     rho_px=None, gamma=None, last=False, extent=None, samples_first=True) -> None:
    """Validate `euler_step` arguments (see there); raises ValueError."""
    x = _check_tensor("x", x, ndim=(3, 4))
    dev = x.device
    tile = x.shape[-1]
    if x.shape[-2] != tile:
        raise ValueError(f"x must be square tiles (n, T, T), (S, n, T, T) or (n, S, T, T), got shape "
                         f"{tuple(x.shape)}")
    _check_tensor("v", v, device=dev)
    _check_shape("v", v, tuple(x.shape))
    if not isinstance(dt, (int, float)) or isinstance(dt, bool) or not math.isfinite(dt):
        raise ValueError(f"dt must be a finite Python float, got {dt!r}")
    if not last:
        if any(a is not None for a in (blend_w, image, seeds, seed_counts, extent)):
            raise ValueError("blend_w / image / seeds / extent belong to the last step only: pass last=True")
        return
    n = euler_tiles(x, samples_first)
    if image is None:
        raise ValueError("the last Euler step needs the tile image `image` (n, T, T) for the seed blend")
    _check_tensor("image", image, ndim=3, device=dev)
    _check_shape("image", image, (n, tile, tile))
    if (blend_w is None) == (seeds is None):
        raise ValueError("the last Euler step needs exactly one of blend_w (n, T, T) or seeds (n, n_s, 2) "
                         "with seed_counts (n,)")
    if blend_w is not None:
        _check_tensor("blend_w", blend_w, ndim=3, device=dev)
        _check_shape("blend_w", blend_w, (n, tile, tile))
        if seed_counts is not None or extent is not None:
            raise ValueError("seed_counts / extent go with seeds, not with blend_w (zero W on padding yourself)")
        return
    _check_tensor("seeds", seeds, ndim=3, dtype=(torch.float32, torch.int32, torch.int64), device=dev)
    if seeds.shape[0] != n or seeds.shape[2] != 2:
        raise ValueError(f"seeds must have shape (n, n_s, 2) = ({n}, n_s, 2) (tile-local row, col), got "
                         f"{tuple(seeds.shape)}")
    _check_tensor("seed_counts", seed_counts, ndim=1, dtype=(torch.int32, torch.int64), device=dev)
    _check_shape("seed_counts", seed_counts, (n,))
    if rho_px is None or gamma is None or not rho_px > 0 or not gamma >= 0:
        raise ValueError(f"seeds need rho_px > 0 and gamma >= 0, got rho_px={rho_px!r}, gamma={gamma!r}")
    if extent is not None:
        _check_tensor("extent", extent, ndim=2, dtype=(torch.int32, torch.int64), device=dev)
        _check_shape("extent", extent, (n, 2))


def check_fuse_args(tiles, index: TileIndex) -> None:
    """Validate `fuse_tiles` arguments; raises ValueError."""
    if not isinstance(index, TileIndex):
        raise ValueError(f"index must be an ops_torch.TileIndex, got {type(index).__name__}")
    tiles = _check_tensor("tiles", tiles, ndim=(3, 4), device=index.device)
    expected = (index.n_tiles, index.tile_px, index.tile_px)
    if tuple(tiles.shape[-3:]) != expected:
        raise ValueError(f"tiles must have shape {expected} or (S, *{expected}), got {tuple(tiles.shape)}")


def check_gpr_args(z, y, canvas, z0, image, index: TileIndex) -> None:
    """Validate `gpr_update` arguments; raises ValueError."""
    if not isinstance(index, TileIndex):
        raise ValueError(f"index must be an ops_torch.TileIndex, got {type(index).__name__}")
    dev = index.device
    expected = (index.n_tiles, index.tile_px, index.tile_px)
    for name, t in (("z", z), ("y", y), ("z0", z0), ("image", image)):
        _check_tensor(name, t, ndim=3, device=dev)
        _check_shape(name, t, expected)
    _check_tensor("canvas", canvas, ndim=2, device=dev)
    _check_shape("canvas", canvas, (index.height, index.width))


# --------------------------------------------------------------------------------------------------------
# (a) Euler step + seed blend
# --------------------------------------------------------------------------------------------------------
def blend_map(seeds: torch.Tensor, seed_counts: torch.Tensor, tile_px: int, rho_px: float,
              gamma: float, extent: torch.Tensor | None = None) -> torch.Tensor:
    """W (n, T, T) = min(1, γ·max_c exp(-|u - c|²/(2ρ²))) over the first `seed_counts[q]` seeds of tile q.

    `seeds` (n, n_s, 2): tile-local (row, col) px. Evaluated as `exp(-min_c |u - c|²/(2ρ²))` (exp is
    monotone), like the kernel; a tile without seeds has W ≡ 0. `extent` (n, 2) (rows, cols inside the
    image, `TileIndex.extent`): W = 0 beyond, on padding (`refine_types.blend_weight_map`'s convention).
    """
    n, n_s = seeds.shape[0], seeds.shape[1]
    dev = seeds.device
    w = torch.zeros((n, tile_px, tile_px), dtype=torch.float32, device=dev)
    if n == 0 or n_s == 0:
        return w
    # Tiles sorted by seed count (descending): those with more than c seeds are a prefix, so slot c only
    # touches them (work ∝ the number of seeds, not n·max count), in place on contiguous views.
    counts = seed_counts.to("cpu", torch.int64).clamp(0, n_s)
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    n_with = [sum(1 for k in sorted_counts if k > c) for c in range(sorted_counts[0])]
    if not n_with:
        return w
    m0 = n_with[0]
    order_dev = order[:m0].to(dev)
    s = seeds.index_select(0, order_dev).to(torch.float32)                                   # (m0, n_s, 2)
    ar = torch.arange(tile_px, device=dev, dtype=torch.float32)
    dy2 = (ar - s[:, :, 0, None]) ** 2                                                       # (m0, n_s, T)
    dx2 = (ar - s[:, :, 1, None]) ** 2
    d2 = dy2[:, 0, :, None] + dx2[:, 0, None, :]                                             # (m0, T, T)
    for c in range(1, len(n_with)):  # over seed slots (<= n_s), each vectorised over tiles and pixels
        m = n_with[c]
        head = d2[:m]
        torch.minimum(head, dy2[:m, c, :, None] + dx2[:m, c, None, :], out=head)
    inv_two_rho2 = 1.0 / (2.0 * float(rho_px) ** 2)
    d2.mul_(-inv_two_rho2).exp_().mul_(float(gamma)).clamp_(max=1.0)
    w.index_copy_(0, order_dev, d2)
    if extent is not None and int(extent.min()) < tile_px:
        ext = extent.to(device=dev, dtype=torch.int64)
        ar_i = torch.arange(tile_px, device=dev)
        inside = (ar_i[None, :, None] < ext[:, 0, None, None]) & (ar_i[None, None, :] < ext[:, 1, None, None])
        w.mul_(inside)
    return w


def seed_distance2(local: torch.Tensor, counts: torch.Tensor, tile_px: int) -> torch.Tensor:
    """d² (c, T, T) float32: squared distance from each pixel to the nearest of the first `counts[q]` seeds of
    tile q (`local` (c, m, 2) tile-local (row, col) px, integers), +inf for a tile without seeds. Integer
    coordinates make every d² exact in float32 (`seed_distance2_fixed` computes it, on any device)."""
    return seed_distance2_fixed(local, counts, tile_px)


SEEDS_ENV_VAR = "MCGENREF_SEEDS"
_SEEDS_CHOICES = ("auto", "fixed", "compact")


def fixed_shape_seeds(device: torch.device | str, fixed_shape: bool | None = None) -> bool:
    """Whether the seed stages (`seeds_fast.extract_seeds_fast`, `seed_blend_maps`) take their fixed-shape,
    host-sync-free route (issue 9): `fixed_shape` when given, else environment variable `MCGENREF_SEEDS` =
    `auto` (default: on CUDA devices) | `fixed` (always; tests force it on the CPU) | `compact` (never: the
    compact seeds and, on the CPU, the C++ seed maps). Read at every call. Both routes give the same seeds
    and the same maps, bit for bit."""
    if fixed_shape is not None:
        return bool(fixed_shape)
    choice = os.environ.get(SEEDS_ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _SEEDS_CHOICES:
        raise ValueError(f"{SEEDS_ENV_VAR} must be one of {', '.join(_SEEDS_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return torch.device(device).type == "cuda"
    return choice == "fixed"


def seed_distance2_fixed(local: torch.Tensor, counts: torch.Tensor, tile_px: int, *,
                         host_plan: bool | None = None) -> torch.Tensor:
    """`seed_distance2` without a host sync: d² (c, T, T) float32 to the nearest of tile q's first
    `counts[q]` seeds (+inf without seeds), the same exact integers in float32, hence identical values.

    One fused step per seed slot over all tiles, the slots at or past a tile's count masked to +inf (on the
    (c, T) row / column terms, so the min ignores them). The number of slots: `local.shape[1]` when
    `counts` is on `local`'s device (no sync), else the largest host count (free); with host counts in
    non-increasing order (how `refine.project_and_surrogate` orders its chunks) slot s only touches the
    tiles that have more than s seeds, a prefix. Host counts go up through pinned memory (non_blocking).
    `host_plan` (None: whether `counts` is on the CPU) says whether to plan from the counts on the host;
    False takes the device route (all `local.shape[1]` slots, mask only) even on the CPU (tests).
    """
    c, width = int(local.shape[0]), int(local.shape[1])
    device = local.device
    d2 = torch.full((c, tile_px, tile_px), float("inf"), dtype=torch.float32, device=device)
    if c == 0 or width == 0:
        return d2
    rows = [c] * width                                  # tiles visited per slot (a prefix of the c tiles)
    if host_plan is None:
        host_plan = counts.device.type == "cpu"
    if host_plan:
        host = counts.to(torch.int64).clamp(0, width)
        n_slots = int(host.max())
        if bool((host[1:] <= host[:-1]).all()):        # non-increasing: slot s touches a prefix only
            rows = [int((host > s).sum()) for s in range(n_slots)]
        rows = rows[:n_slots]
    counts_dev = upload(counts, device).to(torch.int64)
    seeds = local.to(torch.float32)
    coords = torch.arange(tile_px, dtype=torch.float32, device=device)
    slots = torch.arange(width, device=device)
    in_use = slots[None, :] < counts_dev[:, None]                                          # (c, width)
    tmp = torch.empty_like(d2)
    for s, k in enumerate(rows):
        dy = coords[None, :] - seeds[:k, s, 0, None]                                      # (k, T)
        dx = coords[None, :] - seeds[:k, s, 1, None]
        dy2 = (dy * dy).masked_fill_(~in_use[:k, s, None], float("inf"))                 # +inf: not a seed
        torch.add(dy2[:, :, None], (dx * dx)[:, None, :], out=tmp[:k])
        torch.minimum(d2[:k], tmp[:k], out=d2[:k])
    return d2


def seed_blend_maps(local: torch.Tensor, counts: torch.Tensor, tile_px: int, sigma_px: float, rho_px: float,
                    gamma: float, valid: torch.Tensor | None = None, fixed_shape: bool | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed dots S = exp(−d²/(2σ²)) and blend maps W = min(1, γ·exp(−d²/(2ρ²))) (c, T, T) float32, d² the
    squared distance to the nearest of tile q's first `counts[q]` seeds (`seed_distance2`); W = 0 where
    `valid` (c, T, T) is False; S = W = 0 for a tile without seeds. The ops of the reference's `seed_dots` /
    `blend_weight_map` (`exp(-d2 / c)`, `clamp(γ·…, max=1)`).

    On the CPU (C++ extension built, integer seeds inside their tiles) d² is an integer in 0..2(T−1)², so
    both maps are looked up in tables made once per (T, σ, ρ, γ) with those same torch ops on every d² value
    (`_seed_map_tables`), and the C++ `seed_maps` fills them: the same floats, without evaluating
    2·c·T² exps (torch's exp takes a slow path for arguments below −87, most of S's pixels). Elsewhere
    `seed_distance2` and the torch ops. With `fixed_shape` (None: `fixed_shape_seeds(local.device)`, i.e. on
    CUDA) `seed_distance2_fixed` and the torch ops: no host sync, the same S and W.
    """
    c = int(local.shape[0])
    if fixed_shape_seeds(local.device, fixed_shape):
        d2 = seed_distance2_fixed(local, counts, tile_px)
        return _seed_maps_from_d2(d2, sigma_px, rho_px, gamma, valid)
    on_cpu = local.device.type == "cpu" and (valid is None or valid.device.type == "cpu")
    if c and on_cpu and not local.is_floating_point():
        cpp = _cpp_tiler()
        if cpp is not None and hasattr(cpp, "seed_maps"):
            lut_s, lut_w = _seed_map_tables(int(tile_px), float(sigma_px), float(rho_px), float(gamma))
            valid_np = None if valid is None else valid.to(torch.uint8).contiguous().numpy()
            try:
                s_np, w_np = cpp.seed_maps(local.to(torch.int64).contiguous().numpy(),
                                           counts.to("cpu", torch.int64).contiguous().numpy(), int(tile_px),
                                           lut_s, lut_w, valid_np)
            except ValueError as exc:   # a seed outside its tile: d² beyond the tables, use the torch ops
                if "outside its tile" not in str(exc):
                    raise                # a malformed argument (shapes): not something to fall back from
            else:
                return torch.from_numpy(np.asarray(s_np)), torch.from_numpy(np.asarray(w_np))
    d2 = seed_distance2(local, counts, tile_px).to(local.device)
    return _seed_maps_from_d2(d2, sigma_px, rho_px, gamma, valid)


def blend_weight_from_d2(d2: torch.Tensor, rho_px: float, gamma: float) -> torch.Tensor:
    """SPEC §4.2's seed blend W = min(1, γ·exp(−d²/(2ρ²))) from d² (px², squared distance to the nearest seed;
    +inf where there is none → 0), a new tensor. Shared by the seed maps here and the generator's training
    weights (`models.flow.seed_blend_weight`)."""
    return torch.div(d2, -(2.0 * rho_px * rho_px)).exp_().mul_(gamma).clamp_(max=1.0)


def _seed_maps_from_d2(d2: torch.Tensor, sigma_px: float, rho_px: float, gamma: float,
                       valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    s_map = torch.div(d2, -(2.0 * sigma_px * sigma_px)).exp_()            # = exp(−d²/(2σ²)), bit for bit
    w_map = blend_weight_from_d2(d2, rho_px, gamma)
    if valid is not None:
        w_map.masked_fill_(~valid.to(torch.bool), 0.0)
    return s_map, w_map


@functools.lru_cache(maxsize=8)
def _seed_map_tables(tile_px: int, sigma_px: float, rho_px: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """S and W of every integer d² in 0..2(T−1)² (padded to a multiple of 1024, so that every value goes
    through torch's vectorised loop, as in a (c, T, T) batch), float32, read-only."""
    n = 2 * (tile_px - 1) ** 2 + 1
    d2 = torch.arange(-(-n // 1024) * 1024, dtype=torch.float32)          # exact integers (n < 2^24)
    s_map, w_map = _seed_maps_from_d2(d2, sigma_px, rho_px, gamma)
    out = (s_map.numpy(), w_map.numpy())
    for a in out:
        a.setflags(write=False)
    return out


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float, blend_w: torch.Tensor | None = None,
               image: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
               seed_counts: torch.Tensor | None = None, rho_px: float | None = None,
               gamma: float | None = None, last: bool = False, extent: torch.Tensor | None = None,
               samples_first: bool = True) -> torch.Tensor:
    """New x = x + dt·v; with `last=True` then x̂ = max(W·x + (1 - W)·I, 0).

    x, v: (n, T, T), (S, n, T, T) (`samples_first`, default) or (n, S, T, T) float32; blend_w / image:
    (n, T, T), broadcast over the samples. W is `blend_w`, or `blend_map(seeds, seed_counts, T, rho_px,
    gamma, extent)`. Out of place.
    """
    check_euler_args(x, v, dt, blend_w, image, seeds, seed_counts, rho_px, gamma, last, extent, samples_first)
    out = torch.add(x, v, alpha=float(dt))
    if not last:
        return out
    if blend_w is None:
        blend_w = blend_map(seeds, seed_counts, x.shape[-1], rho_px, gamma, extent)
    if x.dim() == 4 and not samples_first:
        blend_w, image = blend_w[:, None], image[:, None]
    return out.mul_(blend_w).add_((1.0 - blend_w) * image).clamp_min_(0.0)


# --------------------------------------------------------------------------------------------------------
# (b) fusion of a tile batch into the canvas, and its adjoint gather
# --------------------------------------------------------------------------------------------------------
def _cpp_tiler():
    """The C++ tiler module when it is the tiling backend in use, else None."""
    from mcgenref_fast import tiling

    backend = tiling.backend()
    return None if backend is tiling_numpy else backend


def _use_cpp(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not (torch.is_grad_enabled() and t.requires_grad) and _cpp_tiler() is not None


def fuse_tiles(tiles: torch.Tensor, index: TileIndex) -> torch.Tensor:
    """Canvas (H, W) = Σ_q w_q·tiles_q (or (S, H, W) for tiles (S, n, T, T)); 0 outside the active tiles.

    Each pixel accumulates `0 + p_0 + p_1 + ...` over the tiles covering it in tile order, the products
    `w·t` rounded to float32 first: the C++ tiler's arithmetic. On the CPU (no autograd) this runs the C++
    tiler itself (`tiling.fuse`, OpenMP); otherwise `index_add` over the tile pixels in tile order, which on
    the CPU runs its index sequentially (bit-identical again) and on CUDA uses atomics (fp32 rounding only).
    Differentiable (the index_add route).
    """
    check_fuse_args(tiles, index)
    h, w = index.height, index.width
    lead = tuple(tiles.shape[:-3])
    batch = math.prod(lead)
    if batch == 0 or index.n_tiles == 0:
        return tiles.new_zeros((*lead, h, w))
    if _use_cpp(tiles):
        cpp = _cpp_tiler()
        t_np = tiles.detach().contiguous().reshape(batch, *tiles.shape[-3:]).numpy()
        w_np = index.weights.numpy()
        out = [torch.from_numpy(np.asarray(cpp.fuse(t_np[b], w_np, index.origins_np, h, w))) for b in range(batch)]
        return (out[0] if batch == 1 else torch.stack(out)).reshape(*lead, h, w)
    prod = (tiles * index.weights).reshape(batch, index.n_tiles * index.tile_px ** 2)
    idx = index.canvas_index
    out = torch.stack([torch.zeros(h * w + 1, dtype=torch.float32, device=tiles.device).index_add_(0, idx, p)
                       for p in prod])[:, : h * w]  # loop over samples only
    return out.reshape(*lead, h, w)


def gather_tiles(canvas: torch.Tensor, index: TileIndex) -> torch.Tensor:
    """Canvas (H, W) or (S, H, W) → tile batch (n, T, T) or (S, n, T, T), zeros outside the image.

    The C++ tiler's `gather` on the CPU (no autograd), else an `index_select` (differentiable)."""
    _check_tensor("canvas", canvas, ndim=(2, 3), device=index.device)
    if tuple(canvas.shape[-2:]) != (index.height, index.width):
        raise ValueError(f"canvas must have shape ({index.height}, {index.width}) or (S, ...), got "
                         f"{tuple(canvas.shape)}")
    lead = tuple(canvas.shape[:-2])
    batch = math.prod(lead)
    shape = (*lead, index.n_tiles, index.tile_px, index.tile_px)
    if batch == 0 or index.n_tiles == 0:
        return canvas.new_zeros(shape)
    if _use_cpp(canvas):
        cpp = _cpp_tiler()
        c_np = canvas.detach().contiguous().reshape(batch, index.height, index.width).numpy()
        out = [torch.from_numpy(np.asarray(cpp.gather(c_np[b], index.origins_np, index.tile_px)))
               for b in range(batch)]
        return (out[0] if batch == 1 else torch.stack(out)).reshape(shape)
    flat = canvas.reshape(batch, index.height * index.width)
    out = [torch.cat([f, f.new_zeros(1)]).index_select(0, index.canvas_index) for f in flat]
    return torch.stack(out).reshape(shape)


# --------------------------------------------------------------------------------------------------------
# (c) inner GPR update
# --------------------------------------------------------------------------------------------------------
def gpr_params(cfg: RefineConfig = RefineConfig()) -> dict[str, float]:
    """The inner-step settings of `cfg` as the keyword arguments of `gpr_update`."""
    return dict(eta=cfg.eta, lam_ov=cfg.lam_ov, lam_edge=cfg.lam_edge, edge_delta=cfg.edge_delta,
                edge_sigma_i=cfg.edge_sigma_i, lam_prox=cfg.lam_prox)


_DEFAULTS = gpr_params()


def gpr_update(z: torch.Tensor, y: torch.Tensor, canvas: torch.Tensor, z0: torch.Tensor, image: torch.Tensor,
               index: TileIndex, *, eta: float = _DEFAULTS["eta"], lam_ov: float = _DEFAULTS["lam_ov"],
               lam_edge: float = _DEFAULTS["lam_edge"], edge_delta: float = _DEFAULTS["edge_delta"],
               edge_sigma_i: float = _DEFAULTS["edge_sigma_i"], lam_prox: float = _DEFAULTS["lam_prox"],
               return_energy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Jacobi step of SPEC §4.4 for all tiles (`gpr_update_torch` states the arithmetic).

    On CPU tensors without autograd, with the C++ extension built (`_use_cpp`), this runs its `gpr_update`:
    one pass per tile row reading Z through the tile windows (OpenMP over tiles), energy summed in float64
    per tile; it matches `gpr_update_torch` within float32 rounding (its exp / log1p are vectorisable
    polynomials of a few ulp; tests/test_cpu_kernels.py). Elsewhere `gpr_update_torch`.
    """
    check_gpr_args(z, y, canvas, z0, image, index)
    cpp = _cpp_tiler() if _use_cpp(z) and index.tile_px >= 2 else None
    if cpp is None or not hasattr(cpp, "gpr_update"):
        return gpr_update_torch(z, y, canvas, z0, image, index, eta=eta, lam_ov=lam_ov, lam_edge=lam_edge,
                                edge_delta=edge_delta, edge_sigma_i=edge_sigma_i, lam_prox=lam_prox,
                                return_energy=return_energy)
    oh, ov = edge_weights(image, edge_sigma_i)
    z_new, e = cpp.gpr_update(_np32(z), _np32(y), _np32(canvas), _np32(z0), index.weights.numpy(),
                              _np32(oh), _np32(ov), index.origins_np, float(eta), float(lam_ov),
                              float(lam_edge), float(edge_delta), float(lam_prox), bool(return_energy))
    z_new = torch.from_numpy(np.asarray(z_new))
    if not return_energy:
        return z_new
    return z_new, torch.from_numpy(np.asarray(e)).to(torch.float32)


def _np32(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view of CPU tensor `t` (a copy only when `t` is not contiguous)."""
    return t.detach().contiguous().numpy()


def gpr_update_torch(z: torch.Tensor, y: torch.Tensor, canvas: torch.Tensor, z0: torch.Tensor,
                     image: torch.Tensor, index: TileIndex, *, eta: float = _DEFAULTS["eta"],
                     lam_ov: float = _DEFAULTS["lam_ov"], lam_edge: float = _DEFAULTS["lam_edge"],
                     edge_delta: float = _DEFAULTS["edge_delta"], edge_sigma_i: float = _DEFAULTS["edge_sigma_i"],
                     lam_prox: float = _DEFAULTS["lam_prox"], return_energy: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Jacobi step of SPEC §4.4 for all tiles in torch (the twin of the kernels): z_new = z - η·g, with

    g = (σ(z) - y) + λ_ov·w·(z - Z) + λ_edge·∇E_edge + λ_prox·(z - z0),
    ∇E_edge(u) = Σ_{v ∈ N4(u) ∩ tile} ω_uv (z_u - z_v)/sqrt((z_u - z_v)² + δ²), ω_uv = exp(-(I_u - I_v)²/(2σ_I²)).

    z, y, z0, image: (n, T, T) float32 tiles; canvas: the fused Z (H, W) of the current z (read at each
    tile's window). Padding (tile pixels outside the image, `index.valid` False) follows
    `mcgenref_fast.energy`: left out of every term (w = 0 there; a pair counts only when both pixels are in
    the image), so g = 0 and z stays unchanged there. With `return_energy`, also E(z) per tile, (n,) float32:
    Σ_u BCE(z, y) + λ_ov·½ Σ w (z - Z)² + λ_edge Σ_{pairs} ω sqrt(d² + δ²) + (λ_prox/2) Σ (z - z0)²
    (their sum over tiles is `energy.energy`).
    """
    check_gpr_args(z, y, canvas, z0, image, index)
    zw = gather_tiles(canvas, index)
    w = index.weights
    pad = index.has_padding
    valid = index.valid if pad else None
    oh, ov = edge_weights(image, edge_sigma_i)
    delta2 = float(edge_delta) ** 2

    g = torch.sigmoid(z).sub_(y)                                          # data term p - y
    if pad:
        g.mul_(valid)
    g.add_((z - zw).mul_(w), alpha=lam_ov)                                # λ_ov·w·(z - Z)
    diff_prox = z - z0
    if pad:
        diff_prox.mul_(valid)
    g.add_(diff_prox, alpha=lam_prox)                                     # λ_prox·(z - z0)
    radii = []
    for dim, pair_ok in ((2, _pairs(valid, 2)), (1, _pairs(valid, 1))):  # horizontal, vertical pairs
        n_pair = z.shape[dim] - 1
        zu, zv = z.narrow(dim, 0, n_pair), z.narrow(dim, 1, n_pair)       # u and its right / lower v
        d = zu - zv
        r = torch.addcmul(torch.full_like(d, delta2), d, d).sqrt_()       # sqrt(d² + δ²)
        f = d.mul_(oh if dim == 2 else ov).div_(r)                        # ω (z_u - z_v) / r
        if pair_ok is not None:
            f.mul_(pair_ok)
        g.narrow(dim, 0, n_pair).add_(f, alpha=lam_edge)                  # at u: + ω d / r
        g.narrow(dim, 1, n_pair).sub_(f, alpha=lam_edge)                  # at v: − ω d / r
        radii.append((r, pair_ok))
    z_new = torch.add(z, g, alpha=-eta)
    if not return_energy:
        return z_new
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    if pad:
        bce.mul_(valid)
    diff_ov = z - zw
    edge = 0.0
    for (r, pair_ok), om in zip(radii, (oh, ov)):
        term = r.mul_(om)
        if pair_ok is not None:
            term.mul_(pair_ok)
        edge = edge + term.sum((1, 2))
    energy = (bce.sum((1, 2)) + (0.5 * lam_ov) * (w * diff_ov * diff_ov).sum((1, 2)) + lam_edge * edge
              + (0.5 * lam_prox) * (diff_prox * diff_prox).sum((1, 2)))
    return z_new, energy


def _pairs(valid: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """Pairs (u, u + 1 along `dim`) with both pixels inside the image; None when there is no padding."""
    if valid is None:
        return None
    n_pair = valid.shape[dim] - 1
    return valid.narrow(dim, 0, n_pair) & valid.narrow(dim, 1, n_pair)


_edge_cache: dict[str, object] = {}


def edge_weights(image: torch.Tensor, sigma_i: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ω of the horizontal pairs (n, T, T-1) and vertical pairs (n, T-1, T): exp(-(I_u - I_v)²/(2σ_I²)).

    The image does not change over the inner steps: the last result is kept (one entry, keyed by the
    tensor object, its version counter and σ_I) and reused while `image` is alive and unmodified.
    """
    key = (id(image), image._version, float(sigma_i), image.device)
    ref = _edge_cache.get("ref")
    if ref is not None and ref() is image and _edge_cache.get("key") == key:
        return _edge_cache["value"]  # type: ignore[return-value]
    inv_two_sig2 = 1.0 / (2.0 * float(sigma_i) ** 2)
    out = []
    for dim in (2, 1):
        n_pair = image.shape[dim] - 1
        di = image.narrow(dim, 0, n_pair) - image.narrow(dim, 1, n_pair)
        out.append(di.mul_(di).mul_(-inv_two_sig2).exp_())
    value = (out[0], out[1])
    _edge_cache.update(ref=weakref.ref(image), key=key, value=value)
    weakref.finalize(image, _edge_cache.clear)  # do not keep ω alive after the image
    return value

"""The one dispatch point of the fast path's kernels (SPEC §5): Triton on CUDA tensors, fused torch elsewhere.

    euler_step(x, v, dt, blend_w=None, image=None, seeds=None, seed_counts=None, rho_px=None, gamma=None,
               last=False, extent=None, samples_first=True)  -> new x          (kernel a)
    fuse_tiles(tiles, index)                                  -> canvas Z       (kernel b)
    gpr_update(z, y, canvas, z0, image, index, cfg=RefineConfig(), return_energy=False)
                                                              -> z_new [, E]    (kernel c)

`index` is an `ops_torch.TileIndex` (`TileIndex.from_grid(grid, device)`), re-exported here with
`gather_tiles`, `blend_map`, `seed_distance2` and `seed_blend_maps` (no Triton kernel of their own; on the CPU the C++
extension does the gather and the seed distances).

Choice of implementation: environment variable `MCGENREF_KERNELS` = `auto` (default: Triton when the
tensors are on CUDA and Triton imports, the torch twin otherwise) | `triton` (always Triton; on CPU tensors
only under the Triton interpreter, `TRITON_INTERPRET=1` set before the kernels are imported — for tests) |
`torch` (always the torch twin). Read at every call, so it can be changed at run time. `backend_for(t)`
says which one a call on `t` uses. Inputs are checked the same way for both (ValueError saying what was
expected).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from mcgenref_fast import ops_torch
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.ops_torch import TileIndex, blend_map, gather_tiles, gpr_params, seed_blend_maps, seed_distance2

__all__ = ["KernelBackendError", "TileIndex", "backend_for", "blend_map", "euler_step", "fuse_tiles",
           "gather_tiles", "gpr_update", "seed_blend_maps", "seed_distance2",
           "triton_available"]

ENV_VAR = "MCGENREF_KERNELS"
_CHOICES = ("auto", "triton", "torch")


class KernelBackendError(RuntimeError):
    """The requested kernel implementation cannot run here (no Triton, or Triton on CPU without interpreter)."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


_triton_ok: bool | None = None


def triton_available() -> bool:
    """Whether `triton` imports (cached)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401
        except Exception:  # ImportError, or a broken install
            _triton_ok = False
        else:
            _triton_ok = True
    return _triton_ok


def _requested() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    return choice


def backend_for(tensor: torch.Tensor) -> str:
    """'triton' or 'torch': the implementation a kernel call on `tensor`'s device uses now."""
    choice = _requested()
    device = tensor.device
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise KernelBackendError(f"{ENV_VAR}=triton but triton cannot be imported: install the `triton` extra "
                                 f"or set {ENV_VAR}=torch")
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        if not _interpreting():
            raise KernelBackendError(f"{ENV_VAR}=triton with CPU tensors needs the Triton interpreter: set "
                                     f"TRITON_INTERPRET=1 before importing mcgenref_fast (tests only), move the "
                                     f"tensors to CUDA, or set {ENV_VAR}=torch")
        return "triton"
    raise KernelBackendError(f"{ENV_VAR}=triton: no Triton kernels for device {device}; use {ENV_VAR}=torch")


def _kernel_module(name: str) -> ModuleType:
    module = importlib.import_module(f"mcgenref_fast.kernels.{name}")
    if _interpreting():
        from triton.runtime.interpreter import InterpretedFunction

        kernel = getattr(module, f"_{name}_kernel")
        if not isinstance(kernel, InterpretedFunction):
            raise KernelBackendError(f"mcgenref_fast.kernels.{name} was imported before TRITON_INTERPRET=1 was "
                                     "set, so its kernel is compiled for a GPU: set it before importing")
    return module


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float, blend_w: torch.Tensor | None = None,
               image: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
               seed_counts: torch.Tensor | None = None, rho_px: float | None = None,
               gamma: float | None = None, last: bool = False, extent: torch.Tensor | None = None,
               samples_first: bool = True) -> torch.Tensor:
    """One Euler step `x + dt·v`; on the last step fused with x̂ = max(W·x + (1-W)·I, 0) (SPEC §4.2).

    x, v: (n, T, T), (S, n, T, T) (`samples_first`) or (n, S, T, T) float32; image, blend_w: (n, T, T);
    or, instead of blend_w, seeds (n, n_s, 2) float tile-local (row, col) px (padded; the first
    seed_counts[q] are used) with seed_counts (n,) int, rho_px, gamma: W = min(1, γ·max_c
    exp(-|u-c|²/(2ρ²))) is computed in the kernel, 0 beyond `extent` (n, 2) (`TileIndex.extent`: rows,
    cols inside the image). Returns a new tensor.
    """
    ops_torch.check_euler_args(x, v, dt, blend_w, image, seeds, seed_counts, rho_px, gamma, last, extent,
                               samples_first)
    if backend_for(x) == "triton":
        impl = _kernel_module("euler_step").euler_step
    else:
        impl = ops_torch.euler_step
    return impl(x, v, dt, blend_w=blend_w, image=image, seeds=seeds, seed_counts=seed_counts,
                rho_px=rho_px, gamma=gamma, last=last, extent=extent, samples_first=samples_first)


def fuse_tiles(tiles: torch.Tensor, index: TileIndex) -> torch.Tensor:
    """Canvas Σ_q w_q·tiles_q: (n, T, T) → (H, W), (S, n, T, T) → (S, H, W); deterministic, tile order."""
    ops_torch.check_fuse_args(tiles, index)
    if backend_for(tiles) == "triton":
        return _kernel_module("fuse_tiles").fuse_tiles(tiles, index)
    return ops_torch.fuse_tiles(tiles, index)


def gpr_update(z: torch.Tensor, y: torch.Tensor, canvas: torch.Tensor, z0: torch.Tensor, image: torch.Tensor,
               index: TileIndex, cfg: RefineConfig = RefineConfig(), return_energy: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One inner step z - η·g of SPEC §4.4 with `cfg`'s settings (see `ops_torch.gpr_update`).

    z, y, z0, image: (n, T, T); canvas: Z (H, W) fused from z. With `return_energy`, also E(z) per tile (n,).
    """
    ops_torch.check_gpr_args(z, y, canvas, z0, image, index)
    if backend_for(z) == "triton":
        impl = _kernel_module("gpr_update").gpr_update
    else:
        impl = ops_torch.gpr_update
    return impl(z, y, canvas, z0, image, index, return_energy=return_energy, **gpr_params(cfg))

"""Rectified flow in image space (SPEC §3): t = 0 is noise, t = 1 data, straight paths.

x_t = (1 - t)·eps + t·x, target velocity x - eps, loss |v([x_t, S], t) - (x - eps)|²; and the Euler
projection used by TT-GPR (SPEC §4 step 2) and by the validation script: start at t0 from the image.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,1,1,1) in `like`'s dtype/device."""
    return t.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t)·eps + t·x, t of shape (B,)."""
    tb = _bcast(t, x)
    return (1 - tb) * eps + tb * x


def target_velocity(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """d x_t / d t = x - eps."""
    return x - eps


def sample_time(n: int, t_min: float = 0.5, t_max: float = 1.0, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """t ~ U[t_min, t_max], shape (n,) (training may skip t < t0: inference never goes there)."""
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min <= t_max <= 1, got {t_min}, {t_max}")
    u = torch.rand(n, generator=generator)
    return (t_min + (t_max - t_min) * u).to(device)


def flow_loss(velocity: Velocity, x: torch.Tensor, seeds: torch.Tensor, eps: torch.Tensor,
              t: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels and batch of |v([x_t, S], t) - (x - eps)|² (a scalar); with `weight` (broadcast to
    x), the weighted mean Σ w·err² / Σ w."""
    x_t = interpolate(x, eps, t)
    v = velocity(torch.cat([x_t, seeds], dim=1), t)
    err2 = (v.float() - target_velocity(x, eps).float()) ** 2
    if weight is None:
        return torch.mean(err2)
    w = weight.to(err2.device, err2.dtype).expand_as(err2)
    return torch.sum(w * err2) / torch.sum(w).clamp_min(1e-12)


def seed_blend_weight(seeds: torch.Tensor, rho_px: float, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Loss weight for the generator from training seed maps (B, 1, H, W): floor + (1 - floor)·W with TT-GPR's
    seed-consistent blend W(u) = min(1, γ·exp(-d(u)²/(2ρ²))), d the distance (px) to the nearest seed pixel
    (the map's exact peaks, value 1; SPEC §4 step 2). TT-GPR keeps the generator's output only where W > 0
    and takes the image elsewhere, so this puts the network's capacity where inference uses it. A map with no
    seed gets W ≡ 0 (weight `floor`)."""
    from scipy import ndimage

    from mcgenref_fast.ops_torch import blend_weight_from_d2

    if not (rho_px > 0 and gamma >= 0 and 0.0 <= floor <= 1.0):
        raise ValueError(f"need rho_px > 0, gamma >= 0, 0 <= floor <= 1, got {rho_px}, {gamma}, {floor}")
    peaks = (seeds.detach().float().cpu().numpy() >= 1.0)
    d2 = np.full(peaks.shape, np.inf, np.float32)                 # no seed: W ≡ 0
    for idx in np.ndindex(*peaks.shape[:-2]):
        if peaks[idx].any():
            d = ndimage.distance_transform_edt(~peaks[idx])
            d2[idx] = np.rint(d * d)                              # integer offsets: d² is an exact integer
    w = blend_weight_from_d2(torch.from_numpy(d2), rho_px, gamma)
    return (floor + (1.0 - floor) * w).to(seeds.device)


def euler_project(x_img: torch.Tensor, seeds: torch.Tensor, velocity: Velocity, t0: float = 0.7,
                  n_steps: int = 4, eps: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """SPEC §4 step 2 (before the seed blend): x <- (1-t0)·eps + t0·x_img, then `n_steps` Euler steps
    x <- x + Δ·v([x, S], t_n), t_n = t0 + nΔ, Δ = (1 - t0)/n_steps. Returns x at t = 1, shape of x_img.

    `eps` defaults to N(0, 1) drawn on the CPU from `generator` (so results do not depend on the device).
    Wrap the call in `torch.no_grad()` for inference.
    """
    if not 0.0 <= t0 <= 1.0 or n_steps < 0:
        raise ValueError(f"need 0 <= t0 <= 1 and n_steps >= 0, got {t0}, {n_steps}")
    if eps is None:
        eps = torch.randn(x_img.shape, generator=generator, dtype=torch.float32).to(x_img.device, x_img.dtype)
    x = (1 - t0) * eps + t0 * x_img
    if n_steps == 0:
        return x
    dt = (1.0 - t0) / n_steps
    b = x_img.shape[0]
    for n in range(n_steps):
        t_n = torch.full((b,), t0 + n * dt, device=x_img.device, dtype=torch.float32)
        x = x + dt * velocity(torch.cat([x, seeds], dim=1), t_n).to(x.dtype)
    return x

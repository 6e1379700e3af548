"""Rectified flow in image space (SPEC §3): t = 0 is noise, t = 1 data, straight paths.

x_t = (1 - t)·eps + t·x, target velocity x - eps, loss |v([x_t, S], t) - (x - eps)|²; and the Euler
projection used by TT-GPR (SPEC §4 step 2) and by the validation script: start at t0 from the image.
"""
from __future__ import annotations

from typing import Callable

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
              t: torch.Tensor) -> torch.Tensor:
    """Mean over pixels and batch of |v([x_t, S], t) - (x - eps)|² (a scalar)."""
    x_t = interpolate(x, eps, t)
    v = velocity(torch.cat([x_t, seeds], dim=1), t)
    return torch.mean((v.float() - target_velocity(x, eps).float()) ** 2)


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

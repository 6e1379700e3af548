"""Surrogate-consistency loss for fine-tuning the generator (an addition to SPEC §3; README, TT-GPR).

TT-GPR pulls the segmentor's logits towards the surrogate y = sigmoid(f(x̂)), where x̂ is the generator's
seed-conditioned projection of the image (SPEC §4 steps 2-3). Plain flow matching does not ask x̂ to be an
image on which the frozen segmentor f finds the true MCs: with the shipped networks y sits *below* p0 at the
true MCs that hold a seed (scripts/surrogate_study.py), so TT-GPR cannot raise recall. This loss runs the
same projection on a training pair (seeds at a share of its MC centres, the training seed map), and scores
f(x̂) against the pair's exact mask with BCE-with-logits, weighted by the seed blend W (the only place where
x̂ differs from the image, so the only place the generator can change y). Gradients flow through the Euler
steps into the generator; f is frozen. Used as flow loss + λ·this (`TrainConfig.surrogate_weight`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcgenref_fast.config import RefineConfig
from mcgenref_fast.models.flow import Velocity, euler_project, seed_blend_weight


def surrogate_consistency_loss(velocity: Velocity, segmentor: nn.Module, image: torch.Tensor,
                               seeds: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor,
                               cfg: RefineConfig = RefineConfig(), blend: torch.Tensor | None = None
                               ) -> torch.Tensor:
    """Σ W·BCEwithLogits(f(x̂), m) / Σ W over a batch (B, 1, H, W), x̂ = max(0, W·x + (1 - W)·I) with x the
    Euler projection from t0 (`cfg.t0`, `cfg.euler_steps`, noise `eps`) and W the blend of the seed map's
    exact peaks (ρ = `cfg.blend_rho_px`, γ = `cfg.blend_gamma`; `blend` passes a W already computed from
    these seeds). A batch without any seed gives 0 (no gradient: TT-GPR would skip the generator there)."""
    w = (seed_blend_weight(seeds, cfg.blend_rho_px, cfg.blend_gamma) if blend is None else blend).to(image.dtype)
    if not bool(w.any()):
        return image.new_zeros(())
    x = euler_project(image, seeds, velocity, cfg.t0, cfg.euler_steps, eps=eps)
    x_hat = torch.clamp_min(w * x + (1 - w) * image, 0.0)
    bce = F.binary_cross_entropy_with_logits(segmentor(x_hat).float(), mask.float(), reduction="none")
    return torch.sum(w * bce) / torch.sum(w)

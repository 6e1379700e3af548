"""mcgenref_fast.models: the segmentor f, the generator's velocity net v, rectified flow, weights I/O.

Public API (docs/interfaces.md, `models`):
- `Segmentor(cfg)`: forward((B,1,H,W)) -> logits (B,1,H,W), any H, W.
- `VelocityNet(cfg)`: forward((B,2,H,W) = cat[x_t, S], t (B,)) -> (B,1,H,W).
- `load_default_models(device='cpu') -> (Segmentor, VelocityNet)` from the shipped, sha256-checked weights.
- `model_cost(model) -> dict` params, GFLOPs and CPU ms per 256x256 tile.
"""
from __future__ import annotations

from mcgenref_fast.models.config import GeneratorConfig, SegmentorConfig
from mcgenref_fast.models.cost import model_cost
from mcgenref_fast.models.unet import Segmentor
from mcgenref_fast.models.velocity import VelocityNet
from mcgenref_fast.models.weights import (
    default_weights_dir,
    load_default_models,
    load_model,
    load_models,
    read_manifest,
    save_model,
)

__all__ = [
    "GeneratorConfig",
    "SegmentorConfig",
    "Segmentor",
    "VelocityNet",
    "model_cost",
    "default_weights_dir",
    "load_default_models",
    "load_model",
    "load_models",
    "read_manifest",
    "save_model",
]

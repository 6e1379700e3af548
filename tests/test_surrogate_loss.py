"""The generator's surrogate-consistency loss (mcgenref_fast/surrogate_loss.py) and its training switch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcgenref_fast.config import RefineConfig
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.models import GeneratorConfig, SegmentorConfig
from mcgenref_fast.models.flow import euler_project, seed_blend_weight
from mcgenref_fast.models.unet import Segmentor
from mcgenref_fast.models.weights import save_model
from mcgenref_fast.surrogate_loss import surrogate_consistency_loss
from mcgenref_fast.synth.seeds import gaussian_dots
from mcgenref_fast.train import LOG_NAME, TrainConfig, train
from tiny_models import make_tiny_generator, make_tiny_segmentor

CFG = RefineConfig(blend_rho_mm=0.35)          # rho = 5 px: the blend covers part of a 24 px patch


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = 0.4 + 0.02 * torch.randn(2, 1, 24, 20, generator=g)
    mask = torch.zeros(2, 1, 24, 20)
    mask[0, 0, 8:10, 6:8] = 1
    image[0, 0, 8:10, 6:8] += 0.3
    seeds = torch.from_numpy(np.stack([gaussian_dots(np.array([[8, 6]]), (24, 20)),
                                       np.zeros((24, 20), np.float32)]))[:, None]
    eps = torch.randn(image.shape, generator=g)
    return image, seeds, mask, eps


def test_loss_is_the_blend_weighted_bce_of_the_projection() -> None:
    image, seeds, mask, eps = _batch()
    gen, seg = make_tiny_generator(), make_tiny_segmentor()
    got = surrogate_consistency_loss(gen, seg, image, seeds, mask, eps, CFG)
    w = seed_blend_weight(seeds, CFG.blend_rho_px, CFG.blend_gamma)
    assert float(w[1].max()) == 0.0 and float(w[0].max()) == 1.0
    with torch.no_grad():
        x = euler_project(image, seeds, gen, CFG.t0, CFG.euler_steps, eps=eps)
        x_hat = torch.clamp_min(w * x + (1 - w) * image, 0)
        bce = F.binary_cross_entropy_with_logits(seg(x_hat), mask, reduction="none")
    assert torch.allclose(got, (w * bce).sum() / w.sum(), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_generator_not_the_frozen_segmentor() -> None:
    image, seeds, mask, eps = _batch(1)
    gen, seg = make_tiny_generator(), make_tiny_segmentor()
    for p in seg.parameters():
        p.requires_grad_(False)
    surrogate_consistency_loss(gen, seg, image, seeds, mask, eps, CFG).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gen.parameters())
    assert all(p.grad is None for p in seg.parameters())


def test_no_seed_means_no_loss() -> None:
    image, seeds, mask, eps = _batch(2)
    loss = surrogate_consistency_loss(make_tiny_generator(), make_tiny_segmentor(), image, torch.zeros_like(seeds),
                                      mask, eps, CFG)
    assert float(loss) == 0.0


@pytest.mark.parametrize("kw,words", [({"surrogate_weight": -1.0}, "surrogate_weight"),
                                      ({"surrogate_weight": float("nan")}, "surrogate_weight"),
                                      ({"surrogate_weight": 1.0, "model": "segmentor"}, "generator only")])
def test_surrogate_weight_checked(kw, words) -> None:
    base = dict(model="generator", steps=1, batch=2, patch_px=24)
    base.update(kw)
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**base)


def test_training_with_the_surrogate_term(tmp_path) -> None:
    """A generator run with surrogate_weight > 0 trains against a given frozen segmentor (its weights
    directory), its loss is larger than the plain flow loss by that term, and the segmentor file is untouched."""
    from test_train import PeakSeedDataset

    seg_dir = tmp_path / "seg"
    save_model(Segmentor(SegmentorConfig(depth=1, base_width=4, max_width=8)), seg_dir)
    before = (seg_dir / "segmentor.pt").read_bytes()
    tiny_gen = GeneratorConfig(depth=2, base_width=4, max_width=8, time_dim=8, time_hidden=16)
    first = {}
    for weight in (0.0, 5.0):
        cfg = TrainConfig(model="generator", steps=2, batch=2, patch_px=24, seed=3, warmup_steps=0, val_size=2,
                          val_batch=2, val_every=100, ckpt_every=100, log_every=1, surrogate_weight=weight,
                          surrogate_segmentor=str(seg_dir) if weight > 0 else None)
        out = tmp_path / f"run{weight}"
        result = train(cfg, out, model_cfg=tiny_gen, dataset_factory=lambda n, s, p: PeakSeedDataset(n, 11, p),
                       device="cpu", progress=False)
        if weight > 0:          # validation reports the parts of the combined objective
            v = result.val
            assert v["val_surrogate"] > 0
            assert v["val_loss"] == pytest.approx(v["val_flow"] + weight * v["val_surrogate"], rel=1e-9)
        else:
            assert "val_surrogate" not in result.val
        rows = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
        first[weight] = [r["loss"] for r in rows if r["kind"] == "train"][0]
    assert first[5.0] > first[0.0]
    assert (seg_dir / "segmentor.pt").read_bytes() == before

"""SyntheticPairDataset: shapes, determinism by seed and index whatever the worker count, backgrounds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mcgenref_fast.synth import SynthConfig, SyntheticPairDataset
from mcgenref_fast.synth.background import RealNegativeSampler


def _disc_canonical(shape: tuple[int, int] = (300, 240)):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    breast = (rr - shape[0] / 2) ** 2 + cc ** 2 < (0.9 * shape[1]) ** 2
    image = np.where(breast, 0.5, 0.0).astype(np.float32)
    return type("Can", (), {"image": image, "breast_mask": breast})()


def test_items_shapes_and_types() -> None:
    ds = SyntheticPairDataset(6, seed=1, patch_px=64)
    assert len(ds) == 6
    item = ds[0]
    assert set(item) == {"image", "mask", "seeds"}
    for k in ("image", "mask", "seeds"):
        assert item[k].shape == (1, 64, 64) and item[k].dtype == torch.float32
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    assert float(item["seeds"].max()) <= 1.0 and float(item["image"].min()) >= 0.0
    with pytest.raises(IndexError):
        ds.pair(6)


def test_same_seed_same_pairs_any_order() -> None:
    a, b = SyntheticPairDataset(5, seed=7, patch_px=48), SyntheticPairDataset(5, seed=7, patch_px=48)
    for i in reversed(range(5)):
        ia, ib = a[i], b[i]
        assert all(torch.equal(ia[k], ib[k]) for k in ia)
    c = SyntheticPairDataset(5, seed=8, patch_px=48)
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])


def test_same_pairs_regardless_of_worker_count() -> None:
    ds = SyntheticPairDataset(6, seed=3, patch_px=32)
    ref = torch.cat([b["image"] for b in DataLoader(ds, batch_size=2, num_workers=0)])
    got = torch.cat([b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(ref, got)


def test_seeds_sit_on_mask_or_are_spurious() -> None:
    """Most seed dots (value 1) lie on the mask: they mark MC centres."""
    cfg = SynthConfig(spurious_seed_mean=0.0)
    ds = SyntheticPairDataset(20, seed=11, patch_px=96, cfg=cfg)
    on = total = 0
    for i in range(len(ds)):
        item = ds[i]
        peaks = item["seeds"][0] == 1.0
        if not item["mask"].any():
            assert not peaks.any()
            continue
        total += int(peaks.sum())
        near = torch.nn.functional.max_pool2d(item["mask"], 3, 1, 1)[0] > 0
        on += int((peaks & near).sum())
    assert total > 0 and on >= 0.95 * total


def test_real_backgrounds_are_mixed_in_deterministically() -> None:
    cans = [_disc_canonical()]
    cfg = SynthConfig(p_real_background=1.0, noise_sigma=(0.0, 0.0))
    ds = SyntheticPairDataset(4, seed=2, patch_px=64, cfg=cfg, backgrounds=cans)
    assert isinstance(ds.sampler, RealNegativeSampler)
    for i in range(4):
        pair, _ = ds.pair(i)
        assert np.all(pair.background == 0.5)          # a flat real patch, fully inside the breast
        assert torch.equal(ds[i]["image"], SyntheticPairDataset(4, 2, 64, cfg, backgrounds=cans)[i]["image"])
    mixed = SyntheticPairDataset(40, seed=2, patch_px=32, cfg=SynthConfig(p_real_background=0.5), backgrounds=cans)
    flat = sum(bool(np.all(mixed.pair(i)[0].background == 0.5)) for i in range(40))
    assert 5 < flat < 35

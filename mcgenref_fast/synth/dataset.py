"""SyntheticPairDataset: a torch Dataset of (image, mask, seeds), deterministic per index.

Item i is drawn from `np.random.default_rng(SeedSequence([seed, i]))` only, so the same seed gives the same
pairs whatever the DataLoader's worker count or order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mcgenref_fast.config import CANONICAL_SPACING_MM
from mcgenref_fast.synth.background import RealNegativeSampler, as_sampler
from mcgenref_fast.synth.config import SynthConfig
from mcgenref_fast.synth.pair import SyntheticPair, make_pair
from mcgenref_fast.synth.seeds import seed_map


def pair_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of item `index` of a dataset seeded with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def draw_item(seed: int, index: int, patch_px: int, cfg: SynthConfig, sampler: RealNegativeSampler | None,
              spacing_mm: float = CANONICAL_SPACING_MM) -> tuple[SyntheticPair, np.ndarray]:
    """Pair and seed map of item `index`: real background with probability p_real_background when a
    sampler is given (the coin is always tossed, so the stream does not depend on the sampler)."""
    rng = pair_rng(seed, index)
    use_real = bool(rng.random() < cfg.p_real_background) and sampler is not None
    background, source_mm = sampler.sample_with_source(rng, patch_px, spacing_mm) if use_real else (None, None)
    pair = make_pair(rng, cfg, patch_px, spacing_mm, background,
                     source_spacing_mm=source_mm if cfg.match_source_sampling else None)
    seeds = seed_map(pair.centres_px, pair.image.shape, rng, cfg)
    return pair, seeds


class SyntheticPairDataset(Dataset):
    """n items; each a dict of float32 tensors `image`, `mask`, `seeds` of shape (1, P, P)."""

    def __init__(self, n: int, seed: int = 0, patch_px: int = 256, cfg: SynthConfig = SynthConfig(),
                 backgrounds: RealNegativeSampler | Sequence[tuple[str | Path, float | None]] | None = None,
                 spacing_mm: float = CANONICAL_SPACING_MM) -> None:
        if n < 0 or patch_px < 1:
            raise ValueError(f"need n >= 0 and patch_px >= 1, got n={n}, patch_px={patch_px}")
        self.n, self.seed, self.patch_px, self.cfg = int(n), int(seed), int(patch_px), cfg
        self.spacing_mm = float(spacing_mm)
        self.sampler = as_sampler(backgrounds, cfg)

    def __len__(self) -> int:
        return self.n

    def pair(self, index: int) -> tuple[SyntheticPair, np.ndarray]:
        """The full SyntheticPair and seed map behind item `index`."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        return draw_item(self.seed, index, self.patch_px, self.cfg, self.sampler, self.spacing_mm)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair, seeds = self.pair(int(index))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pair.image, np.float32))[None],
            "mask": torch.from_numpy(pair.mask.astype(np.float32))[None],
            "seeds": torch.from_numpy(seeds)[None],
        }

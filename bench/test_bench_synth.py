"""Benchmark: synthetic pairs per second at 256² on one core (target ≥ 100/s).

Run: PYTHONPATH=. python -m pytest bench/test_bench_synth.py --benchmark-enable -q
(with benchmarks disabled, the default, each function runs once as a smoke test).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from mcgenref_fast.synth import SynthConfig, SyntheticPairDataset, make_pair

PATCH_PX = 256
TARGET_PAIRS_PER_S = 100.0
BATCH = 20                     # pairs per benchmark round (so per-round timer overhead is negligible)


@pytest.fixture(autouse=True)
def _one_core():
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _rate(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return None if not stats else BATCH / stats.stats.mean


def test_bench_make_pair_256(benchmark) -> None:
    cfg = SynthConfig()
    rng = np.random.default_rng(0)

    def run() -> None:
        for _ in range(BATCH):
            make_pair(rng, cfg, PATCH_PX)

    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    rate = _rate(benchmark)
    if rate is not None:
        benchmark.extra_info["pairs_per_s"] = rate
        print(f"\nmake_pair 256²: {rate:.0f} pairs/s")
        assert rate >= TARGET_PAIRS_PER_S


def test_bench_dataset_item_256(benchmark) -> None:
    """A full dataset item: pair + seed map + tensors (what the trainer pays)."""
    ds = SyntheticPairDataset(10_000, seed=0, patch_px=PATCH_PX)
    counter = iter(range(10**9))

    def run() -> None:
        for _ in range(BATCH):
            ds[next(counter) % len(ds)]

    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    rate = _rate(benchmark)
    if rate is not None:
        benchmark.extra_info["pairs_per_s"] = rate
        print(f"\ndataset item 256²: {rate:.0f} pairs/s")
        assert rate >= TARGET_PAIRS_PER_S

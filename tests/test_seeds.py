"""SPEC §4 step 1, seed extraction (reference): threshold, breast, 3×3 strict maximum with the raster tie
rule, outside the image = −inf, per-tile cap and ranking, tile-local coordinates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.seeds import extract_seeds, local_maxima, logit, rank_seeds, seed_mask, tile_seeds

LOW = -10.0  # well under logit(0.3)


def _canvas(h: int, w: int, value: float = LOW) -> torch.Tensor:
    return torch.full((h, w), value, dtype=torch.float32)


def _ones(h: int, w: int) -> torch.Tensor:
    return torch.ones((h, w), dtype=torch.bool)


def _seeds(z: torch.Tensor, breast=None, covered=None, threshold: float = 0.3) -> list[tuple[int, int]]:
    h, w = z.shape
    m = seed_mask(z, _ones(h, w) if breast is None else breast, _ones(h, w) if covered is None else covered,
                  threshold)
    return [tuple(rc) for rc in torch.nonzero(m).tolist()]


def _brute_force_maxima(z: np.ndarray) -> np.ndarray:
    """p is a maximum iff its key (Z, −raster index) beats every in-image neighbour's key."""
    h, w = z.shape
    out = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            key = (z[r, c], -(r * w + c))
            out[r, c] = all(key > (z[rr, cc], -(rr * w + cc))
                            for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                            if (rr, cc) != (r, c) and 0 <= rr < h and 0 <= cc < w)
    return out


def test_tie_rule_plateaus_keep_their_first_pixel_in_raster_order():
    z = _canvas(12, 12)
    z[2:4, 2:4] = 1.0            # 2×2 plateau -> top-left
    z[7, 2:5] = 1.0              # horizontal run -> leftmost
    z[6:9, 9] = 1.0              # vertical run -> topmost
    z[2, 9] = 1.0                # anti-diagonal pair: (2, 9) is earlier than (3, 8)
    z[3, 8] = 1.0
    assert _seeds(z) == [(2, 2), (2, 9), (6, 9), (7, 2)]


def test_tie_rule_equals_brute_force_on_many_ties():
    rng = np.random.default_rng(5)
    for _ in range(20):
        z = rng.integers(0, 3, size=(9, 11)).astype(np.float32)   # lots of equal neighbours
        got = local_maxima(torch.from_numpy(z)).numpy()
        np.testing.assert_array_equal(got, _brute_force_maxima(z))


def test_strictly_larger_neighbour_suppresses():
    z = _canvas(5, 5)
    z[2, 2] = 1.0
    z[1, 3] = 1.5      # a larger neighbour earlier in raster order
    assert _seeds(z) == [(1, 3)]
    z[1, 3] = LOW
    z[3, 1] = 1.5      # a larger neighbour later in raster order
    assert _seeds(z) == [(3, 1)]


def test_threshold_is_inclusive_at_logit_tau():
    thr32 = float(torch.tensor(logit(0.3), dtype=torch.float32))
    below = float(np.nextafter(np.float32(thr32), np.float32(-np.inf)))
    z = _canvas(7, 7)
    z[1, 1] = thr32
    z[5, 5] = below
    assert _seeds(z) == [(1, 1)]
    assert _seeds(z, threshold=0.2) == [(1, 1), (5, 5)]
    assert math.isclose(logit(0.3), math.log(3 / 7))


def test_only_breast_pixels_are_seeds_but_all_covered_pixels_compete():
    z = _canvas(8, 8)
    z[2, 2] = 3.0       # outside the breast: not a seed ...
    z[2, 3] = 2.0       # ... but it still beats its breast neighbour
    z[6, 6] = 1.0       # breast, isolated: a seed
    breast = _ones(8, 8)
    breast[:, :3] = False
    assert _seeds(z, breast=breast) == [(6, 6)]
    assert _seeds(z) == [(2, 2), (6, 6)]


def test_outside_the_image_and_uncovered_pixels_are_minus_inf():
    z = _canvas(6, 6, value=0.0)        # constant canvas above the threshold
    assert _seeds(z) == [(0, 0)]        # the raster-first pixel wins every tie
    z = _canvas(6, 6)
    z[0, 5] = z[5, 0] = z[5, 5] = 1.0   # corners beat their in-image neighbours
    assert _seeds(z) == [(0, 5), (5, 0), (5, 5)]
    covered = _ones(6, 6)
    covered[2, 2] = False               # uncovered: p = 0 there, counts as -inf
    z = _canvas(6, 6)
    z[2, 2] = 5.0
    z[3, 3] = 1.0
    assert _seeds(z, covered=covered) == [(3, 3)]


def test_ranking_is_z_descending_then_raster_ascending():
    z = _canvas(10, 10)
    peaks = {(1, 1): 1.0, (1, 5): 2.0, (5, 1): 2.0, (5, 5): 0.5, (8, 8): 2.0}
    for rc, v in peaks.items():
        z[rc] = v
    ranked = rank_seeds(z, seed_mask(z, _ones(10, 10), _ones(10, 10), 0.3)).tolist()
    assert ranked == [[1, 5], [5, 1], [8, 8], [1, 1], [5, 5]]


def test_per_tile_cap_keeps_the_best_ranked_in_tile_local_px():
    h, w = 20, 36
    z = _canvas(h, w)
    rng = np.random.default_rng(0)
    values = rng.permutation(40).astype(np.float32) / 10.0
    peaks = [(r, c) for r in range(1, h, 4) for c in range(1, w, 4)][:40]
    for (r, c), v in zip(peaks, values):
        z[r, c] = float(v)
    origins = [(0, 0), (0, 16), (4, 4)]
    tile = 16
    mask = seed_mask(z, _ones(h, w), _ones(h, w), 0.3)
    out = tile_seeds(z, mask, origins, tile, max_seeds=5)
    for (y0, x0), local in zip(origins, out):
        inside = [(r, c) for r, c in torch.nonzero(mask).tolist() if y0 <= r < y0 + tile and x0 <= c < x0 + tile]
        expected = sorted(inside, key=lambda rc: (-float(z[rc]), rc[0] * w + rc[1]))[:5]
        assert (local + torch.tensor([y0, x0])).tolist() == [list(rc) for rc in expected]
        assert local.shape == (min(5, len(inside)), 2) and local.dtype == torch.int64
        assert (local >= 0).all() and (local < tile).all()


def test_extract_seeds_uses_config_and_shares_overlap_seeds():
    cfg = RefineConfig(tiles=TileConfig(16, 4), max_seeds_per_tile=2)
    z = _canvas(16, 28)
    z[5, 13] = 1.0    # inside both tiles (x origins 0 and 12)
    z[5, 3] = 2.0
    z[9, 3] = 1.5
    z[12, 20] = 0.5
    origins = [(0, 0), (0, 12)]
    seeds = extract_seeds(z, _ones(16, 28), _ones(16, 28), origins, cfg)
    assert seeds[0].tolist() == [[5, 3], [9, 3]]           # capped at 2: (5, 13) ranks third
    assert seeds[1].tolist() == [[5, 1], [12, 8]]
    empty = extract_seeds(_canvas(16, 28), _ones(16, 28), _ones(16, 28), origins, cfg)
    assert [s.shape for s in empty] == [(0, 2), (0, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_mask_keeps_dtype_semantics(dtype):
    z = _canvas(5, 5).to(dtype)
    z[2, 2] = 0.0
    assert seed_mask(z, _ones(5, 5), _ones(5, 5), 0.3).sum() == 1

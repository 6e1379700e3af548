"""Top-hat baseline: exact morphology, exact cropping, the p ≥ 0.5 ⇔ detection contract, a synthetic check, speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from mcgenref_fast.baseline import (TopHatConfig, disk_footprint, grey_opening_disk, tophat_detect,
                                    tophat_response, white_tophat_disk)
from mcgenref_fast.findings import extract_findings
from mcgenref_fast.metrics import confusion, summarize_pixels
from mcgenref_fast.metrics_mc import match_mcs, summarize_detections, true_from_labels

H = 0.07


@pytest.mark.parametrize("radius_px", [0.5, 1.0, 1.5, 2.3, 4.0, 7.14])
def test_disk_opening_equals_scipy(radius_px: float) -> None:
    rng = np.random.default_rng(int(radius_px * 10))
    f = rng.random((37, 53)).astype(np.float32)
    want = ndi.grey_opening(f, footprint=disk_footprint(radius_px))
    np.testing.assert_array_equal(grey_opening_disk(f, radius_px), want)
    assert (white_tophat_disk(f, radius_px) >= 0).all()


def test_disk_footprint_shape() -> None:
    fp = disk_footprint(2.0)
    assert fp.shape == (5, 5) and fp.sum() == 13 and fp[0, 2] and not fp[0, 1]


def test_response_on_breast_window_equals_full_image_computation() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((120, 140)).astype(np.float32)
    breast = np.zeros(img.shape, dtype=bool)
    breast[40:90, 50:100] = True  # far from the image edges: the crop must carry the support
    for cfg in (TopHatConfig(), TopHatConfig(radius_mm=0.3, presmooth_sigma_mm=0.1)):
        r = tophat_response(img, breast, H, cfg)
        full = ndi.gaussian_filter(img, cfg.presmooth_sigma_mm / H) if cfg.presmooth_sigma_mm else img
        want = white_tophat_disk(full, cfg.radius_mm / H)
        np.testing.assert_allclose(r[breast], want[breast], atol=1e-6)
        assert (r[~breast] == 0).all()


def test_probability_contract() -> None:
    rng = np.random.default_rng(4)
    img = (0.3 + 0.02 * rng.standard_normal((96, 96))).astype(np.float32)
    img[40:43, 40:43] += 0.5
    img[70, 20] += 0.4
    breast = np.zeros(img.shape, dtype=bool)
    breast[5:90, :80] = True
    res = tophat_detect(img, breast, H)
    assert res.prob.dtype == np.float32 and res.prob.shape == img.shape
    assert (res.prob >= 0).all() and (res.prob <= 1).all() and (res.prob[~breast] == 0).all()
    np.testing.assert_array_equal(res.prob >= 0.5, res.mask)
    np.testing.assert_array_equal(res.mask, (res.response >= np.float32(res.threshold)) & breast)
    assert res.mask[41, 41] and res.mask[70, 20]
    assert res.threshold == pytest.approx(res.response_mean + TopHatConfig().k * res.response_sd)


def test_min_area_drops_small_components_below_half() -> None:
    img = np.full((64, 64), 0.3, dtype=np.float32)
    img[20:23, 20:23] = 1.0  # 9 px
    img[40, 40] = 1.0  # 1 px
    breast = np.ones(img.shape, dtype=bool)
    res = tophat_detect(img, breast, H, TopHatConfig(k=1.0, min_area_px=4))
    assert res.mask[21, 21] and not res.mask[40, 40]
    assert res.prob[40, 40] < 0.5
    np.testing.assert_array_equal(res.prob >= 0.5, res.mask)


def test_flat_image_and_empty_breast_detect_nothing() -> None:
    img = np.full((32, 32), 0.4, dtype=np.float32)
    assert not tophat_detect(img, np.ones(img.shape, bool), H).mask.any()
    res = tophat_detect(img, np.zeros(img.shape, bool), H)
    assert not res.mask.any() and (res.prob == 0).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TopHatConfig(radius_mm=0.0)
    with pytest.raises(ValueError):
        TopHatConfig(min_area_px=0)


def _synthetic(rng: np.random.Generator, shape: tuple[int, int] = (256, 256), n: int = 15):
    """Bright discs of 2-4 px diameter on a smooth, textured, noisy background (docs/baseline.md)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    bg = 0.5 + 0.15 * ndi.gaussian_filter(rng.standard_normal(shape), 30) / 0.0094
    bg += 0.01 * ndi.gaussian_filter(rng.standard_normal(shape), 3) / 0.094
    labels = np.zeros(shape, dtype=np.int32)
    sig = np.zeros(shape)
    for i in range(n):
        c = rng.uniform(10, np.array(shape) - 10)
        d = rng.uniform(2, 4)
        m = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= (d / 2) ** 2
        labels[m & (labels == 0)] = i + 1
        sig[m] = np.maximum(sig[m], np.exp(rng.uniform(np.log(0.1), np.log(0.3))))
    x0 = np.maximum(bg, 0.05) + ndi.gaussian_filter(sig, 0.7)
    x = x0 + rng.standard_normal(shape) * 0.01 * np.sqrt(x0)
    return np.maximum(x, 0).astype(np.float32), labels


def test_default_detects_synthetic_mcs() -> None:
    rng = np.random.default_rng(0)
    confs, matches = [], []
    for _ in range(4):
        img, labels = _synthetic(rng)
        breast = np.ones(img.shape, dtype=bool)
        res = tophat_detect(img, breast, H)
        confs.append(confusion(res.mask, labels > 0, breast))
        matches.append(match_mcs(res.mask, true_from_labels(labels), H, res.prob))
        f = extract_findings(res.prob, res.mask, H, image=img)  # the findings apply unchanged
        assert len(f.mcs) == matches[-1].n_pred
    s, d = summarize_pixels(confs), summarize_detections(matches)
    assert d.sensitivity >= 0.85, d
    assert d.fps_per_image <= 3.0, d
    assert s.pooled.dice >= 0.6, s.pooled


def test_full_size_runs_under_two_seconds() -> None:
    rng = np.random.default_rng(1)
    shape = (3328, 2560)
    img = rng.random(shape, dtype=np.float32)
    breast = np.zeros(shape, dtype=bool)
    breast[150:3200, :1900] = True
    times = []
    for _ in range(2):  # best of two: the CPU is shared
        t = time.perf_counter()
        tophat_detect(img, breast, H)
        times.append(time.perf_counter() - t)
    assert min(times) < 2.0, times

"""SPEC §8 metrics: pixel, MC (0.5 mm nearest-pixel rule, FROC) and cluster level, with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from mcgenref_fast.config import FindingsConfig
from mcgenref_fast.findings import extract_findings, label_components
from mcgenref_fast.metrics import Confusion, confusion, mean_sd, pixel_metrics, summarize_pixels
from mcgenref_fast.metrics_cluster import match_clusters, predicted_clusters
from mcgenref_fast.metrics_mc import (DetectionMatch, cpm, froc, match_mcs, partial_auc, sensitivity_at,
                                      summarize_detections, true_from_labels, true_from_mask, true_from_points)

nan = math.nan


# ------------------------------------------------------------------------------------------ pixel
def test_both_empty_dice_iou_one_other_ratios_undefined() -> None:
    z = np.zeros((10, 10), dtype=bool)
    c = confusion(z, z)
    assert c == Confusion(0, 0, 0, 100)
    m = pixel_metrics(c)
    assert m.dice == 1.0 and m.iou == 1.0
    assert math.isnan(m.precision) and math.isnan(m.recall) and math.isnan(m.fnr)
    assert m.specificity == 1.0
    assert math.isnan(m.balanced_accuracy) and math.isnan(m.g_mean)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["precision"] is None and d["dice"] == 1.0


def test_perfect_match() -> None:
    t = np.zeros((10, 10), dtype=bool)
    t[2:5, 3:6] = True
    m = pixel_metrics(confusion(t, t))
    assert (m.dice, m.iou, m.precision, m.recall, m.fnr, m.specificity, m.balanced_accuracy, m.g_mean) == (
        1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0)


def test_partial_overlap_by_hand_inside_region() -> None:
    true = np.zeros((12, 12), dtype=bool)
    pred = np.zeros_like(true)
    true[2:5, 2:5] = True  # 9 px
    pred[3:5, 3:6] = True  # 6 px, 4 of them on the truth
    pred[11, 11] = True  # outside the region: ignored
    region = np.zeros_like(true)
    region[:10, :10] = True  # 100 px
    c = confusion(pred, true, region)
    assert c == Confusion(tp=4, fp=2, fn=5, tn=89)
    m = pixel_metrics(c)
    assert m.dice == pytest.approx(8 / 15)
    assert m.iou == pytest.approx(4 / 11)
    assert m.precision == pytest.approx(4 / 6)
    assert m.recall == pytest.approx(4 / 9)
    assert m.fnr == pytest.approx(5 / 9)
    assert m.specificity == pytest.approx(89 / 91)
    assert m.balanced_accuracy == pytest.approx((4 / 9 + 89 / 91) / 2)
    assert m.g_mean == pytest.approx(math.sqrt(4 / 9 * 89 / 91))


def test_one_side_empty() -> None:
    t = np.zeros((5, 5), dtype=bool)
    p = t.copy()
    t[1, 1] = True
    m = pixel_metrics(confusion(p, t))  # nothing predicted
    assert m.dice == 0.0 and m.iou == 0.0 and m.recall == 0.0 and m.fnr == 1.0
    assert math.isnan(m.precision) and m.specificity == 1.0 and m.g_mean == 0.0
    m = pixel_metrics(confusion(t, p))  # MC-free image, one false pixel
    assert m.dice == 0.0 and m.precision == 0.0 and math.isnan(m.recall)
    assert m.specificity == pytest.approx(24 / 25)
    all_true = np.ones((2, 2), dtype=bool)
    assert math.isnan(pixel_metrics(confusion(all_true, all_true)).specificity)  # no negative pixel


def test_summary_pooled_from_counts_and_per_image_mean_sd_skip_undefined() -> None:
    cs = [Confusion(4, 2, 5, 89), Confusion(0, 0, 0, 100), Confusion(0, 1, 0, 99)]
    s = summarize_pixels(cs)
    assert s.counts == Confusion(4, 3, 5, 288)
    assert s.pooled.dice == pytest.approx(8 / 16)
    assert s.per_image["dice"].n == 3
    assert s.per_image["dice"].mean == pytest.approx((8 / 15 + 1 + 0) / 3)
    assert s.per_image["dice"].sd == pytest.approx(np.std([8 / 15, 1, 0], ddof=1))
    assert s.per_image["recall"].n == 1 and math.isnan(s.per_image["recall"].sd)
    assert s.per_image["precision"].n == 2  # image 2 predicted nothing
    assert mean_sd([nan, nan]).n == 0 and math.isnan(mean_sd([]).mean)
    json.dumps(s.to_dict())


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# --------------------------------------------------------------------------------------------- MC
def _px(shape: tuple[int, int], *pts: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for r, c in pts:
        m[r, c] = True
    return m


def test_empty_masks() -> None:
    z = np.zeros((20, 20), dtype=bool)
    m = match_mcs(z, true_from_mask(z), 0.07)
    assert (m.n_true, m.n_pred, m.n_found, m.n_fp) == (0, 0, 0, 0)
    s = summarize_detections([m])
    assert math.isnan(s.sensitivity) and s.fps_per_image == 0.0
    assert math.isnan(froc([m]).sensitivity[0])


def test_one_perfect_match() -> None:
    t = np.zeros((30, 30), dtype=bool)
    t[10:13, 10:13] = True
    prob = t * 0.7
    m = match_mcs(t, true_from_mask(t), 0.07, prob)
    assert (m.n_true, m.n_found, m.n_pred, m.n_fp) == (1, 1, 1, 0)
    assert m.true_best_score[0] == pytest.approx(0.7)


def test_touching_true_mcs_keep_identity_in_a_label_image() -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[5:8, 5:8] = 3
    labels[5:8, 8:11] = 7  # touches MC 3
    pred = labels > 0
    by_label = match_mcs(pred, true_from_labels(labels), 0.07)
    assert by_label.n_true == 2 and by_label.n_found == 2 and by_label.n_pred == 1 and by_label.n_fp == 0
    by_mask = match_mcs(pred, true_from_mask(labels > 0), 0.07)  # a mask merges them
    assert by_mask.n_true == 1 and by_mask.n_found == 1


@pytest.mark.parametrize(
    "spacing, offset, found",
    [
        (0.07, (0, 7), True),  # 7 px = 0.49 mm
        (0.07, (5, 5), True),  # 7.07 px = 0.495 mm
        (0.07, (6, 4), False),  # 7.21 px = 0.505 mm
        (0.07, (0, 8), False),
        (0.2, (0, 2), True),  # 0.4 mm
        (0.2, (1, 2), True),  # 0.447 mm
        (0.2, (2, 2), False),  # 0.566 mm
        (0.2, (0, 3), False),  # 0.6 mm
        (0.1, (3, 4), True),  # exactly 0.5 mm: inclusive
        (0.1, (1, 5), False),  # 0.51 mm
    ],
)
def test_half_millimetre_boundary(spacing: float, offset: tuple[int, int], found: bool) -> None:
    shape = (40, 40)
    true = _px(shape, (10, 10))
    pred = _px(shape, (10 + offset[0], 10 + offset[1]))
    m = match_mcs(pred, true_from_mask(true), spacing)
    assert m.n_found == int(found) and m.n_fp == int(not found)
    pts = match_mcs(pred, true_from_points(np.array([[10.3, 9.6]]), shape), spacing)  # the pixel (10, 10)
    assert pts.n_found == int(found)


def test_nearest_pixels_not_centroids() -> None:
    shape = (40, 60)
    true = np.zeros(shape, dtype=bool)
    true[10, 5:25] = True  # long MC: centroid far from its end
    pred = _px(shape, (10, 31))  # 6 px = 0.42 mm from the end at 0.07 mm/px
    assert match_mcs(pred, true_from_mask(true), 0.07).n_found == 1


def test_matching_equals_the_distance_transform_rule_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    for spacing in (0.07, 0.2):
        r_px = 0.5 / spacing
        for _ in range(3):
            shape = (70, 90)
            true = ndi.binary_dilation(rng.random(shape) > 0.99)
            pred = rng.random(shape) > 0.98
            pred |= ndi.binary_dilation(rng.random(shape) > 0.995, structure=np.ones((3, 3)))
            prob = rng.random(shape)
            m = match_mcs(pred, true_from_mask(true), spacing, prob)
            tl, nt = label_components(true)
            pl, npred = label_components(pred)
            d_pred = ndi.distance_transform_edt(~pred)
            d_true = ndi.distance_transform_edt(~true)
            want_found = ndi.minimum(d_pred, tl, np.arange(1, nt + 1)) <= r_px + 1e-9
            want_tp = ndi.minimum(d_true, pl, np.arange(1, npred + 1)) <= r_px + 1e-9
            np.testing.assert_array_equal(m.true_found, want_found)
            np.testing.assert_array_equal(m.pred_is_tp, want_tp)
            np.testing.assert_allclose(m.pred_scores, ndi.maximum(prob, pl, np.arange(1, npred + 1)))


def test_points_outside_the_image_are_refused() -> None:
    with pytest.raises(ValueError):
        true_from_points(np.array([[-1.0, 3.0]]), (10, 10))


def _dm(best: list[float], scores: list[float], tp: list[bool]) -> DetectionMatch:
    return DetectionMatch(np.array(best, dtype=float), np.array(scores, dtype=float), np.array(tp, dtype=bool))


def test_froc_by_hand() -> None:
    # image 1: true A matched by a 0.9 prediction, a 0.8 false positive;
    # image 2: true B matched by 0.6, true C missed, a 0.95 false positive.
    ms = [_dm([0.9], [0.9, 0.8], [True, False]), _dm([0.6, -np.inf], [0.6, 0.95], [True, False])]
    c = froc(ms)
    np.testing.assert_allclose(c.thresholds, [np.inf, 0.95, 0.9, 0.8, 0.6])
    np.testing.assert_allclose(c.fps_per_image, [0.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(c.sensitivity, [0, 0, 1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(sensitivity_at(c, [0.25, 0.5, 1.0, 8.0]), [0, 1 / 3, 2 / 3, 2 / 3])
    assert partial_auc(c, 1.0) == pytest.approx(1 / 6)
    assert partial_auc(c, 2.0) == pytest.approx((0.5 * 1 / 3 + 1.0 * 2 / 3) / 2)
    assert cpm(c, [0.5, 1.0]) == pytest.approx(0.5)
    s = summarize_detections(ms)
    assert (s.n_true, s.n_found, s.n_fp, s.sensitivity, s.fps_per_image) == (3, 2, 2, 2 / 3, 1.0)


def test_froc_is_monotonic_and_ends_at_the_operating_point() -> None:
    rng = np.random.default_rng(11)
    ms = []
    for _ in range(4):
        shape = (60, 60)
        true = ndi.binary_dilation(rng.random(shape) > 0.993)
        pred = ndi.binary_dilation(rng.random(shape) > 0.99) | true
        ms.append(match_mcs(pred, true_from_mask(true), 0.07, rng.random(shape)))
    c = froc(ms)
    assert c.fps_per_image[0] == 0 and c.sensitivity[0] == 0
    assert np.all(np.diff(c.fps_per_image) >= 0) and np.all(np.diff(c.sensitivity) >= 0)
    s = summarize_detections(ms)
    assert c.fps_per_image[-1] == pytest.approx(s.fps_per_image)
    assert c.sensitivity[-1] == pytest.approx(s.sensitivity)


# ---------------------------------------------------------------------------------------- cluster
def test_cluster_found_within_max_of_radius_and_5mm() -> None:
    spacing = 0.2  # 5 mm = 25 px
    centre, radius = np.array([[100.0, 100.0]]), np.array([20.0])
    hit = match_clusters([[100.0, 125.0]], [0.8], centre, radius, spacing)
    assert hit.n_found == 1 and hit.n_fp == 0  # 25 px = 5 mm, inclusive
    miss = match_clusters([[100.0, 126.0]], [0.8], centre, radius, spacing)
    assert miss.n_found == 0 and miss.n_fp == 1
    wide = match_clusters([[100.0, 139.0]], [0.8], centre, np.array([40.0]), spacing)
    assert wide.n_found == 1  # annotated radius 40 px > 25 px


def test_cluster_empty_cases_and_aggregation() -> None:
    none_pred = match_clusters(np.zeros((0, 2)), [], [[10.0, 10.0]], [5.0], 0.07)
    none_true = match_clusters([[10.0, 10.0], [500.0, 500.0]], [0.9, 0.4], np.zeros((0, 2)), [], 0.07)
    s = summarize_detections([none_pred, none_true])
    assert (s.n_true, s.n_found, s.n_fp, s.fps_per_image) == (1, 0, 2, 1.0)


def test_predicted_clusters_from_findings() -> None:
    m = np.zeros((60, 400), dtype=bool)
    for i in range(5):
        m[20:22, 20 + 40 * i : 22 + 40 * i] = True
    f = extract_findings(m * 0.9, m, 0.07, to_input=lambda p: p * 2.0, cfg=FindingsConfig())
    cents, scores = predicted_clusters(f)
    np.testing.assert_allclose(cents, [[41.0, 2 * 100.5]])
    np.testing.assert_allclose(scores, [0.9])
    assert match_clusters(cents, scores, [[40.0, 200.0]], [10.0], 0.035).n_found == 1
    with pytest.raises(ValueError):
        predicted_clusters(extract_findings(m * 0.9, m, 0.07))

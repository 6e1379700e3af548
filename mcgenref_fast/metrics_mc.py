"""SPEC §8 MC-level metrics: matching within 0.5 mm (nearest pixels), sensitivity, FPs/image, FROC.

A true MC is **found** when a predicted component comes within `tolerance_mm` of it, distance measured
between the nearest pixel centres of the two (0 when they overlap); a predicted component with no true MC
within `tolerance_mm` is a **false positive**. Comparisons are inclusive (`≤`).

True MCs come in three forms (all in the grid of the predicted mask, whose pixel pitch is `spacing_mm`):
- `true_from_mask(mask)`: 8-connected components — two true MCs that touch become **one** true MC;
- `true_from_labels(labels)`: one true MC per positive label — touching MCs **keep their identity**;
- `true_from_points(points_rc, shape)`: point marks; each one is the single pixel that contains it.

Exactness and speed: overlaps are read from the label image; other pairs within the tolerance come from
KD-trees on **boundary** pixels only (the nearest pixel of a set to any pixel outside it is a boundary
pixel), which equals the distance-transform rule "EDT of the predicted mask ≤ tolerance at some pixel of
the true MC" (tested against it).

FROC: the candidates are the components of the given (candidate) mask, each scored by its maximum
probability; sweeping a threshold `s` keeps the candidates with score ≥ s. A true MC is found at `s` when
its best matching candidate scores ≥ s. Pass a mask at a lower threshold than the operating point to
extend the curve to higher FP rates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from mcgenref_fast.findings import component_pixels, label_components

MC_TOLERANCE_MM: float = 0.5  # SPEC §8
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # CPM operating points
_DIST_EPS_PX = 1e-9


# --------------------------------------------------------------------------------------------------
# True MCs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrueMCs:
    """True MCs as pixel sets: `ids[i]` (0..n-1) owns pixel `(rows[i], cols[i])`."""

    n: int
    shape: tuple[int, int]
    ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    boundary: np.ndarray


def true_from_labels(labels: np.ndarray) -> TrueMCs:
    """One true MC per positive label value (touching MCs keep their identity); ids follow label order."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    values, inverse = np.unique(labels, return_inverse=True)
    if values.size and values[0] < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    offset = 1 if values.size and values[0] == 0 else 0
    dense = inverse.reshape(labels.shape) + (1 - offset)  # background 0; MCs 1..n in label order
    cp = component_pixels(dense.astype(np.int64), values.size - offset)
    return TrueMCs(cp.n, labels.shape, cp.pixel_labels - 1, cp.rows, cp.cols, cp.boundary)


def true_from_mask(mask: np.ndarray) -> TrueMCs:
    """True MCs = 8-connected components of a boolean mask (touching MCs merge into one)."""
    labels, n = label_components(mask)
    cp = component_pixels(labels, n)
    return TrueMCs(n, labels.shape, cp.pixel_labels - 1, cp.rows, cp.cols, cp.boundary)


def true_from_points(points_rc: np.ndarray, shape: tuple[int, int]) -> TrueMCs:
    """True MCs = point marks `(row, col)` in px; each is the pixel containing it (round half up)."""
    pts = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    rc = np.floor(pts + 0.5).astype(np.int64)
    h, w = shape
    if rc.size and ((rc[:, 0] < 0) | (rc[:, 0] >= h) | (rc[:, 1] < 0) | (rc[:, 1] >= w)).any():
        raise ValueError(f"point annotations fall outside the image of shape {shape}")
    n = rc.shape[0]
    return TrueMCs(n, (int(h), int(w)), np.arange(n), rc[:, 0], rc[:, 1], np.ones(n, dtype=bool))


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DetectionMatch:
    """Matches of one image (MCs or clusters).

    true_best_score: (n_true,) highest score of a prediction matching each true object, -inf if none;
    pred_scores: (n_pred,); pred_is_tp: (n_pred,) whether a prediction matches some true object.
    """

    true_best_score: np.ndarray
    pred_scores: np.ndarray
    pred_is_tp: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_best_score.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_scores.size)

    @property
    def true_found(self) -> np.ndarray:
        return np.isfinite(self.true_best_score)

    @property
    def n_found(self) -> int:
        return int(np.count_nonzero(self.true_found))

    @property
    def n_fp(self) -> int:
        return int(np.count_nonzero(~self.pred_is_tp))


def detection_match(n_true: int, pred_scores: np.ndarray, pair_true: np.ndarray,
                    pair_pred: np.ndarray) -> DetectionMatch:
    """Build a `DetectionMatch` from matching pairs (true index, prediction index)."""
    pred_scores = np.asarray(pred_scores, dtype=np.float64)
    best = np.full(n_true, -np.inf)
    np.maximum.at(best, pair_true, pred_scores[pair_pred])
    is_tp = np.zeros(pred_scores.size, dtype=bool)
    is_tp[pair_pred] = True
    return DetectionMatch(best, pred_scores, is_tp)


def match_mcs(pred_mask: np.ndarray, true: TrueMCs, spacing_mm: float, prob: Optional[np.ndarray] = None,
              tolerance_mm: float = MC_TOLERANCE_MM) -> DetectionMatch:
    """Match the 8-connected components of `pred_mask` to `true` MCs within `tolerance_mm`.

    Component scores are the max of `prob` over each component (1.0 for every component without prob).
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    if pred_mask.shape != tuple(true.shape):
        raise ValueError(f"pred_mask shape {pred_mask.shape} differs from the annotation's {true.shape}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    labels, n = label_components(pred_mask)
    cp = component_pixels(labels, n)
    if prob is None:
        scores = np.ones(n)
    else:
        prob = np.asarray(prob)
        if prob.shape != pred_mask.shape:
            raise ValueError(f"prob shape {prob.shape} differs from mask shape {pred_mask.shape}")
        scores = np.maximum.reduceat(prob[cp.rows, cp.cols].astype(np.float64), cp.starts[:-1]) if n else np.ones(0)
    pred_lab = cp.pixel_labels - 1
    # overlaps
    over = labels[true.rows, true.cols]
    sel = over > 0
    pt, pp = [true.ids[sel]], [over[sel].astype(np.int64) - 1]
    # nearest boundary pixels within the tolerance
    tb, pb = np.flatnonzero(true.boundary), np.flatnonzero(cp.boundary)
    if tb.size and pb.size:
        t_tree = cKDTree(np.stack([true.rows[tb], true.cols[tb]], axis=1).astype(np.float64))
        p_tree = cKDTree(np.stack([cp.rows[pb], cp.cols[pb]], axis=1).astype(np.float64))
        sdm = t_tree.sparse_distance_matrix(p_tree, tolerance_mm / spacing_mm + _DIST_EPS_PX, output_type="ndarray")
        pt.append(true.ids[tb[sdm["i"]]])
        pp.append(pred_lab[pb[sdm["j"]]])
    pairs = np.unique(np.stack([np.concatenate(pt), np.concatenate(pp)], axis=1).astype(np.int64), axis=0)
    return detection_match(true.n, scores, pairs[:, 0], pairs[:, 1])


# --------------------------------------------------------------------------------------------------
# Aggregation and FROC
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionSummary:
    """Per-dataset detection figures: sensitivity = found / true (NaN with no true object)."""

    n_images: int
    n_true: int
    n_found: int
    n_pred: int
    n_fp: int

    @property
    def sensitivity(self) -> float:
        return self.n_found / self.n_true if self.n_true else math.nan

    @property
    def fps_per_image(self) -> float:
        return self.n_fp / self.n_images if self.n_images else math.nan

    def to_dict(self) -> dict[str, object]:
        sens, fpi = self.sensitivity, self.fps_per_image
        return {
            "n_images": self.n_images, "n_true": self.n_true, "n_found": self.n_found,
            "n_pred": self.n_pred, "n_fp": self.n_fp,
            "sensitivity": None if math.isnan(sens) else sens,
            "fps_per_image": None if math.isnan(fpi) else fpi,
        }


def summarize_detections(matches: Sequence[DetectionMatch]) -> DetectionSummary:
    """Sum matches over images."""
    return DetectionSummary(
        n_images=len(matches),
        n_true=sum(m.n_true for m in matches),
        n_found=sum(m.n_found for m in matches),
        n_pred=sum(m.n_pred for m in matches),
        n_fp=sum(m.n_fp for m in matches),
    )


@dataclass(frozen=True, eq=False)
class FROCCurve:
    """FROC points, threshold descending: point k keeps predictions with score ≥ thresholds[k].

    The first point (threshold +inf) is (0 FPs/image, sensitivity 0); both coordinates never decrease.
    """

    thresholds: np.ndarray
    fps_per_image: np.ndarray
    sensitivity: np.ndarray
    n_images: int
    n_true: int


def froc(matches: Sequence[DetectionMatch]) -> FROCCurve:
    """FROC curve over a dataset by sweeping the prediction score."""
    n_images = len(matches)
    if n_images == 0:
        raise ValueError("froc needs at least one image")
    scores = np.concatenate([m.pred_scores for m in matches])
    fp_scores = np.sort(np.concatenate([m.pred_scores[~m.pred_is_tp] for m in matches]))
    best = np.sort(np.concatenate([m.true_best_score for m in matches]))
    n_true = int(best.size)
    thr = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    n_fp = fp_scores.size - np.searchsorted(fp_scores, thr, side="left")
    n_found = best.size - np.searchsorted(best, thr, side="left")
    sens = n_found / n_true if n_true else np.full(thr.size, np.nan)
    return FROCCurve(thr, n_fp / n_images, np.asarray(sens, dtype=np.float64), n_images, n_true)


def sensitivity_at(curve: FROCCurve, fps_per_image: Sequence[float] = FROC_FP_RATES) -> np.ndarray:
    """Highest sensitivity reached at or below each FP rate (conservative step reading of the curve)."""
    out = []
    for f in fps_per_image:
        ok = curve.fps_per_image <= f + _DIST_EPS_PX
        out.append(float(curve.sensitivity[ok].max()))
    return np.asarray(out)


def cpm(curve: FROCCurve, fps_per_image: Sequence[float] = FROC_FP_RATES) -> float:
    """Competition performance metric: mean sensitivity at the given FP rates."""
    return float(np.mean(sensitivity_at(curve, fps_per_image)))


def partial_auc(curve: FROCCurve, max_fps_per_image: float) -> float:
    """Area under the step curve `sens(f) = max sensitivity at ≤ f FPs/image` on [0, max], divided by max.

    In [0, 1]: 1 means sensitivity 1 from 0 FPs/image on.
    """
    if not max_fps_per_image > 0:
        raise ValueError(f"max_fps_per_image must be > 0, got {max_fps_per_image}")
    f, s = curve.fps_per_image, np.maximum.accumulate(curve.sensitivity)
    # step function: value s[k] on [f[k], f[k+1]) (f is non-decreasing)
    edges = np.minimum(np.append(f, max_fps_per_image), max_fps_per_image)
    widths = np.clip(np.diff(edges), 0.0, None)
    return float(np.sum(widths * s) / max_fps_per_image)

"""SPEC §8 cluster-level metrics.

A true cluster (centre, radius; px of one grid of pitch `spacing_mm`) is **found** when a predicted
cluster's centroid lies within `max(radius, CLUSTER_MIN_RADIUS_MM)` of its centre (inclusive); a predicted
cluster that lies within that distance of no true cluster is a **false positive**. Regional clusters count
like any other predicted cluster. Aggregation (sensitivity, FP clusters per image) and FROC reuse
`metrics_mc.DetectionMatch`, `summarize_detections` and `froc`.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.spatial.distance import cdist

from mcgenref_fast.metrics_mc import DetectionMatch, detection_match

CLUSTER_MIN_RADIUS_MM: float = 5.0  # SPEC §8: tolerance never below 5 mm
_DIST_EPS_PX = 1e-9


def match_clusters(pred_centroids_px: np.ndarray, pred_scores: np.ndarray, true_centres_px: np.ndarray,
                   true_radii_px: np.ndarray, spacing_mm: float,
                   min_radius_mm: float = CLUSTER_MIN_RADIUS_MM) -> DetectionMatch:
    """Match predicted cluster centroids `(m, 2)` (row, col) px to true clusters `(n, 2)` with radii `(n,)` px."""
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    pc = np.asarray(pred_centroids_px, dtype=np.float64).reshape(-1, 2)
    ps = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    tc = np.asarray(true_centres_px, dtype=np.float64).reshape(-1, 2)
    tr = np.asarray(true_radii_px, dtype=np.float64).reshape(-1)
    if ps.size != pc.shape[0] or tr.size != tc.shape[0]:
        raise ValueError("one score per predicted cluster and one radius per true cluster are needed")
    tol = np.maximum(tr, min_radius_mm / spacing_mm)
    if pc.shape[0] and tc.shape[0]:
        ok = cdist(tc, pc) <= tol[:, None] + _DIST_EPS_PX
        pair_true, pair_pred = np.nonzero(ok)
    else:
        pair_true = pair_pred = np.zeros(0, dtype=np.int64)
    return detection_match(tc.shape[0], ps, pair_true, pair_pred)


def predicted_clusters(findings: Any, grid: Literal["input", "canonical"] = "input") -> tuple[np.ndarray, np.ndarray]:
    """Centroids `(m, 2)` px in the chosen grid and scores `(m,)` of a `findings.Findings`."""
    attr = "centroid_input_px" if grid == "input" else "centroid_px"
    cents = [getattr(c, attr) for c in findings.clusters]
    if any(c is None for c in cents):
        raise ValueError("these findings carry no input-grid coordinates (extract them with to_input=)")
    return (np.asarray(cents, dtype=np.float64).reshape(-1, 2),
            np.asarray([c.score for c in findings.clusters], dtype=np.float64))

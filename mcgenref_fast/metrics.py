"""SPEC §8 pixel-level metrics inside the breast mask, per image and pooled.

Conventions for empty denominators (explicit, tested):
- Dice and IoU are 1 when the prediction and the truth are both empty (SPEC), i.e. TP + FP + FN = 0.
- Every other ratio with a zero denominator is **undefined (NaN)**: precision with nothing predicted,
  recall / FNR with no true pixel, specificity with no negative pixel; balanced accuracy and G-Mean are
  NaN when recall or specificity is. NaN is never turned into 0 or 1 silently.
- Per-image summaries (mean ± sd) skip NaN values and report how many images were defined (`n`);
  sd is the sample sd (ddof = 1), NaN with fewer than two defined images.
- Pooled metrics are computed from the confusion counts summed over all images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Pixel confusion counts (ints) of one image, or summed over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def confusion(pred: np.ndarray, true: np.ndarray, region: Optional[np.ndarray] = None) -> Confusion:
    """Confusion counts of two boolean (H, W) masks over `region` (the breast mask; None = every pixel)."""
    pred = np.asarray(pred, dtype=bool)
    true = np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true shapes differ: {pred.shape} vs {true.shape}")
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != pred.shape:
            raise ValueError(f"region shape {region.shape} differs from mask shape {pred.shape}")
        pred, true = pred[region], true[region]
    n = int(pred.size)
    tp = int(np.count_nonzero(pred & true))
    p = int(np.count_nonzero(pred))
    t = int(np.count_nonzero(true))
    fp, fn = p - tp, t - tp
    return Confusion(tp, fp, fn, n - tp - fp - fn)


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else math.nan


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel metrics of one confusion table (NaN = undefined, see the module docstring)."""

    dice: float
    iou: float
    precision: float
    recall: float
    fnr: float
    specificity: float
    balanced_accuracy: float
    g_mean: float

    def to_dict(self) -> dict[str, Optional[float]]:
        return {f.name: _json_float(getattr(self, f.name)) for f in fields(self)}


def _json_float(v: float) -> Optional[float]:
    return None if math.isnan(v) else float(v)


METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PixelMetrics))


def pixel_metrics(c: Confusion) -> PixelMetrics:
    """Dice, IoU, precision, recall, FNR, specificity, balanced accuracy and G-Mean of a confusion table."""
    union = c.tp + c.fp + c.fn
    dice = 1.0 if union == 0 else 2 * c.tp / (2 * c.tp + c.fp + c.fn)
    iou = 1.0 if union == 0 else c.tp / union
    recall = _ratio(c.tp, c.tp + c.fn)
    spec = _ratio(c.tn, c.tn + c.fp)
    return PixelMetrics(
        dice=dice,
        iou=iou,
        precision=_ratio(c.tp, c.tp + c.fp),
        recall=recall,
        fnr=1.0 - recall,
        specificity=spec,
        balanced_accuracy=(recall + spec) / 2.0,
        g_mean=math.sqrt(recall * spec),
    )


@dataclass(frozen=True)
class MeanSd:
    """Mean ± sample sd over the images where a metric is defined (`n` of them)."""

    mean: float
    sd: float
    n: int

    def to_dict(self) -> dict[str, object]:
        return {"mean": _json_float(self.mean), "sd": _json_float(self.sd), "n": self.n}


def mean_sd(values: Iterable[float]) -> MeanSd:
    """NaN-skipping mean and sample sd (ddof = 1; NaN with fewer than two values)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    mean = float(v.mean()) if v.size else math.nan
    sd = float(v.std(ddof=1)) if v.size >= 2 else math.nan
    return MeanSd(mean, sd, int(v.size))


@dataclass(frozen=True)
class PixelSummary:
    """Per-dataset pixel metrics: pooled (summed counts) and per-image mean ± sd."""

    n_images: int
    counts: Confusion
    pooled: PixelMetrics
    per_image: dict[str, MeanSd]

    def to_dict(self) -> dict[str, object]:
        return {
            "n_images": self.n_images,
            "counts": {f.name: getattr(self.counts, f.name) for f in fields(self.counts)},
            "pooled": self.pooled.to_dict(),
            "per_image": {k: v.to_dict() for k, v in self.per_image.items()},
        }


def summarize_pixels(per_image: Sequence[Confusion]) -> PixelSummary:
    """Pool confusion tables (sum of counts) and summarise the per-image metrics."""
    total = sum(per_image, Confusion())
    metrics = [pixel_metrics(c) for c in per_image]
    per = {name: mean_sd(getattr(m, name) for m in metrics) for name in METRIC_NAMES}
    return PixelSummary(len(per_image), total, pixel_metrics(total), per)

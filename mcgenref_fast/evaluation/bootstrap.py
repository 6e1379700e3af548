"""Paired bootstrap over images of the pooled pixel recall and Dice differences between two methods.

Why: issue 11's bar compares pooled figures of TT-GPR and the initializer on the same few dozen images, and the
differences it turns on are a few thousandths. Resampling the images (with replacement, the same draw for both
methods) says how far such a difference could move on another draw of images like these: a 95 % interval that
straddles 0 means the set cannot tell the two apart.

The per-image pixel counts come from an evaluation's cache (`OUT/cache/metrics.jsonl`, one record per image,
method and operating threshold; the last record wins when an image was scored more than once).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcgenref_fast.errors import EvaluationError

COUNTS = ("tp", "fp", "fn")


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B on the same images: pooled recall and Dice, each with its bootstrap interval."""

    n_images: int
    n_resamples: int
    level: float
    recall_diff: float
    recall_ci: tuple[float, float]
    dice_diff: float
    dice_ci: tuple[float, float]
    p_recall_not_above: float     # share of resamples where A's pooled recall is not above B's

    def recall_text(self) -> str:
        lo, hi = self.recall_ci
        return f"{self.recall_diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    def dice_text(self) -> str:
        lo, hi = self.dice_ci
        return f"{self.dice_diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def metrics_file(run_dir: str | Path) -> Path:
    """The cache's metrics.jsonl of a results folder: `run/cache/`, or the parent's for a `threshold_T/`
    re-scoring. EvaluationError when neither exists."""
    run = Path(run_dir)
    for folder in (run, run.parent):
        f = folder / "cache" / "metrics.jsonl"
        if f.is_file():
            return f
    raise EvaluationError(f"{run}: no cache/metrics.jsonl here or in its parent: the per-image counts the "
                          "bootstrap needs are in the cache of `mcgenref eval` / sweep_refine.py; re-run it there")


def pixel_counts(run_dir: str | Path, method: str, threshold: float) -> dict[str, np.ndarray]:
    """item → (tp, fp, fn) pixel counts of `method` scored at `threshold` in that run's cache."""
    path = metrics_file(run_dir)
    out: dict[str, np.ndarray] = {}
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            try:
                rec = json.loads(line)
                if rec.get("method") != method or abs(float(rec.get("threshold")) - threshold) > 1e-9:
                    continue
                out[str(rec["item"])] = np.array([int(rec["pixel"][k]) for k in COUNTS], np.int64)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise EvaluationError(f"{path}: line {n} is not a metrics record ({exc!r}): delete the cache "
                                      "folder and re-run the evaluation") from None
    if not out:
        raise EvaluationError(f"{path}: no record of method {method!r} at threshold {threshold:g}")
    return out


def _pooled(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled recall and Dice of (..., n_images, 3) count arrays summed over images (NaN where undefined)."""
    tp, fp, fn = np.moveaxis(counts.sum(axis=-2), -1, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), 2 * tp / (2 * tp + fp + fn)


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """A − B in pooled recall and Dice, with percentile intervals from `n_resamples` paired resamples of the
    images. EvaluationError when the two did not score the same images."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise EvaluationError(f"the two methods scored different images ({len(only)} differ, e.g. {only[:3]}): "
                              "compare runs over the same dataset")
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise EvaluationError(f"n_resamples must be >= 1 and level in (0, 1), got {n_resamples}, {level}")
    items = sorted(a)
    ca = np.stack([a[i] for i in items])
    cb = np.stack([b[i] for i in items])
    rec_a, dice_a = _pooled(ca)
    rec_b, dice_b = _pooled(cb)
    draw = np.random.default_rng(seed).integers(0, len(items), size=(n_resamples, len(items)))
    rr_a, dd_a = _pooled(ca[draw])
    rr_b, dd_b = _pooled(cb[draw])
    d_rec, d_dice = rr_a - rr_b, dd_a - dd_b
    tail = 100.0 * (1.0 - level) / 2.0
    ci = lambda d: tuple(float(v) for v in np.nanpercentile(d, [tail, 100.0 - tail]))  # noqa: E731
    return PairedDifference(
        n_images=len(items), n_resamples=n_resamples, level=level,
        recall_diff=float(rec_a - rec_b), recall_ci=ci(d_rec), dice_diff=float(dice_a - dice_b), dice_ci=ci(d_dice),
        p_recall_not_above=float(np.mean(~(d_rec > 0))),
    )

"""Paired bootstrap over images of the pooled pixel recall and Dice differences between two methods.

Why: issue 11's bar compares pooled figures of TT-GPR and the initializer on the same few dozen images, and the
differences it turns on are a few thousandths. Resampling the images (with replacement, the same draw for both
methods) says how far such a difference could move on another draw of images like these: a 95 % interval that
straddles 0 means the set cannot tell the two apart.

The per-image pixel counts are those of the row's own `results.json` (`per_image[*].pixel_counts`, written since
2026-11-28), so a bootstrap describes exactly the images and settings of the row it is printed beside. An older
results.json without them falls back to its run's cache (`cache/metrics.jsonl`, restricted to the images the
results.json lists; the last record of an image wins, so a cache shared by several settings may mix them:
re-running the eval command rewrites results.json from the cache in seconds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
    raise EvaluationError(f"{run}: no cache/metrics.jsonl here or in its parent, and its results.json has no "
                          "per-image pixel counts: re-run the `mcgenref eval` / sweep_refine.py command that made it")


def _per_image_rows(run_dir: Path, method: str) -> list[dict]:
    path = run_dir / "results.json"
    try:
        rows = json.loads(path.read_text())["methods"][method]["per_image"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(f"{path}: no per-image rows of method {method!r} ({exc!r}): re-run the evaluation "
                              "that wrote it") from None
    if not isinstance(rows, list):
        raise EvaluationError(f"{path}: per_image of {method!r} is not a list: re-run the evaluation")
    return rows


def pixel_counts(run_dir: str | Path, method: str, threshold: float) -> Optional[dict[str, np.ndarray]]:
    """item → (tp, fp, fn) pixel counts of `method` at `threshold` for the images of that run's results.json
    (None when none of them has pixel truth, e.g. mini-MIAS): from the results.json itself, else the cache."""
    run = Path(run_dir)
    rows = _per_image_rows(run, method)
    items = {str(r.get("item")) for r in rows if r.get("pixel") is not None}
    if not items:
        return None
    if all("pixel_counts" in r for r in rows if r.get("pixel") is not None):
        return {str(r["item"]): np.array([int(r["pixel_counts"][k]) for k in COUNTS], np.int64)
                for r in rows if r.get("pixel") is not None}
    path = metrics_file(run)
    out: dict[str, np.ndarray] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                if (rec.get("method") != method or str(rec.get("item")) not in items or rec.get("pixel") is None
                        or abs(float(rec.get("threshold")) - threshold) > 1e-9):
                    continue
                out[str(rec["item"])] = np.array([int(rec["pixel"][k]) for k in COUNTS], np.int64)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue   # a torn line of an interrupted run, as runner.MetricsLog skips it
    missing = items - set(out)
    if missing:
        raise EvaluationError(f"{path}: no record at threshold {threshold:g} of method {method!r} for "
                              f"{len(missing)} of the images its results.json lists (e.g. {sorted(missing)[:3]}): "
                              "re-run the evaluation that wrote it")
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
    if not (np.isfinite(rec_a - rec_b) and np.isfinite(dice_a - dice_b)):
        raise EvaluationError(f"pooled recall or Dice is undefined on these {len(items)} images (no true or "
                              "predicted pixel): nothing to bootstrap")
    tail = 100.0 * (1.0 - level) / 2.0
    # a resample of only truth-free images has no recall: such draws are left out of the interval and the share
    ok_rec, ok_dice = d_rec[np.isfinite(d_rec)], d_dice[np.isfinite(d_dice)]
    ci = lambda d: tuple(float(v) for v in np.percentile(d, [tail, 100.0 - tail]))  # noqa: E731
    return PairedDifference(
        n_images=len(items), n_resamples=n_resamples, level=level,
        recall_diff=float(rec_a - rec_b), recall_ci=ci(ok_rec), dice_diff=float(dice_a - dice_b), dice_ci=ci(ok_dice),
        p_recall_not_above=float(np.mean(~(ok_rec > 0))),
    )

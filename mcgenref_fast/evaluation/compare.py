"""Compare evaluation runs (`results.json` of `mcgenref eval` / `scripts/sweep_refine.py`) side by side, and hold
each TT-GPR row to issue 11's semi-real bar against the initializer on the same images.

Why: a tuning session (a GPU call in particular, scripts/gpu_issue11.sh) produces one results folder per setting;
the question it answers is always the same table — pooled Dice / precision / recall / FNR / G-Mean, MC and cluster
figures — and whether TT-GPR beats the initializer on recall and FNR with Dice within 0.02 (issue 11, "Done when").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from mcgenref_fast.errors import EvaluationError

# Issue 11: TT-GPR's pooled Dice may be at most this much below the initializer's.
DICE_MARGIN = 0.02
BASELINE_METHOD = "initializer"


@dataclass(frozen=True)
class EvalRow:
    """One method of one results.json: pooled pixel figures (None where undefined), MC and cluster counts."""

    run: str                       # the results folder, as given or found
    method: str
    kind: str                      # dataset kind (semireal, synthetic, mias, inbreast)
    dataset: str                   # dataset path, to match a baseline on the same images
    n_images: int
    threshold: Optional[float]     # the operating threshold the method was scored at
    dice: Optional[float]
    precision: Optional[float]
    recall: Optional[float]
    fnr: Optional[float]
    g_mean: Optional[float]
    mc_sensitivity: Optional[float]
    fp_mcs_per_image: Optional[float]
    clusters_found: Optional[int]
    clusters_true: Optional[int]
    fp_clusters_per_normal: Optional[float]
    recall_by_pitch: dict[str, float] = field(default_factory=dict)

    @property
    def images_key(self) -> tuple[str, str, int, Optional[float]]:
        """Rows with the same key scored the same images at the same operating threshold (a `--threshold`
        re-scoring is compared with a baseline re-scored at that threshold, not with the default's)."""
        return (self.kind, os.path.normpath(self.dataset), self.n_images, self.threshold)


@dataclass(frozen=True)
class BarVerdict:
    """Issue 11's semi-real bar for one TT-GPR row: recall above and FNR below the baseline's, Dice within
    DICE_MARGIN of it."""

    recall_above: bool
    fnr_below: bool
    dice_within: bool

    @property
    def passed(self) -> bool:
        return self.recall_above and self.fnr_below and self.dice_within

    def text(self) -> str:
        parts = [("recall ↑" if self.recall_above else "recall ✗"), ("FNR ↓" if self.fnr_below else "FNR ✗"),
                 (f"Dice ±{DICE_MARGIN:g}" if self.dice_within else "Dice ✗")]
        return ("pass: " if self.passed else "fail: ") + ", ".join(parts)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def rows_from_results(doc: dict[str, Any], run: str) -> list[EvalRow]:
    """The rows of one results.json document (one per method). EvaluationError when it is not one."""
    methods = doc.get("methods") if isinstance(doc, dict) else None
    if not isinstance(methods, dict):
        raise EvaluationError(f"{run}: not an evaluation results.json (no 'methods'): re-run `mcgenref eval`")
    kind = str(_get(doc, "dataset", "kind") or "?")
    dataset = str(_get(doc, "dataset", "path") or "?")
    rows = []
    for name, m in methods.items():
        try:
            rows.append(_row(run, str(name), kind, dataset, m, doc))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EvaluationError(f"{run}: method {name!r} of its results.json is malformed ({exc!r}): re-run "
                                  f"the evaluation") from None
    return rows


def _row(run: str, name: str, kind: str, dataset: str, m: dict[str, Any], doc: dict[str, Any]) -> EvalRow:
    pooled = _get(m, "pixel", "pooled") or {}
    by_pitch = _get(m, "pixel_by_pitch") or {}
    threshold = m.get("threshold", _get(doc, "settings", "threshold"))
    return EvalRow(
        run=run, method=name, kind=kind, dataset=dataset, n_images=int(m.get("n_images", doc.get("n_items", 0))),
        threshold=None if threshold is None else float(threshold),
        dice=pooled.get("dice"), precision=pooled.get("precision"), recall=pooled.get("recall"),
        fnr=pooled.get("fnr"), g_mean=pooled.get("g_mean"),
        mc_sensitivity=_get(m, "mc", "sensitivity"), fp_mcs_per_image=_get(m, "mc", "fps_per_image"),
        clusters_found=_get(m, "cluster", "n_found"), clusters_true=_get(m, "cluster", "n_true"),
        fp_clusters_per_normal=_get(m, "cluster", "fp_clusters_per_normal_image"),
        recall_by_pitch={str(p): v["pooled"]["recall"] for p, v in by_pitch.items()
                         if _get(v, "pooled", "recall") is not None},
    )


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """results.json files: each path is one, or a folder searched recursively (sorted; `threshold_*` re-scorings
    included). EvaluationError for a path that does not exist or holds none."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            hits = sorted(p.rglob("results.json"))
            if not hits:
                raise EvaluationError(f"{p}: no results.json below it: run `mcgenref eval` or sweep_refine.py first")
            found.extend(hits)
        else:
            raise EvaluationError(f"{p}: no such file or folder")
    return found


def load_rows(paths: Iterable[str | Path]) -> list[EvalRow]:
    """Every method row of every results.json under `paths` (`find_results`), in file order."""
    rows: list[EvalRow] = []
    for f in find_results(paths):
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{f}: unreadable results.json ({exc}): re-run the evaluation") from None
        rows.extend(rows_from_results(doc, str(f.parent)))
    return rows


def recall_bar(row: EvalRow, baseline: EvalRow, dice_margin: float = DICE_MARGIN) -> Optional[BarVerdict]:
    """Issue 11's bar for `row` against `baseline` (same images); None when a figure is undefined."""
    if None in (row.recall, row.fnr, row.dice, baseline.recall, baseline.fnr, baseline.dice):
        return None
    return BarVerdict(recall_above=row.recall > baseline.recall, fnr_below=row.fnr < baseline.fnr,
                      dice_within=row.dice >= baseline.dice - dice_margin)


def baseline_for(row: EvalRow, rows: Iterable[EvalRow], method: str = BASELINE_METHOD) -> Optional[EvalRow]:
    """The first `method` row that scored the same images as `row` at the same threshold (None when there is
    none). Pass one device's runs at a time: a CPU and a GPU run of the same set share the key."""
    return next((b for b in rows if b.method == method and b.images_key == row.images_key), None)


def _n(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def bootstrap_against(row: EvalRow, baseline: EvalRow, n_resamples: int, seed: int = 0) -> Any:
    """`bootstrap.paired_bootstrap` of `row` minus `baseline` from their runs' per-image counts (same images);
    None when the dataset has no pixel truth."""
    from mcgenref_fast.evaluation.bootstrap import paired_bootstrap, pixel_counts

    if row.threshold is None or baseline.threshold is None:
        raise EvaluationError(f"{row.run}: no operating threshold recorded: re-run the evaluation")
    mine = pixel_counts(row.run, row.method, row.threshold)
    theirs = pixel_counts(baseline.run, baseline.method, baseline.threshold)
    if mine is None or theirs is None:
        return None   # no pixel truth (e.g. mini-MIAS): nothing to bootstrap
    return paired_bootstrap(mine, theirs, n_resamples, seed)


def rows_markdown(rows: list[EvalRow], baseline_method: str = BASELINE_METHOD, bootstrap: int = 0) -> str:
    """One table: a row per (run, method), its pooled pixel figures, recall per input pitch, MC and cluster
    figures, and — for TT-GPR rows (method names starting with 'gpr': `mcgenref eval`'s and sweep_refine.py's) —
    issue 11's bar against the baseline on the same images; with `bootstrap` = N > 0 also the recall and Dice
    differences from the baseline with 95 % intervals over N paired resamples of the images (bootstrap.py)."""
    pitches = sorted({p for r in rows for p in r.recall_by_pitch}, key=float)
    head = (["run", "method", "images", "T", "Dice", "precision", "recall", "FNR", "G-Mean"]
            + [f"recall @ {p} mm" for p in pitches]
            + ["MC sens.", "FP MCs / image", "clusters", "FP clusters / normal", f"bar vs {baseline_method}"]
            + ([f"Δrecall [95 % CI]", f"ΔDice [95 % CI]"] if bootstrap > 0 else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = baseline_for(r, rows, baseline_method) if r.method.startswith("gpr") else None
        verdict = None if base is None else recall_bar(r, base)
        diff = None if base is None or bootstrap <= 0 else bootstrap_against(r, base, bootstrap)
        clusters = "–" if r.clusters_true in (None, 0) else f"{r.clusters_found} / {r.clusters_true}"
        cells = ([r.run, r.method, str(r.n_images), _n(r.threshold, 2), _n(r.dice), _n(r.precision), _n(r.recall), _n(r.fnr),
                  _n(r.g_mean)] + [_n(r.recall_by_pitch.get(p)) for p in pitches]
                 + [_n(r.mc_sensitivity), _n(r.fp_mcs_per_image, 2), clusters, _n(r.fp_clusters_per_normal, 2),
                    "–" if verdict is None else verdict.text()]
                 + ([] if bootstrap <= 0 else ["–", "–"] if diff is None else [diff.recall_text(), diff.dice_text()]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

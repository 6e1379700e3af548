"""Summaries of an evaluation run: `results.json` (every number) and `results.md` (comparison tables).

Levels (SPEC §8; a level appears when the dataset has that kind of truth):
- pixel: Dice, IoU, precision, recall, FNR, specificity, balanced accuracy, G-Mean inside the breast, pooled
  (summed confusion counts) and per image (mean ± sd over the images where defined, `n` of them);
- MC: sensitivity and FPs/image at the operating threshold (0.5 mm rule); FROC over the component score
  (candidates at `p >= min(froc_threshold, threshold)`): CPM (mean sensitivity at 1/8 … 8 FPs/image) and
  sensitivity at chosen rates;
- cluster: sensitivity, FP clusters per image and per normal image, FROC over the cluster score;
- image: share of flagged images among abnormal (true clusters) and normal images.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from mcgenref_fast import __version__
from mcgenref_fast.metrics import METRIC_NAMES, Confusion, summarize_pixels
from mcgenref_fast.metrics_mc import FROC_FP_RATES, DetectionSummary, cpm, froc, sensitivity_at, summarize_detections

from mcgenref_fast.evaluation.runner import EVAL_VERSION, EvalRun, decode_match

CLUSTER_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
MC_TABLE_RATES: tuple[float, ...] = (0.25, 1.0, 4.0)


def _f(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _froc_block(matches: Sequence[Any], rates: Sequence[float]) -> Optional[dict[str, Any]]:
    if not matches:
        return None
    curve = froc(matches)
    sens = sensitivity_at(curve, rates) if curve.n_true else np.full(len(rates), np.nan)
    return {
        "n_images": curve.n_images, "n_true": curve.n_true,
        "cpm": _f(cpm(curve)) if curve.n_true else None,
        "sensitivity_at": {f"{r:g}": _f(s) for r, s in zip(rates, sens)},
        "curve": {"threshold": [_f(t) for t in curve.thresholds],
                  "fps_per_image": [float(x) for x in curve.fps_per_image],
                  "sensitivity": [_f(x) for x in curve.sensitivity]},
    }


def summarise_method(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dataset-level figures of one method's per-image records."""
    out: dict[str, Any] = {"n_images": len(records)}
    pix = [r["pixel"] for r in records if r.get("pixel") is not None]
    out["pixel"] = summarize_pixels([Confusion(**c) for c in pix]).to_dict() if pix else None
    out["pixel_by_pitch"] = pixels_by_pitch(records)
    mc = [r for r in records if r.get("mc") is not None]
    if mc:
        det = DetectionSummary(len(mc), *(sum(r["mc"][k] for r in mc) for k in ("n_true", "n_found", "n_pred", "n_fp"))).to_dict()
        fro = [decode_match(r["mc_froc"]) for r in mc]
        det["froc"] = _froc_block(fro, FROC_FP_RATES)
        det["froc"]["candidate_threshold"] = mc[0]["mc_froc"].get("candidate_threshold")
        out["mc"] = det
    else:
        out["mc"] = None
    cl = [r for r in records if r.get("cluster") is not None]
    if cl:
        matches = [decode_match(r["cluster"]) for r in cl]
        det = summarize_detections(matches).to_dict()
        normal = [m for m, r in zip(matches, cl) if r.get("normal")]
        abnormal = [m for m, r in zip(matches, cl) if m.n_true > 0]
        det["n_normal_images"] = len(normal)
        det["fp_clusters_per_normal_image"] = (sum(m.n_fp for m in normal) / len(normal)) if normal else None
        det["n_abnormal_images"] = len(abnormal)
        det["fp_clusters_per_abnormal_image"] = (sum(m.n_fp for m in abnormal) / len(abnormal)) if abnormal else None
        det["froc"] = _froc_block(matches, CLUSTER_FP_RATES)
        out["cluster"] = det
    else:
        out["cluster"] = None
    flagged_ab = [r["findings"]["flagged"] for r in records if (r.get("n_true_clusters") or 0) > 0]
    flagged_no = [r["findings"]["flagged"] for r in records if r.get("normal")]
    out["image"] = {
        "n_abnormal": len(flagged_ab), "n_abnormal_flagged": int(sum(flagged_ab)),
        "n_normal": len(flagged_no), "n_normal_flagged": int(sum(flagged_no)),
        "sensitivity": (sum(flagged_ab) / len(flagged_ab)) if flagged_ab else None,
        "specificity": (1 - sum(flagged_no) / len(flagged_no)) if flagged_no else None,
    }
    secs = [r["seconds"] for r in records if r.get("seconds") is not None]
    out["seconds_per_image"] = float(np.mean(secs)) if secs else None
    out["pred_mcs_per_image"] = float(np.mean([r["findings"]["n_mcs"] for r in records])) if records else None
    out["pred_clusters_per_image"] = float(np.mean([r["findings"]["n_clusters"] for r in records])) if records else None
    return out


def pixels_by_pitch(records: Sequence[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Pooled pixel metrics per input pixel pitch (mm, e.g. "0.07" FFDM, "0.2" film scans), when the records
    hold more than one pitch: film and digital mammograms behave differently and one pooled figure hides it."""
    groups: dict[str, list[Confusion]] = {}
    for r in records:
        if r.get("pixel") is not None and r.get("input_spacing_mm") is not None:
            groups.setdefault(f"{float(r['input_spacing_mm']):g}", []).append(Confusion(**r["pixel"]))
    if len(groups) < 2:
        return None
    return {k: {"n_images": len(v), "pooled": summarize_pixels(v).to_dict()["pooled"]}
            for k, v in sorted(groups.items(), key=lambda kv: float(kv[0]))}


def per_image_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One compact row per image: pixel metrics, MC and cluster counts, findings."""
    from mcgenref_fast.metrics import pixel_metrics

    rows = []
    for r in records:
        row: dict[str, Any] = {"item": r["item"], "path": r.get("path"), "split": r.get("split"),
                               "seconds": r.get("seconds"), **{k: r["findings"][k] for k in ("n_mcs", "n_clusters", "flagged")}}
        if r.get("pixel") is not None:
            row["pixel"] = pixel_metrics(Confusion(**r["pixel"])).to_dict()
            # the raw counts too: pooled figures over any subset of images (the paired bootstrap, bootstrap.py)
            row["pixel_counts"] = {k: int(r["pixel"][k]) for k in ("tp", "fp", "fn", "tn")}
        if r.get("mc") is not None:
            row["mc"] = r["mc"]
        if r.get("cluster") is not None:
            m = decode_match(r["cluster"])
            row["cluster"] = {"n_true": m.n_true, "n_found": m.n_found, "n_pred": m.n_pred, "n_fp": m.n_fp}
        rows.append(row)
    return rows


def build_results(run: EvalRun, dataset: dict[str, Any]) -> dict[str, Any]:
    """The results.json document."""
    methods = {}
    for name, mr in run.methods.items():
        s = summarise_method(mr.records)
        s.update({"method": mr.engine_method, "threshold": mr.threshold, "config_hash": mr.config_hash,
                  "weights_sha256": mr.weights, "n_failed": len(mr.failures), "failures": mr.failures,
                  "cache": {"computed": mr.computed, "prob_cached": mr.prob_cached, "metrics_cached": mr.metrics_cached},
                  "per_image": per_image_rows(mr.records)})
        methods[name] = s
    return {
        "version": __version__, "eval_version": EVAL_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset, "settings": {**run.settings.scoring_dict(), "threshold": run.settings.threshold},
        "n_items": run.n_items, "seconds": run.seconds, "methods": methods,
    }


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    v = float(v)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pm(d: Optional[dict[str, Any]], digits: int = 3) -> str:
    if d is None or d.get("mean") is None:
        return "–"
    return f"{_num(d['mean'], digits)} ± {_num(d['sd'], digits)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


_PIXEL_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall", "fnr": "FNR",
                 "specificity": "specificity", "balanced_accuracy": "bal. acc.", "g_mean": "G-Mean"}


def results_markdown(results: dict[str, Any]) -> str:
    ds = results["dataset"]
    methods = results["methods"]
    out = [f"# Evaluation: {ds.get('kind')} — {ds.get('path')}", ""]
    split = ds.get("split")
    out.append(f"{results['n_items']} images" + (f" (split `{split}`, from {ds.get('splits_csv')})" if ds.get("splits_csv") else "")
               + f"; mcgenref_fast {results['version']}; {results['created']}.")
    out.append("Operating threshold per method in column T; `–` = undefined (e.g. no true object).")
    out.append("")
    names = list(methods)
    if any(methods[n]["pixel"] for n in names):
        out.append("## Pixel level (inside the breast)")
        out.append("")
        out.append("Pooled over all pixels of all images:")
        out.append("")
        rows = [[n, _num(methods[n]["threshold"], 2)] + [_num(methods[n]["pixel"]["pooled"][k], 4 if k == "specificity" else 3)
                                                          for k in METRIC_NAMES] for n in names if methods[n]["pixel"]]
        out += _table(["method", "T"] + [_PIXEL_LABELS[k] for k in METRIC_NAMES], rows)
        out.append("Per image, mean ± sd (n = images where the metric is defined):")
        out.append("")
        rows = []
        for n in names:
            p = methods[n]["pixel"]
            if p:
                rows.append([n] + [_pm(p["per_image"][k], 4 if k == "specificity" else 3) for k in METRIC_NAMES]
                            + [str(p["per_image"]["recall"]["n"])])
        out += _table(["method"] + [_PIXEL_LABELS[k] for k in METRIC_NAMES] + ["n (recall)"], rows)
        if any(methods[n].get("pixel_by_pitch") for n in names):
            out.append("Pooled by the input's pixel pitch (mm; film scans and digital mammograms apart):")
            out.append("")
            keys = ("dice", "precision", "recall", "fnr", "g_mean")
            rows = [[n, pitch, str(g["n_images"])] + [_num(g["pooled"][k]) for k in keys]
                    for n in names for pitch, g in (methods[n].get("pixel_by_pitch") or {}).items()]
            out += _table(["method", "pitch (mm)", "images"] + [_PIXEL_LABELS[k] for k in keys], rows)
    if any(methods[n]["mc"] for n in names):
        out.append("## MC level (found within 0.5 mm)")
        out.append("")
        rows = []
        for n in names:
            m = methods[n]["mc"]
            if not m:
                continue
            fr = m["froc"] or {}
            rows.append([n, _num(methods[n]["threshold"], 2), str(m["n_true"]), str(m["n_found"]), _num(m["sensitivity"]),
                         _num(m["fps_per_image"], 2), _num(fr.get("cpm"))]
                        + [_num(fr.get("sensitivity_at", {}).get(f"{r:g}")) for r in MC_TABLE_RATES])
        out += _table(["method", "T", "true MCs", "found", "sensitivity", "FPs/image", "CPM"]
                      + [f"sens @ {r:g} FP/im" for r in MC_TABLE_RATES], rows)
        cand = next((methods[n]["mc"]["froc"].get("candidate_threshold") for n in names if methods[n]["mc"]), None)
        out.append(f"FROC candidates: components of p ≥ {_num(cand, 2)}, scored by their max p; CPM = mean "
                   "sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPs/image.")
        out.append("")
    if any(methods[n]["cluster"] for n in names):
        out.append("## Cluster level (centroid within max(radius, 5 mm))")
        out.append("")
        rows = []
        for n in names:
            c = methods[n]["cluster"]
            if not c:
                continue
            img = methods[n]["image"]
            fr = c["froc"] or {}
            rows.append([n, _num(methods[n]["threshold"], 2), str(c["n_true"]), str(c["n_found"]), _num(c["sensitivity"]),
                         _num(c["fps_per_image"], 2), _num(c["fp_clusters_per_normal_image"], 2),
                         f"{img['n_abnormal_flagged']}/{img['n_abnormal']}", f"{img['n_normal_flagged']}/{img['n_normal']}"]
                        + [_num(fr.get("sensitivity_at", {}).get(f"{r:g}")) for r in (0.25, 1.0)])
        out += _table(["method", "T", "true clusters", "found", "sensitivity", "FP clusters/image",
                       "FP clusters/normal image", "abnormal flagged", "normal flagged", "sens @ 0.25 FP/im",
                       "sens @ 1 FP/im"], rows)
    out.append("## Run")
    out.append("")
    rows = []
    for n in names:
        m = methods[n]
        rows.append([n, str(m["n_images"]), str(m["n_failed"]), _num(m["seconds_per_image"], 2),
                     _num(m["pred_mcs_per_image"], 1), _num(m["pred_clusters_per_image"], 2),
                     str(m["cache"]["computed"]), str(m["cache"]["prob_cached"]), str(m["cache"]["metrics_cached"])])
    out += _table(["method", "images", "failed", "s/image (analyse)", "MCs/image", "clusters/image", "computed",
                   "maps from cache", "records from cache"], rows)
    return "\n".join(out).rstrip() + "\n"


def write_results(out_dir: str | Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write OUT/results.json and OUT/results.md atomically."""
    from mcgenref_fast.atomic import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = write_json_atomic(out_dir / "results.json", results)
    m = write_text_atomic(out_dir / "results.md", results_markdown(results))
    return j, m

"""`mcgenref eval`: run one or more methods over an annotated dataset; write results.json and results.md.

    mcgenref eval --method gpr [--method tophat ...] --dataset KIND PATH --out DIR
                  [--spacing MM] [--limit N] [--threshold T] [--splits CSV] [--split dev|all]
                  [--device D] [--threads N] [--seed S] [--reference]

KIND: synthetic | inbreast | mias | semireal (docs/evaluation.md). OUT/cache/ keeps every probability map
and every finished per-image record: re-running resumes, `--threshold` re-scores without the networks.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcgenref_fast.commands.options import device_arg, positive_int, seed_arg
from mcgenref_fast.commands.segment import (
    add_outline_margin_option,
    add_film_options,
    add_weights_option,
    findings_config,
    weights_dir_option,
)
from mcgenref_fast.errors import ConfigError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from mcgenref_fast.evaluation.datasets import DATASET_KINDS
    from mcgenref_fast.evaluation.runner import METHODS

    p = sub.add_parser(
        "eval", help="evaluate methods on an annotated dataset (results.json, results.md)",
        description="Run methods (gpr: segmentor + TT-GPR; initializer: segmentor only; tophat: classical "
        "baseline) over a dataset and score them at pixel, MC and cluster level (SPEC §8). Results are cached "
        "under OUT/cache/: a second run resumes, and --threshold re-scores the cached probability maps.",
    )
    p.add_argument("--method", action="append", choices=METHODS, metavar="M",
                   help=f"method to evaluate, repeatable ({', '.join(METHODS)}; default gpr)")
    p.add_argument("--dataset", nargs=2, required=True, metavar=("KIND", "PATH"),
                   help=f"dataset kind ({', '.join(DATASET_KINDS)}) and its folder")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (results + cache)")
    p.add_argument("--spacing", type=float, metavar="MM",
                   help="pixel spacing in mm for images that carry none (mini-MIAS default 0.2)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="operating threshold on p for every method (default: each method's own)")
    p.add_argument("--froc-threshold", type=float, default=0.25, metavar="T",
                   help="MC-level FROC candidates: components of p >= min(this, threshold) (default 0.25)")
    p.add_argument("--splits", type=Path, metavar="CSV",
                   help="splits.csv to filter images by (mias: looked for in PATH and two folders up)")
    p.add_argument("--split", default="dev", help="split to keep when a splits.csv applies ('all' = no filter; default dev)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads for torch and the tiler")
    p.add_argument("--seed", type=seed_arg, default=0, help="TT-GPR noise seed (default 0)")
    p.add_argument("--reference", action="store_true", help="use the pure-PyTorch reference TT-GPR (slow)")
    p.add_argument("--float16-cache", action="store_true",
                   help="store probability maps as float16 (rounded toward 0: exact for float16 thresholds)")
    add_outline_margin_option(p)
    add_weights_option(p)
    add_film_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mcgenref_fast.evaluation.datasets import load_dataset
    from mcgenref_fast.evaluation.report import build_results, write_results
    from mcgenref_fast.evaluation.runner import EvalSettings, make_engine, run_eval
    from mcgenref_fast.evaluation.datasets import find_splits

    kind, path = args.dataset[0], Path(args.dataset[1])
    methods = list(dict.fromkeys(args.method or ["gpr"]))
    try:
        settings = EvalSettings(threshold=args.threshold, froc_threshold=args.froc_threshold,
                                prob_dtype="float16" if args.float16_cache else "float32")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    items = load_dataset(kind, path, spacing_mm=args.spacing, splits=args.splits, split=args.split, limit=args.limit)
    if not items:
        raise ConfigError(f"{path}: no images to evaluate (split {args.split!r})")
    splits_csv = args.splits if args.splits is not None else (find_splits(path) if kind == "mias" else None)
    findings = findings_config(args.outline_margin)
    weights_dir = weights_dir_option(args.weights, any(m != "tophat" for m in methods))
    engines = {m: make_engine(m, device=args.device, seed=args.seed, reference=args.reference, findings=findings,
                              weights_dir=weights_dir, pitch_scaled_edge=args.pitch_scaled_edge,
                              refine_film=args.refine_film, film_segmentor=not args.no_film_segmentor)
               for m in methods}
    run_ = run_eval(items, engines, args.out, settings)
    dataset = {"kind": kind, "path": str(path), "n_items": len(items), "limit": args.limit,
               "split": args.split if splits_csv is not None else None,
               "splits_csv": None if splits_csv is None else str(splits_csv), "spacing_mm": args.spacing,
               "items": [it.id for it in items]}
    results = build_results(run_, dataset)
    j, m = write_results(args.out, results)
    print(open(m, encoding="utf-8").read())
    print(f"wrote {j} and {m}")
    failed = sum(len(r.failures) for r in run_.methods.values())
    return 2 if failed else 0

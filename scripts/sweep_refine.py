"""Sweep TT-GPR settings on an evaluation set (e.g. the semi-real dev set) and write one results table each.

Example: python scripts/sweep_refine.py runs/devsets/semireal_shifted --kind semireal --out runs/eval/sweep \
             --set t0=0.85 --set t0=0.95
Each `--set` is one run: comma-separated `RefineConfig` fields (numbers) over SPEC §4's defaults (`RefineConfig()`,
λ_prox 0.05 and t0 0.7: not the engine's λ_prox 0.2 and t0 0.85, so `--set t0=0.85,lam_prox=0.2` is the shipped
default), e.g. `t0=0.9,outer_iters=2`; every input is refined, film scans included (the engine keeps the segmentor's
map on inputs enlarged more than 2×: `mcgenref eval --refine-film` lifts that), every one by the segmentor (the
engine's film segmentor is off: `mcgenref eval --refine-film --no-film-segmentor` is a sweep's setting);
`--weights DIR` runs them with the networks of a weights directory (`mcgenref train ... --export-to DIR`);
`--pitch-scaled-edge` turns on `EngineConfig.edge_sigma_per_input_pitch` (as `mcgenref eval`), its runs written to
`OUT/gpr_<set>_pitchedge/`. `--device cuda` runs the networks and TT-GPR on a GPU (scripts/gpu_issue11.sh);
`--limit N` scores the first N images only (a dry run: not comparable with the full set's figures).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mcgenref_fast.config import NO_FILM_SEGMENTOR, REFINE_EVERY_INPUT, RefineConfig, parse_refine_overrides
from mcgenref_fast.evaluation.datasets import load_dataset
from mcgenref_fast.evaluation.report import build_results, write_results
from mcgenref_fast.evaluation.runner import EvalSettings, run_eval
from mcgenref_fast.pipeline import Engine, EngineConfig
from mcgenref_fast.threads import set_threads


def parse_setting(text: str) -> dict[str, float]:
    """One `--set` (`config.parse_refine_overrides`); a bad part exits with why."""
    try:
        return parse_refine_overrides(text)
    except ValueError as exc:
        raise SystemExit(f"--set {text!r}: {exc}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--kind", default="semireal")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", required=True, dest="settings")
    ap.add_argument("--spacing", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=None, metavar="T",
                    help="operating threshold to score at (default: the engine's); cached maps are re-scored")
    ap.add_argument("--weights", type=Path, default=None, metavar="DIR",
                    help="weights directory whose networks replace the shipped ones (as `mcgenref eval --weights`)")
    ap.add_argument("--pitch-scaled-edge", action="store_true",
                    help="divide the edge term's sigma_I by the enlargement on coarse inputs (as `mcgenref eval`)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    args = ap.parse_args()
    set_threads(args.threads)
    items = load_dataset(args.kind, args.path, spacing_mm=args.spacing, limit=args.limit)
    for text in args.settings:
        rcfg = replace(RefineConfig(), **parse_setting(text))
        # a sweep studies TT-GPR itself: it refines every input, film scans included (the engine's default keeps
        # the segmentor's map on inputs enlarged more than 2x; `mcgenref eval` shows that), with the one segmentor
        # on every input (not the film segmentor of the engine's default: TT-GPR was studied with that segmentor)
        ecfg = replace(EngineConfig(), refine=rcfg, edge_sigma_per_input_pitch=args.pitch_scaled_edge,
                       refine_max_enlargement=REFINE_EVERY_INPUT, film_segmentor_min_enlargement=NO_FILM_SEGMENTOR)
        engine = Engine(ecfg, device=args.device, weights_dir=args.weights)
        name = "gpr_" + text.replace("=", "").replace(",", "_") + ("_pitchedge" if args.pitch_scaled_edge else "")
        out = args.out / name
        run = run_eval(items, {name: engine}, out, EvalSettings(threshold=args.threshold))
        # another threshold re-scores the cached maps; its tables go beside, not over, the default's
        where = out if args.threshold is None else out / f"threshold_{args.threshold:g}"
        write_results(where, build_results(run, {"kind": args.kind, "path": str(args.path)}))
        print(f"wrote {where}/results.md")


if __name__ == "__main__":
    main()

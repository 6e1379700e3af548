"""Compare evaluation runs side by side and check issue 11's semi-real bar (TT-GPR vs the initializer).

Example: python scripts/compare_evals.py runs/eval/semireal_p2 runs/eval/sweep_prox
Each argument is a results.json or a folder searched for them (`mcgenref eval` / scripts/sweep_refine.py outputs).
Prints one markdown table (`mcgenref_fast.evaluation.compare.rows_markdown`); `--out FILE` writes it too. A TT-GPR
row is held to the bar against an `initializer` row that scored the same images (same dataset path and count);
`--bootstrap N` adds its recall and Dice differences from that row with 95 % intervals over N paired resamples of
the images (from the runs' caches; `mcgenref_fast.evaluation.bootstrap`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcgenref_fast.errors import McGenRefError
from mcgenref_fast.evaluation.compare import load_rows, rows_markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="results.json files or folders holding them")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="paired bootstrap resamples of the images for the TT-GPR rows' differences (0: off)")
    args = ap.parse_args(argv)
    if args.bootstrap < 0:
        ap.error(f"--bootstrap must be >= 0 (0: off), got {args.bootstrap}")
    try:
        table = rows_markdown(load_rows(args.paths), bootstrap=args.bootstrap)
    except McGenRefError as exc:
        print(f"compare_evals: {exc}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

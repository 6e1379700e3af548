"""Choose the top-hat baseline's k (threshold = mean + k·std of the response in the breast) on a `dev` set.

    python scripts/tune_tophat.py runs/devsets/semireal_shifted --kind semireal --k 3 4 5 6 7 8 10

Prints pooled pixel Dice, precision, recall and G-Mean inside the breast (input grid) for each k and the k
with the best pooled Dice. The top-hat has no trained part, so the `dev` split is where its one setting is
chosen (docs/baseline.md).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mcgenref_fast.baseline import TopHatConfig, detect_from_response, tophat_response
from mcgenref_fast.evaluation.datasets import load_dataset
from mcgenref_fast.metrics import Confusion, confusion, pixel_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--kind", default="semireal")
    ap.add_argument("--spacing", type=float, default=None)
    ap.add_argument("--k", type=float, nargs="+", default=[3, 4, 5, 6, 7, 8, 10])
    args = ap.parse_args()
    items = [it for it in load_dataset(args.kind, args.path, spacing_mm=args.spacing) if it.split in (None, "dev")]
    totals = {k: Confusion() for k in args.k}
    for item in items:
        canonical = item.load_canonical()
        truth = item.load_truth(canonical.input_shape)
        if truth.mask is None:
            continue
        breast_in = canonical.mask_to_input(canonical.breast_mask)
        resp = tophat_response(canonical.image, canonical.breast_mask, canonical.spacing_mm, TopHatConfig())
        for k in args.k:
            det = detect_from_response(resp, canonical.breast_mask, replace(TopHatConfig(), k=k)).mask
            totals[k] = totals[k] + confusion(canonical.mask_to_input(det), truth.mask, breast_in)
    print(f"{len(items)} images of {args.path}\n\n| k | Dice | precision | recall | G-Mean |\n|---|---|---|---|---|")
    best = max(args.k, key=lambda k: pixel_metrics(totals[k]).dice)
    for k in args.k:
        m = pixel_metrics(totals[k])
        print(f"| {k:g}{' (best)' if k == best else ''} | {m.dice:.3f} | {m.precision:.3f} | {m.recall:.3f} | {m.g_mean:.3f} |")


if __name__ == "__main__":
    main()

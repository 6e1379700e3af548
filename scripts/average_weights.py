"""Average one network over several weights folders into a new weights folder (a "model soup").

Example: python scripts/average_weights.py runs/seg7soup/weights runs/seg7_s41/weights runs/seg7_s43/weights \
             runs/seg7_s47/weights runs/seg7_s53/weights --name segmentor_film
Why: fine-tunes of one network from the same start that differ only in their seed score differently on the small
`dev` sets (film segmentor, four seeds: mini-MIAS false clusters per normal 1.00-1.42; MODEL_CARD.md); their
average (`models.weights.average_models`) is one network that does not rest on one seed's luck. OUT gets the
averaged entry under the same name (`save_model`), its manifest's training info listing the sources.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcgenref_fast.errors import McGenRefError
from mcgenref_fast.models.weights import average_models, save_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="weights folder to write the average into (created; manifest updated)")
    ap.add_argument("sources", nargs="+", type=Path, help="weights folders holding the network (two or more)")
    ap.add_argument("--name", default="segmentor_film", help="manifest name of the network (default segmentor_film)")
    args = ap.parse_args(argv)
    try:
        model = average_models(list(args.sources), args.name)
        entry = save_model(model, args.out, name=args.name, training=dict(model.weights_info))  # type: ignore[arg-type]
    except McGenRefError as exc:
        print(f"average_weights: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / entry['file']} (sha256 {entry['sha256'][:16]}…), the mean of {len(args.sources)} "
          f"{args.name} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mcgenref train segmentor|generator`: fit one network on synthetic pairs (thin layer over
`mcgenref_fast.train.train`); a run in --out can be resumed over several sessions with --resume."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from mcgenref_fast.commands.options import positive_int, seed_arg, train_device_arg
from mcgenref_fast.models.config import GeneratorConfig, SegmentorConfig


# manifest names a trained network can take (which fit which model kind: `train.TrainConfig` checks it)
_MANIFEST_NAMES = ("segmentor", "segmentor_film", "generator")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train the segmentor or the generator on synthetic microcalcification pairs",
        description="Train one network on synthetic pairs (SPEC §2-3). Writes checkpoint.pt, log.jsonl and "
        "run_config.json in --out; at the end exports the weights (EMA for the generator) and updates the "
        "manifest in --export-to (default OUT/weights).",
    )
    p.add_argument("model", choices=("segmentor", "generator"))
    p.add_argument("--out", required=True, type=Path, metavar="RUNDIR", help="run directory")
    p.add_argument("--steps", type=int, default=20_000, help="total optimisation steps (default 20000)")
    p.add_argument("--batch", type=int, default=32, help="patches per step (default 32)")
    p.add_argument("--patch", type=int, default=128, help="patch size in px at 0.07 mm (default 128)")
    p.add_argument("--seed", type=seed_arg, default=0, help="data/initialisation seed (validation uses seed + 10**9)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--backgrounds-split", type=Path, metavar="SPLITS_CSV",
                   help="use the `train` rows of this splits.csv as real backgrounds (default: procedural only)")
    p.add_argument("--backgrounds-min-spacing", type=float, metavar="MM",
                   help="of those, only the ones scanned at MM or coarser (0.15: the film scans, for a film "
                        "segmentor exported with --export-name segmentor_film)")
    p.add_argument("--real-min-breast-fraction", type=float, metavar="F",
                   help="share of a real background patch that must lie inside the breast mask (default: "
                   "SynthConfig's 1.0); below 1, patches straddling the skin line are drawn too")
    p.add_argument("--match-source-sampling", action="store_true",
                   help="form the MCs on a real background's own pixel grid too when it is coarser than "
                   "canonical (film digitised at 0.2 mm: MCs blurred as the film records them)")
    p.add_argument("--device", default="auto", type=train_device_arg, help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch / OpenMP")
    p.add_argument("--workers", type=int, default=-1, help="data-loading processes (default: 0 on CPU, "
                   "min(8, cores - 1) on CUDA)")
    p.add_argument("--export-to", type=Path, metavar="DIR", help="weights directory to export into")
    p.add_argument("--export-name", choices=_MANIFEST_NAMES, default=None,
                   help="manifest name of the export (default: the model kind); segmentor_film: the segmentor the "
                        "engine uses on film scans (inputs coarser than 0.14 mm; README, film)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=500, help="warmup steps (default 500)")
    p.add_argument("--t-min", type=float, default=0.5, help="generator: t ~ U[t_min, t_max] (default 0.5)")
    p.add_argument("--t-max", type=float, default=1.0)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=256, help="fixed validation patches (default 256)")
    p.add_argument("--base-width", type=int, help="network width at full resolution (default: the config's)")
    p.add_argument("--depth", type=int, help="number of 2x downsamplings (default: the config's)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop this session after SECONDS (checkpoint saved; continue with --resume)")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="stop this session at STEP (checkpoint saved)")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--init-from", type=Path, metavar="WEIGHTS_DIR",
                   help="start from this weights directory's model of the same kind (fine-tuning)")
    p.add_argument("--init-name", choices=_MANIFEST_NAMES, default=None,
                   help="the manifest entry of --init-from to start from (default: the model kind; "
                        "segmentor_film: fine-tune a film segmentor)")
    p.add_argument("--dice-weight", type=float, default=1.0,
                   help="segmentor loss: BCE + this x soft Dice (default 1.0)")
    p.add_argument("--seed-weight-floor", type=float, metavar="F",
                   help="generator only: flow loss weighted by TT-GPR's seed blend W (SPEC 4.2): F + (1 - F)·W, F in [0, 1] "
                        "(default: unweighted)")
    p.add_argument("--surrogate-weight", type=float, default=0.0, metavar="L",
                   help="generator only: add L x the surrogate-consistency loss (the frozen segmentor on the seed-"
                        "conditioned projection, scored against the mask; mcgenref_fast/surrogate_loss.py)")
    p.add_argument("--surrogate-segmentor", type=Path, metavar="WEIGHTS_DIR",
                   help="weights directory of the frozen segmentor in that loss (default: the shipped one)")
    p.set_defaults(func=run)
    return p


def _model_cfg(args: argparse.Namespace) -> SegmentorConfig | GeneratorConfig:
    cfg = SegmentorConfig() if args.model == "segmentor" else GeneratorConfig()
    changes = {k: v for k, v in (("base_width", args.base_width), ("depth", args.depth)) if v is not None}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def run(args: argparse.Namespace) -> int:
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.train import (
        TrainConfig,
        load_train_backgrounds,
        resolve_device,
        synth_dataset_factory,
        train,
    )

    device = resolve_device(args.device)
    workers = args.workers
    if workers < 0:
        workers = 0 if device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 1))
    cfg = TrainConfig(
        model=args.model, steps=args.steps, batch=args.batch, patch_px=args.patch, seed=args.seed, lr=args.lr,
        warmup_steps=args.warmup, t_min=args.t_min, t_max=args.t_max, ckpt_every=args.ckpt_every,
        val_every=args.val_every, val_size=args.val_size, num_workers=workers, amp=not args.no_amp,
        dice_weight=args.dice_weight, seed_weight_floor=args.seed_weight_floor,
        surrogate_weight=args.surrogate_weight,
        surrogate_segmentor=None if args.surrogate_segmentor is None else str(args.surrogate_segmentor),
        init_from=None if args.init_from is None else str(args.init_from), init_name=args.init_name,
        export_name=args.export_name,
    )
    backgrounds = None
    data_info: dict = {"data": "mcgenref_fast.synth.SyntheticPairDataset, procedural backgrounds"}
    if args.backgrounds_min_spacing is not None and args.backgrounds_split is None:
        raise ConfigError("--backgrounds-min-spacing filters real backgrounds: add --backgrounds-split SPLITS_CSV")
    if args.backgrounds_split is not None:
        backgrounds = load_train_backgrounds(args.backgrounds_split, args.backgrounds_min_spacing)
        data_info = {"data": "mcgenref_fast.synth.SyntheticPairDataset, procedural + real backgrounds",
                     "backgrounds_split": str(args.backgrounds_split), "backgrounds": len(backgrounds)}
        if args.backgrounds_min_spacing is not None:
            data_info["backgrounds_min_spacing_mm"] = args.backgrounds_min_spacing
    if args.match_source_sampling and backgrounds is None:
        raise ConfigError("--match-source-sampling acts on real backgrounds only: add --backgrounds-split SPLITS_CSV")
    synth_cfg = None
    if args.real_min_breast_fraction is not None or args.match_source_sampling:
        from mcgenref_fast.synth import SynthConfig

        synth_cfg = SynthConfig()
        if args.real_min_breast_fraction is not None:
            synth_cfg = dataclasses.replace(synth_cfg, real_min_breast_fraction=args.real_min_breast_fraction)
            data_info["real_min_breast_fraction"] = args.real_min_breast_fraction
        if args.match_source_sampling:
            synth_cfg = dataclasses.replace(synth_cfg, match_source_sampling=True)
            data_info["match_source_sampling"] = True
    result = train(cfg, args.out, model_cfg=_model_cfg(args),
                   dataset_factory=synth_dataset_factory(backgrounds, synth_cfg),
                   device=device, resume=args.resume, export_to=args.export_to, progress=not args.no_progress,
                   stop_at_step=args.stop_at, time_limit_s=args.time_limit, extra_training_info=data_info)
    val = ", ".join(f"{k}={v:.4g}" for k, v in result.val.items())
    print(f"{args.model}: step {result.step}/{cfg.steps}, train loss {result.train_loss:.4g}, {val}, "
          f"{result.elapsed_s:.0f} s")
    if result.exported:
        where = args.export_to or Path(args.out) / "weights"
        print(f"exported {where / result.exported['file']} (sha256 {result.exported['sha256'][:16]}...)")
    else:
        print(f"paused at step {result.step}: continue with the same command plus --resume")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m mcgenref_fast.commands.train segmentor --out ...`), same as
    `mcgenref train ...`."""
    import sys

    from mcgenref_fast.errors import McGenRefError
    from mcgenref_fast.threads import set_threads

    parser = argparse.ArgumentParser(prog="mcgenref")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        set_threads(args.threads)
    try:
        return args.func(args)
    except McGenRefError as exc:
        print(f"mcgenref train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

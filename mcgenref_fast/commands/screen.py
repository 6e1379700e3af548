"""`mcgenref screen INPUT --out DIR`: screen a folder, a file list or a CSV manifest of mammograms.

Writes every output of `segment` per image (OUT/<key>/...), plus OUT/summary.csv, OUT/exams.csv,
OUT/errors.csv, OUT/report.html (+ OUT/thumbs/) and the journal OUT/journal.jsonl that lets the same
command, run again, resume where a killed run stopped. Exit status 0 when every input was screened,
2 when some failed (see errors.csv).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import Any

from mcgenref_fast.commands.segment import add_common_options, engine_from_args, findings_config, weights_dir_option
from mcgenref_fast.errors import ConfigError

_ENGINE_OPTIONS = ("method", "no_refine", "reference", "seed", "no_seg", "device", "precision", "outline_margin",
                   "weights", "pitch_scaled_edge", "refine_film", "no_film_segmentor")


def make_engine(options: dict[str, Any], device: str | None = None) -> Any:
    """The Engine the `screen` options describe (module level: picklable for Ray actors)."""
    ns = argparse.Namespace(**options)
    if device:
        ns.device = device
    return engine_from_args(ns, progress=False)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from mcgenref_fast.screen import ScreenOptions, discover_inputs, run_screen

    items = discover_inputs(args.input, exclude=[args.out])
    if not items:
        raise ConfigError(f"{args.input}: no mammogram found (DICOM by content or extension; PNG/TIFF/PGM by extension)")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    findings_config(args.outline_margin)             # a bad margin fails here, not in every worker
    args.weights = weights_dir_option(args.weights, args.method != "tophat")    # likewise; absolute for Ray
    factory = functools.partial(make_engine, {name: getattr(args, name) for name in _ENGINE_OPTIONS})
    options = ScreenOptions(spacing_mm=args.spacing, allow_for_processing=args.allow_for_processing,
                            workers=args.workers, progress=not args.no_progress, report=not args.no_report)
    ray_kwargs: dict[str, Any] = {}
    if args.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'mcgenref_fast[ray]'") from None
        ray_kwargs = {"device": args.device, "batch_size": args.batch_size}
    previous = None
    with contextlib.suppress(ValueError):             # SIGTERM stops like Ctrl-C: journal + tables written
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = run_screen(items, factory, args.out, options, ray_address=args.ray, **ray_kwargs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    rate = f"{result.images_per_s:.2f} images/s" if result.n_processed else "nothing new to screen"
    print(f"mcgenref screen: {result.n_processed + result.n_skipped} of {result.n_inputs} images screened "
          f"({result.n_skipped} already done), {result.n_flagged} flagged; {result.n_exams} exams; "
          f"{result.n_failed} failed; {rate}; {args.out / 'summary.csv'}"
          + ("" if args.no_report else f", {args.out / 'report.html'}"))
    if result.n_failed:
        print(f"mcgenref screen: {result.n_failed} of {result.n_inputs} inputs failed: see {args.out / 'errors.csv'}",
              file=sys.stderr)
    return result.exit_status


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "screen", help="screen many mammograms (folder, file list or CSV manifest), resumable",
        description="Segment every mammogram of a folder (recursive; DICOM found by content or extension), a "
        ".txt file list (one path per line) or a .csv manifest (columns path[, spacing_mm]). Writes the outputs "
        "of `segment` per image and OUT/summary.csv, exams.csv, errors.csv, report.html. Run the same command "
        "again to resume an interrupted run: finished images are skipped. Exit status 2 when some inputs failed.")
    p.add_argument("input", type=Path, metavar="INPUT",
                   help="folder, .txt file list or .csv manifest")
    add_common_options(p)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (0: decode in the main process; default: half the cores, at most 8); "
                   "with --ray: the number of CPU actors")
    p.add_argument("--ray", default=None, metavar="ADDRESS|local",
                   help="run on a Ray cluster (address, or 'local' to start one here): one Engine per actor, one "
                   "actor per GPU with --device cuda; needs the 'ray' extra")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="inputs per Ray task (default 4)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html and thumbnails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

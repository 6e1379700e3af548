"""`mcgenref segment INPUT... --out DIR`: segment mammograms and write every output per input."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mcgenref_fast.commands.options import device_arg, positive_int, seed_arg
from mcgenref_fast.errors import McGenRefError


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `segment`, `screen` and `demo` (units in the help)."""
    p.add_argument("--out", required=True, type=Path, help="output folder: OUT/<key>/ per input, OUT/index.csv")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="pixel spacing in mm for inputs that carry none (PNG/TIFF/PGM; DICOM without spacing tags)")
    p.add_argument("--no-refine", action="store_true", help="segmentor only (no TT-GPR)")
    p.add_argument("--method", choices=("gpr", "tophat"), default="gpr",
                   help="gpr: segmentor + TT-GPR (default); tophat: the classical white top-hat baseline")
    p.add_argument("--reference", action="store_true", help="use the pure-PyTorch reference TT-GPR (slow)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads for torch and the tiler")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="network precision of the fast TT-GPR: fp32 (default), or bf16 / fp16 with --device cuda")
    p.add_argument("--seed", type=seed_arg, default=0, help="TT-GPR noise seed (default 0)")
    p.add_argument("--allow-for-processing", action="store_true",
                   help="accept FOR PROCESSING DICOMs (applies -log of the normalised detector signal)")
    p.add_argument("--no-seg", action="store_true", help="do not write seg.dcm for DICOM inputs")
    add_outline_margin_option(p)
    add_weights_option(p)
    add_film_options(p)


def add_film_options(p: argparse.ArgumentParser) -> None:
    """`--pitch-scaled-edge` (EngineConfig.edge_sigma_per_input_pitch), `--refine-film`
    (EngineConfig.refine_max_enlargement = inf) and `--no-film-segmentor`
    (EngineConfig.film_segmentor_min_enlargement = inf), shared with `eval`."""
    from mcgenref_fast.config import (CANONICAL_SPACING_MM, ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT,
                                      ENGINE_REFINE_MAX_ENLARGEMENT)

    coarse_mm = ENGINE_REFINE_MAX_ENLARGEMENT * CANONICAL_SPACING_MM
    film_mm = ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT * CANONICAL_SPACING_MM
    p.add_argument("--refine-film", action="store_true",
                   help=f"run TT-GPR on inputs coarser than {coarse_mm:g} mm too (film scans, e.g. mini-MIAS at "
                        "0.2 mm); by default they keep the (film) segmentor's map, where TT-GPR lost recall "
                        "(README, film)")
    p.add_argument("--no-film-segmentor", action="store_true",
                   help=f"segment inputs coarser than {film_mm:g} mm with the segmentor too; by default the "
                        "weights' film segmentor (MCs learnt on the film's grid) segments them (README, film)")
    p.add_argument("--pitch-scaled-edge", action="store_true",
                   help="on inputs coarser than 0.07 mm that TT-GPR refines, divide its edge sigma_I by the "
                        "enlargement (default off: SPEC 4's sigma_I everywhere; README, film)")


def film_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig fields `--pitch-scaled-edge`, `--refine-film` and `--no-film-segmentor` set (absent
    options: the defaults)."""
    from mcgenref_fast.config import (ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT, ENGINE_REFINE_MAX_ENLARGEMENT,
                                      NO_FILM_SEGMENTOR, REFINE_EVERY_INPUT)

    refine_film = bool(getattr(args, "refine_film", False))
    no_film_segmentor = bool(getattr(args, "no_film_segmentor", False))
    return {"edge_sigma_per_input_pitch": bool(getattr(args, "pitch_scaled_edge", False)),
            "refine_max_enlargement": REFINE_EVERY_INPUT if refine_film else ENGINE_REFINE_MAX_ENLARGEMENT,
            "film_segmentor_min_enlargement":
                NO_FILM_SEGMENTOR if no_film_segmentor else ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT}


def add_weights_option(p: argparse.ArgumentParser) -> None:
    """`--weights DIR`, shared with `eval`."""
    p.add_argument("--weights", type=Path, default=None, metavar="DIR",
                   help="weights directory (a `mcgenref train ... --export-to DIR` folder with its manifest.json): "
                        "its segmentor, generator and/or segmentor_film replace the shipped ones; a segmentor of "
                        "its own without a segmentor_film also segments film scans (default: shipped weights)")


def add_outline_margin_option(p: argparse.ArgumentParser) -> None:
    """`--outline-margin MM` (FindingsConfig.outline_margin_mm), shared with `eval`."""
    from mcgenref_fast.config import FindingsConfig

    default = FindingsConfig().outline_margin_mm
    p.add_argument("--outline-margin", type=float, default=default, metavar="MM",
                   help="MCs within this distance (mm) of the breast outline (skin line or image edge) are "
                        f"reported but kept out of clusters; 0 turns it off (default {default:g})")


def findings_config(margin_mm: float) -> Any:
    """The default FindingsConfig with `--outline-margin`; ConfigError for a negative or non-finite margin."""
    import math

    from mcgenref_fast.config import FindingsConfig
    from mcgenref_fast.errors import ConfigError

    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ConfigError(f"--outline-margin must be a finite distance >= 0 mm, got {margin_mm}")
    return replace(FindingsConfig(), outline_margin_mm=float(margin_mm))


def weights_dir_option(directory: Path | None, uses_networks: bool) -> Path | None:
    """`--weights DIR` checked up front: None stays None; with only the top-hat (no network) a ConfigError;
    otherwise the absolute path (workers and Ray actors may run elsewhere) after the manifest check
    (`models.weights.weights_sources`: WeightsError for a folder without a manifest or without networks)."""
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.models.weights import weights_sources

    if directory is None:
        return None
    if not uses_networks:
        raise ConfigError(f"--weights {directory}: the top-hat baseline uses no network; drop --weights or "
                          "choose a network method")
    resolved = Path(directory).expanduser().resolve()
    weights_sources(resolved)
    return resolved


def engine_from_args(args: argparse.Namespace, progress: bool = True) -> Any:
    """Build the Engine the options describe."""
    from mcgenref_fast.config import FindingsConfig
    from mcgenref_fast.pipeline import Engine, EngineConfig

    method = "tophat" if args.method == "tophat" else ("initializer" if args.no_refine else "gpr")
    cfg = replace(EngineConfig(), method=method, implementation="reference" if args.reference else "fast",
                  seed=args.seed, write_seg=not args.no_seg, precision=getattr(args, "precision", "fp32"),
                  findings=findings_config(getattr(args, "outline_margin", FindingsConfig().outline_margin_mm)),
                  **film_fields(args))
    weights_dir = weights_dir_option(getattr(args, "weights", None), method != "tophat")
    return Engine(cfg, device=args.device, progress=progress, weights_dir=weights_dir)


def describe(result: Any) -> str:
    """One line per image: key, MCs, clusters, flag, time; for a film scan also that the film segmentor ran,
    and without TT-GPR where the film rule skipped it (README, film scans), so a user sees why."""
    f = result.findings
    seconds = sum(result.analysis.timings_s.values())
    flag = "FLAGGED" if f.flagged else "not flagged"
    note = ""
    if getattr(result.analysis, "segmentor_applied", None) == "segmentor_film":
        refined = getattr(result.analysis, "method_applied", None) == "gpr"
        note = "; film scan: film segmentor" + ("" if refined else ", no TT-GPR")
    return (f"{result.input_path} -> {result.out_dir}: {len(f.mcs)} MCs, {len(f.clusters)} clusters, "
            f"max cluster score {f.max_cluster_score:.2f}, {flag} ({seconds:.1f} s{note})")


def run(args: argparse.Namespace) -> int:
    from mcgenref_fast.devices import usable_device
    from mcgenref_fast.output_layout import OutputLayout

    if args.method != "tophat":
        usable_device(args.device)   # a missing GPU stops here, before --out is created
    layout = OutputLayout(args.out)
    layout.check_writable()          # before the networks load and the first image is analysed
    engine = engine_from_args(args)
    failed = 0
    for path in args.inputs:
        t = time.perf_counter()
        try:
            result = engine.run_file(path, layout, spacing_mm=args.spacing,
                                     allow_for_processing=args.allow_for_processing)
        except McGenRefError as exc:
            failed += 1
            print(f"mcgenref segment: error: {exc} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
            continue
        print(describe(result))
    if failed:
        print(f"mcgenref segment: {failed} of {len(args.inputs)} inputs failed", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("segment", help="segment mammograms (DICOM, PNG, TIFF, PGM)",
                       description="Segment microcalcifications; writes OUT/<key>/{mask,prob,overlay}.png, "
                       "findings.json and, for DICOM input, seg.dcm, all in the input's grid.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="mammogram files")
    add_common_options(p)
    p.set_defaults(func=run)

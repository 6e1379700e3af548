"""`mcgenref synth`: synthetic training pairs, or MC clusters injected into a whole mammogram (SPEC §2).

Pairs:       mcgenref synth --out DIR -n N [--backgrounds DIR|splits.csv] [--spacing MM] [--seed S] [--patch P]
             → DIR/pair_000000.npz … (image, mask, seeds, centres_px, diameters_mm), DIR/preview.png, DIR/synth.json
Full field:  mcgenref synth --full-field IMAGE --spacing MM --out DIR [--sites N] [--seed S]
             → DIR/image.png (16-bit, input grid, MCs added), DIR/mask.png (input grid), DIR/injected.json,
               DIR/preview.png (canonical crops around the sites, mask ring in red)
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from mcgenref_fast import __version__
from mcgenref_fast.commands.options import positive_int, seed_arg
from mcgenref_fast.errors import ConfigError

PREVIEW_TILES: int = 16
PREVIEW_COLS: int = 4
FULL_FIELD_PREVIEW_PX: int = 256
UINT16_MAX: int = 65535


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth", help="make synthetic microcalcification pairs, or inject MC clusters into a mammogram",
        description="Synthetic MC image formation (SPEC §2). Without --full-field: N training pairs (.npz) at "
        "0.07 mm plus preview.png. With --full-field IMAGE: clusters injected at random sites inside the "
        "breast, written in the input's grid (image.png 16-bit, mask.png, injected.json).",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("-n", type=int, default=PREVIEW_TILES, help=f"number of pairs (default {PREVIEW_TILES})")
    p.add_argument("--backgrounds", type=Path, metavar="DIR|CSV",
                   help="real negatives: a folder of images, or a splits.csv (its `train` rows only); "
                        "default: procedural backgrounds only")
    p.add_argument("--spacing", type=float, metavar="MM",
                   help="pixel spacing (mm) of the input images that carry none (PNG/TIFF/PGM)")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")
    p.add_argument("--patch", type=int, default=256, help="pair size in px at 0.07 mm (default 256)")
    p.add_argument("--full-field", type=Path, metavar="IMAGE", help="inject clusters into this mammogram")
    p.add_argument("--sites", type=int, default=3, help="full field: number of clusters (default 3)")
    p.add_argument("--threads", type=positive_int, help="CPU threads")
    p.set_defaults(func=run)
    return p


def _backgrounds(path: Path | None, spacing_mm: float | None) -> list[tuple[Path, float | None]] | None:
    """(path, spacing) of the real negatives named by --backgrounds (folder or splits.csv)."""
    if path is None:
        return None
    from mcgenref_fast.synth.background import list_images, train_split_backgrounds

    if path.is_file() and path.suffix.lower() == ".csv":
        rows = train_split_backgrounds(path)
    elif path.is_dir():
        rows = [(p, spacing_mm) for p in list_images(path)]
    else:
        raise ConfigError(f"{path}: --backgrounds must be a folder of images or a splits.csv")
    if not rows:
        raise ConfigError(f"{path}: no background images found")
    return rows


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    from mcgenref_fast.atomic import write_with

    def write(fh) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        fh.write(buf.getvalue())

    write_with(path, write)


def run_pairs(args: argparse.Namespace) -> int:
    from mcgenref_fast.atomic import write_json_atomic
    from mcgenref_fast.config import config_to_dict
    from mcgenref_fast.synth import SynthConfig, SyntheticPairDataset
    from mcgenref_fast.synth.preview import write_preview_png

    if args.n < 1 or args.patch < 8:
        raise ConfigError(f"need -n >= 1 and --patch >= 8, got -n {args.n}, --patch {args.patch}")
    cfg = SynthConfig()
    sources = _backgrounds(args.backgrounds, args.spacing)
    ds = SyntheticPairDataset(args.n, args.seed, args.patch, cfg, backgrounds=sources)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    images, masks, n_mcs = [], [], 0
    for i in range(args.n):
        pair, seeds = ds.pair(i)
        n_mcs += len(pair.mcs)
        _save_npz(out / f"pair_{i:06d}.npz", image=pair.image, mask=pair.mask.astype(np.uint8), seeds=seeds,
                  centres_px=pair.centres_px, diameters_mm=pair.diameters_mm,
                  spacing_mm=np.float64(pair.spacing_mm))
        if i < PREVIEW_TILES:
            images.append(pair.image)
            masks.append(pair.mask)
    write_preview_png(out / "preview.png", images, masks, PREVIEW_COLS)
    write_json_atomic(out / "synth.json", {
        "version": __version__, "n": args.n, "seed": args.seed, "patch_px": args.patch,
        "spacing_mm": ds.spacing_mm, "backgrounds": [[str(p), s] for p, s in sources] if sources else None,
        "config": config_to_dict(cfg), "n_mcs": n_mcs,
    })
    print(f"wrote {args.n} pairs ({n_mcs} MCs) and preview.png to {out}")
    return 0


def _to_uint16(image: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """uint16 pixels, (offset, scale) with value = offset + scale * pixel, and the number of clipped pixels.

    When the original fits in 16 bits, values are kept as they are (pixels outside the MCs stay identical)
    and MC pixels above 65535 are clipped; otherwise the whole range is mapped linearly onto 0..65535."""
    if float(original.min()) >= 0.0 and float(original.max()) <= UINT16_MAX:
        clipped = int((image > UINT16_MAX).sum())
        return np.rint(np.clip(image, 0, UINT16_MAX)).astype(np.uint16), 0.0, 1.0, clipped
    lo, hi = float(image.min()), float(image.max())
    scale = max(hi - lo, 1e-12) / UINT16_MAX
    return np.rint((image - lo) / scale).astype(np.uint16), lo, scale, 0


def run_full_field(args: argparse.Namespace) -> int:
    from mcgenref_fast.atomic import write_json_atomic, write_png_atomic
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.config import config_to_dict
    from mcgenref_fast.io import read_mammogram
    from mcgenref_fast.png_outputs import write_mask_png
    from mcgenref_fast.synth import SynthConfig, choose_sites, inject_clusters, input_image_with_mcs
    from mcgenref_fast.synth.preview import write_preview_png

    if args.sites < 1:
        raise ConfigError(f"--sites must be >= 1, got {args.sites}")
    cfg = SynthConfig()
    mammo = read_mammogram(args.full_field, spacing_mm=args.spacing)
    can = to_canonical(mammo)
    rng = np.random.default_rng(np.random.SeedSequence([args.seed]))
    sites = choose_sites(can, args.sites, rng, cfg)
    if len(sites) == 0:
        raise ConfigError(f"{args.full_field}: the breast is too small to hold a cluster")
    inj = inject_clusters(can, sites, rng, cfg)
    image = input_image_with_mcs(mammo.image, can, inj)
    pixels, offset, scale, clipped = _to_uint16(image, np.asarray(mammo.image))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_png_atomic(out / "image.png", pixels)
    write_mask_png(out / "mask.png", inj.mask_input, expected_shape=tuple(mammo.image.shape))
    record = {
        "version": __version__, "input": str(args.full_field), "spacing_mm": mammo.meta.spacing_mm,
        "spacing_source": mammo.meta.spacing_source, "input_shape": list(mammo.image.shape),
        "canonical_shape": list(can.image.shape), "flipped_lr": bool(can.flipped_lr), "seed": args.seed,
        "image_png": {"value_offset": offset, "value_scale": scale, "clipped_pixels": clipped, "dense_bright": True},
        "config": config_to_dict(cfg), **inj.to_dict(),
    }
    write_json_atomic(out / "injected.json", record)
    crops, crop_masks = [], []
    half = FULL_FIELD_PREVIEW_PX // 2
    for cy, cx in sites[:PREVIEW_TILES]:
        y0 = int(np.clip(round(cy) - half, 0, max(0, can.image.shape[0] - FULL_FIELD_PREVIEW_PX)))
        x0 = int(np.clip(round(cx) - half, 0, max(0, can.image.shape[1] - FULL_FIELD_PREVIEW_PX)))
        win = (slice(y0, y0 + FULL_FIELD_PREVIEW_PX), slice(x0, x0 + FULL_FIELD_PREVIEW_PX))
        crops.append(inj.image[win])
        crop_masks.append(inj.mask[win])
    if all(c.shape == crops[0].shape for c in crops):
        write_preview_png(out / "preview.png", crops, crop_masks, min(PREVIEW_COLS, len(crops)))
    print(f"injected {record['n_mcs']} MCs in {record['n_clusters']} clusters into {args.full_field}; wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_full_field(args) if args.full_field is not None else run_pairs(args)


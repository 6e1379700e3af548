#!/usr/bin/env python
"""Development evaluation sets that fit a CPU, from the `dev` split of shared/data ONLY.

    python scripts/make_dev_sets.py [--data ../shared/data] [--out runs/devsets] [--sets mias,semireal,synthetic]

Writes (default under runs/devsets/, which git ignores; never into the tracked tree):
- `mias_dev/`: a `mias` dataset — one crop (at least 512 canonical px ≈ 179 px at 0.2 mm, grown to hold every
  annotated cluster disc + 5 mm) per dev mini-MIAS calcification case, plus the whole dev normals;
  `images/`, `breast/` (the breast mask of the full image, cropped), `calcifications.csv` (row/col in the crop),
  `normals.csv`, `splits.csv` (all rows `dev`), `manifest.json` (crop windows in the original images).
- `semireal_shifted/`: a `semireal` dataset — dev backgrounds (FFDM BCC_2_*, INbreast 22580192, dev mini-MIAS
  normals; never a calcification case) with clusters injected by `synth.fullfield.inject_clusters` under
  **shifted physics** (PSF σ and contrast c0 outside SynthConfig's training ranges, seeds from 7·10⁹ on),
  cut into crops of 512 canonical px around every site plus `--negatives` crops per background; each crop is a
  folder like `mcgenref synth --full-field` writes (image.png 16-bit, mask.png, injected.json) + breast.png.
- `synthetic_shifted/`: a `synthetic` dataset — `.npz` pairs in `mcgenref synth`'s format, same shifted
  physics, backgrounds procedural or patches of the dev FFDM/INbreast images.

Shifted-physics regimes (both parameters outside training, PSF training [0.03, 0.08] mm, c0 [0.15, 1.5]):
`blur_bright`: σ ~ U[0.08, 0.12] mm, c0 ~ LogU[1.5, 3.0]; `sharp_faint`: σ ~ U[0.015, 0.03] mm,
c0 ~ LogU[0.08, 0.15]. Sites alternate between them.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_OFFSET = 7 * 10**9
REGIMES: dict[str, dict[str, tuple[float, float]]] = {
    "blur_bright": {"psf_sigma_mm": (0.08, 0.12), "contrast_c0": (1.5, 3.0)},
    "sharp_faint": {"psf_sigma_mm": (0.015, 0.03), "contrast_c0": (0.08, 0.15)},
}


# ------------------------------------------------------------------------------------------------ helpers
def check_out(out: Path) -> Path:
    """Refuse outputs inside the repository other than its ignored run folders."""
    out = out.resolve()
    allowed = [REPO_ROOT / "runs", REPO_ROOT / "out"]
    if (out == REPO_ROOT or REPO_ROOT in out.parents) and not any(out == a or a in out.parents for a in allowed):
        raise SystemExit(f"{out}: inside the repository's tracked tree; use runs/... (ignored) or a folder outside")
    return out


def dev_rows(data: Path) -> list[dict[str, Any]]:
    with (data / "splits.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"].strip() == "dev"]
    for r in rows:
        r["file"] = data / r["path"]
        r["spacing_mm"] = float(r["spacing_mm"])
    return rows


def mias_calc_names(data: Path) -> set[str]:
    with (data / "mias" / "calcifications.csv").open(newline="") as fh:
        return {r["image"] for r in csv.DictReader(fh)}


def shifted_config(regime: str) -> Any:
    from mcgenref_fast.synth import SynthConfig

    return replace(SynthConfig(), **REGIMES[regime])


def raw_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def write_png(path: Path, arr: np.ndarray) -> None:
    from mcgenref_fast.atomic import write_png_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_png_atomic(path, arr)


def write_json(path: Path, obj: Any) -> None:
    from mcgenref_fast.atomic import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def window(centre: tuple[float, float], size: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of a size window centred at `centre`, shifted to lie in `shape`."""
    out = []
    for c, s, n in zip(centre, size, shape):
        s = min(int(s), int(n))
        lo = int(round(c - s / 2))
        out.append(min(max(lo, 0), n - s))
    return out[0], out[1], min(size[0], shape[0]), min(size[1], shape[1])


def breast_input(can: Any) -> np.ndarray:
    return np.asarray(can.mask_to_input(can.breast_mask), bool)


# ------------------------------------------------------------------------------------------------ mini-MIAS
def make_mias(data: Path, out: Path, crop_px: int) -> None:
    from mcgenref_fast.annotations import read_mias_calcifications, read_mias_normals
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.config import CANONICAL_SPACING_MM
    from mcgenref_fast.io import read_mammogram

    rows = {Path(r["path"]).stem: r for r in dev_rows(data) if r["path"].startswith("mias/")}
    clusters = [c for c in read_mias_calcifications(data / "mias" / "calcifications.csv") if c.image in rows]
    normals = [n for n in read_mias_normals(data / "mias" / "normals.csv") if n.image in rows]
    dest = out / "mias_dev"
    if dest.exists():
        shutil.rmtree(dest)
    calc_rows, normal_rows, split_rows, manifest = [], [], [], {"source": str(data), "crops": {}, "normals": []}
    by_image: dict[str, list[Any]] = {}
    for c in clusters:
        by_image.setdefault(c.image, []).append(c)
    for name, cls in sorted(by_image.items()):
        row = rows[name]
        spacing = row["spacing_mm"]
        side_min = int(round(crop_px * CANONICAL_SPACING_MM / spacing))
        margin = int(round(5.0 / spacing))
        pixels = raw_pixels(row["file"])
        mam = read_mammogram(row["file"], spacing_mm=spacing)
        breast = breast_input(to_canonical(mam))
        lo = np.min([[c.row_px - c.radius_px, c.col_px - c.radius_px] for c in cls], axis=0) - margin
        hi = np.max([[c.row_px + c.radius_px, c.col_px + c.radius_px] for c in cls], axis=0) + margin
        size = (max(side_min, int(np.ceil(hi[0] - lo[0]))), max(side_min, int(np.ceil(hi[1] - lo[1]))))
        r0, c0, h, w = window(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2), size, pixels.shape[:2])
        crop_name = f"{name}_crop"
        write_png(dest / "images" / f"{crop_name}.png", np.ascontiguousarray(pixels[r0:r0 + h, c0:c0 + w]))
        write_png(dest / "breast" / f"{crop_name}.png", (breast[r0:r0 + h, c0:c0 + w] * 255).astype(np.uint8))
        for c in cls:
            calc_rows.append({"image": crop_name, "tissue": c.tissue, "severity": c.severity,
                              "row": f"{c.row_px - r0:g}", "col": f"{c.col_px - c0:g}", "radius_px": f"{c.radius_px:g}"})
        split_rows.append({"path": f"images/{crop_name}.png", "split": "dev", "spacing_mm": spacing})
        manifest["crops"][crop_name] = {"source": row["path"], "row0": r0, "col0": c0, "rows": h, "cols": w}
        print(f"mias_dev: {crop_name} {h}x{w} px with {len(cls)} cluster(s)")
    for n in normals:
        row = rows[n.image]
        shutil.copyfile(row["file"], _mkdir(dest / "images") / f"{n.image}{row['file'].suffix}")
        normal_rows.append({"image": n.image, "tissue": n.tissue})
        split_rows.append({"path": f"images/{n.image}{row['file'].suffix}", "split": "dev", "spacing_mm": row["spacing_mm"]})
        manifest["normals"].append(row["path"])
    _write_csv(dest / "calcifications.csv", ["image", "tissue", "severity", "row", "col", "radius_px"], calc_rows)
    _write_csv(dest / "normals.csv", ["image", "tissue"], normal_rows)
    _write_csv(dest / "splits.csv", ["path", "split", "spacing_mm"], split_rows)
    write_json(dest / "manifest.json", manifest)
    print(f"mias_dev: {len(calc_rows)} clusters in {len(by_image)} crops, {len(normal_rows)} normals -> {dest}")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------------------------ semi-real
def backgrounds(data: Path) -> list[dict[str, Any]]:
    """Dev rows usable as negatives: every dev image except the mini-MIAS calcification cases."""
    calc = mias_calc_names(data)
    return [r for r in dev_rows(data) if Path(r["path"]).stem not in calc]


def to_uint16(image: np.ndarray) -> tuple[np.ndarray, float]:
    """uint16 pixels and the scale s (value = pixel / s): s = 1 when the image already spans > 8 bits and fits,
    else the largest integer s with max·s <= 60000 (8-bit film scans keep the injected MCs' sub-grey-level signal)."""
    top = float(image.max())
    s = 1.0 if 255.0 < top <= 65535.0 else float(max(1, int(60000.0 // max(top, 1e-6))))
    return np.rint(np.clip(image * s, 0, 65535)).astype(np.uint16), s


def make_semireal(data: Path, out: Path, crop_px: int, sites: int, negatives: int, seed_offset: int,
                  limit_backgrounds: int | None) -> None:
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.config import CANONICAL_SPACING_MM
    from mcgenref_fast.io import read_mammogram
    from mcgenref_fast.png_outputs import mask_to_png_array
    from mcgenref_fast.synth import FullFieldInjection, choose_sites, inject_clusters, input_image_with_mcs

    dest = out / "semireal_shifted"
    if dest.exists():
        shutil.rmtree(dest)
    bgs = backgrounds(data)[:limit_backgrounds] if limit_backgrounds else backgrounds(data)
    regime_names = list(REGIMES)
    n_crops = n_mcs_total = 0
    for b, row in enumerate(bgs):
        mam = read_mammogram(row["file"], spacing_mm=row["spacing_mm"])
        can = to_canonical(mam)
        rng = np.random.default_rng(np.random.SeedSequence([seed_offset + b]))
        cfgs = {r: shifted_config(r) for r in regime_names}
        all_sites = choose_sites(can, sites + negatives, rng, cfgs[regime_names[0]])
        inj_sites, neg_sites = all_sites[:sites], all_sites[sites:]
        parts, regimes_of = [], []
        for k, regime in enumerate(regime_names):
            mine = inj_sites[(np.arange(len(inj_sites)) + b) % len(regime_names) == k]
            if len(mine):
                parts.append(inject_clusters(can, mine, rng, cfgs[regime]))
                regimes_of += [regime] * len(mine)
        if not parts:
            print(f"semireal: {row['path']}: no room for a cluster, skipped")
            continue
        signal = sum(p.signal for p in parts)
        inj = FullFieldInjection(can.image + signal, signal, np.logical_or.reduce([p.mask for p in parts]),
                                 np.logical_or.reduce([p.mask_input for p in parts]),
                                 tuple(c for p in parts for c in p.clusters))
        image = input_image_with_mcs(mam.image, can, inj)
        breast = breast_input(can)
        side = int(round(crop_px * CANONICAL_SPACING_MM / mam.meta.spacing_mm))
        centres = [np.asarray(c.site_input_px) for c in inj.clusters] + \
                  [np.asarray(can.points_to_input(s[None]))[0] for s in neg_sites]
        stem = Path(row["path"]).stem.split("_")[0] if row["path"].startswith("inbreast/") else Path(row["path"]).stem
        for j, centre in enumerate(centres):
            r0, c0, h, w = window((float(centre[0]), float(centre[1])), (side, side), image.shape)
            crop = image[r0:r0 + h, c0:c0 + w]
            pixels, scale = to_uint16(crop)
            folder = dest / f"{stem}_{'site' if j < len(inj.clusters) else 'neg'}{j}"
            write_png(folder / "image.png", pixels)
            write_png(folder / "mask.png", mask_to_png_array(inj.mask_input[r0:r0 + h, c0:c0 + w]))
            write_png(folder / "breast.png", (breast[r0:r0 + h, c0:c0 + w] * 255).astype(np.uint8))
            clusters = []
            for cl, regime in zip(inj.clusters, regimes_of):
                site = np.asarray(cl.site_input_px, np.float64) - [r0, c0]
                mcs_in = np.asarray(cl.mc_centres_input_px, np.float64) - [r0, c0]
                touches = ((mcs_in[:, 0] >= -0.5) & (mcs_in[:, 0] < h - 0.5) & (mcs_in[:, 1] >= -0.5)
                           & (mcs_in[:, 1] < w - 0.5)).any()
                if not touches:
                    continue
                clusters.append({
                    "site_input_px": [float(site[0]), float(site[1])],
                    "in_image": bool(0 <= site[0] <= h - 1 and 0 <= site[1] <= w - 1),
                    "radius_mm": cl.radius_mm, "aspect": cl.aspect, "n_mcs": len(cl.mcs), "regime": regime,
                    "psf_sigma_mm": cl.formation.psf_sigma_mm, "contrast_c0_per_mm": cl.formation.c0,
                    "mc_centres_input_px": mcs_in.tolist(), "diameters_mm": [m.diameter_mm for m in cl.mcs],
                })
            n_mcs = sum(c["n_mcs"] for c in clusters if c["in_image"])
            n_mcs_total += n_mcs
            write_json(folder / "injected.json", {
                "source": row["path"], "split": "dev", "spacing_mm": mam.meta.spacing_mm,
                "spacing_source": mam.meta.spacing_source, "seed": seed_offset + b,
                "crop": {"row0": r0, "col0": c0, "rows": h, "cols": w},
                "image_png": {"value_scale": 1.0 / scale, "value_offset": 0.0, "dense_bright": True},
                "regimes": {k: {n: list(v) for n, v in r.items()} for k, r in REGIMES.items()},
                "n_clusters": sum(c["in_image"] for c in clusters), "n_mcs": n_mcs,
                "mask_pixels": int(inj.mask_input[r0:r0 + h, c0:c0 + w].sum()), "clusters": clusters,
            })
            n_crops += 1
        print(f"semireal: {row['path']}: {len(inj.clusters)} clusters, {len(centres)} crops of {side} px")
    write_json(dest / "manifest.json", {"source": str(data), "seed_offset": seed_offset, "crop_canonical_px": crop_px,
                                        "sites_per_background": sites, "negatives_per_background": negatives,
                                        "regimes": {k: {n: list(v) for n, v in r.items()} for k, r in REGIMES.items()},
                                        "backgrounds": [r["path"] for r in bgs]})
    print(f"semireal: {n_crops} crops, {n_mcs_total} MCs at injected sites -> {dest}")


# ------------------------------------------------------------------------------------------------ synthetic
def make_synthetic(data: Path, out: Path, n: int, patch: int, seed_offset: int) -> None:
    from mcgenref_fast.synth import RealNegativeSampler, SyntheticPairDataset

    dest = out / "synthetic_shifted"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    real = [(r["file"], r["spacing_mm"]) for r in backgrounds(data) if not r["path"].startswith("mias/")]
    regime_names = list(REGIMES)
    sampler = RealNegativeSampler(real, shifted_config(regime_names[0])) if real else None
    sets = [SyntheticPairDataset((n + len(regime_names) - 1 - k) // len(regime_names), seed_offset + 100 + k, patch,
                                 shifted_config(r), backgrounds=sampler) for k, r in enumerate(regime_names)]
    n_mcs = 0
    for i in range(n):
        k = i % len(regime_names)
        pair, seeds = sets[k].pair(i // len(regime_names))
        n_mcs += len(pair.mcs)
        buf = io.BytesIO()
        np.savez_compressed(buf, image=pair.image, mask=pair.mask.astype(np.uint8), seeds=seeds,
                            centres_px=pair.centres_px, diameters_mm=pair.diameters_mm,
                            spacing_mm=np.float64(pair.spacing_mm))
        (dest / f"pair_{i:06d}.npz").write_bytes(buf.getvalue())
    write_json(dest / "synth.json", {"n": n, "patch_px": patch, "spacing_mm": sets[0].spacing_mm, "n_mcs": n_mcs,
                                     "seeds": [s.seed for s in sets], "regimes": regime_names,
                                     "regime_of_pair": "pair i uses regimes[i % 2]",
                                     "ranges": {k: {n_: list(v) for n_, v in r.items()} for k, r in REGIMES.items()},
                                     "backgrounds": [str(p) for p, _ in real] + ["procedural"]})
    print(f"synthetic: {n} pairs ({n_mcs} MCs) -> {dest}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data", help="shared/data folder")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "devsets", help="output folder (default runs/devsets)")
    ap.add_argument("--sets", default="mias,semireal,synthetic", help="comma-separated: mias, semireal, synthetic")
    ap.add_argument("--crop-px", type=int, default=512, help="crop side in canonical px (default 512)")
    ap.add_argument("--sites", type=int, default=3, help="semireal: injected clusters per background (default 3)")
    ap.add_argument("--negatives", type=int, default=1, help="semireal: crops without a site per background (default 1)")
    ap.add_argument("--limit-backgrounds", type=int, default=None, help="semireal: use the first N backgrounds only")
    ap.add_argument("-n", type=int, default=48, help="synthetic: number of pairs (default 48)")
    ap.add_argument("--patch", type=int, default=256, help="synthetic: pair size in px (default 256)")
    ap.add_argument("--seed-offset", type=int, default=SEED_OFFSET, help="seed base (default 7e9: never used in training)")
    args = ap.parse_args(argv)
    if not (args.data / "splits.csv").is_file():
        print(f"{args.data}: no splits.csv (pass --data)", file=sys.stderr)
        return 2
    out = check_out(args.out)
    wanted = {s.strip() for s in args.sets.split(",") if s.strip()}
    unknown = wanted - {"mias", "semireal", "synthetic"}
    if unknown:
        print(f"unknown set(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "mias" in wanted:
        make_mias(args.data, out, args.crop_px)
    if "semireal" in wanted:
        make_semireal(args.data, out, args.crop_px, args.sites, args.negatives, args.seed_offset, args.limit_backgrounds)
    if "synthetic" in wanted:
        make_synthetic(args.data, out, args.n, args.patch, args.seed_offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The models' quality bar on a fixed synthetic validation set (256² patches at 0.07 mm).

Segmentor: pooled pixel Dice / recall / precision, MC-level sensitivity (a true MC, an 8-connected
component of the true mask, is found when a predicted 8-connected component comes within 0.5 mm of it,
nearest pixels) and false-positive MCs per 256² patch (predicted components with no true MC within
0.5 mm).

Generator: seeds at a random 50 % of the true MCs; the seed-consistent projection of SPEC §4 steps 2-3
(x <- (1-t0)·eps + t0·I, 4 Euler steps, x̂ = max(W·x + (1-W)·I, 0), y = mean over 2 samples of
sigmoid(f(x̂))) must let the segmentor find MORE true MCs than on the raw patch, with at most 10 % more
false-positive MCs (one MC of slack over the whole set when the raw count is tiny). Exit status 1 when
the generator check fails. Prints a markdown table (paste it into MODEL_CARD.md).

    PYTHONPATH=. python scripts/validate_models.py [--weights DIR] [--n 200] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcgenref_fast.config import CANONICAL_SPACING_MM, RefineConfig
from mcgenref_fast.models.flow import euler_project

VALIDATION_SEED = 1_987_654_321   # fixed set; training uses seed s (+10**9 for its own validation), s small


@dataclass
class Tally:
    """Pooled pixel confusion and MC-level counts of one method over the set."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    true_mcs: int = 0
    found_mcs: int = 0
    fp_mcs: int = 0
    patches: int = 0
    pixels: int = 0

    def add(self, pred: np.ndarray, true: np.ndarray, match_px: float) -> None:
        self.tp += int(np.count_nonzero(pred & true))
        self.fp += int(np.count_nonzero(pred & ~true))
        self.fn += int(np.count_nonzero(~pred & true))
        n_true, n_found, n_fp = match_mcs(pred, true, match_px)
        self.true_mcs += n_true
        self.found_mcs += n_found
        self.fp_mcs += n_fp
        self.patches += 1
        self.pixels += pred.size

    def row(self, name: str) -> dict:
        dice = 1.0 if self.tp + self.fp + self.fn == 0 else 2 * self.tp / (2 * self.tp + self.fp + self.fn)
        nan = float("nan")
        return {
            "method": name,
            "dice": dice,
            "recall": self.tp / (self.tp + self.fn) if self.tp + self.fn else nan,
            "precision": self.tp / (self.tp + self.fp) if self.tp + self.fp else nan,
            "mc_sensitivity": self.found_mcs / self.true_mcs if self.true_mcs else nan,
            "found_mcs": self.found_mcs,
            "true_mcs": self.true_mcs,
            "fp_mcs": self.fp_mcs,
            "fp_per_patch": self.fp_mcs * 256 * 256 / max(1, self.pixels),  # per 256² px of patch
        }


def match_mcs(pred: np.ndarray, true: np.ndarray, match_px: float) -> tuple[int, int, int]:
    """(true MCs, true MCs found, false-positive predicted MCs) by SPEC §8's rule (`metrics_mc.match_mcs`,
    here in px: spacing 1): components are 8-connected; a true MC is found when a predicted component comes
    within `match_px` of it; a predicted component with no true MC within `match_px` is a false positive."""
    from mcgenref_fast.metrics_mc import match_mcs as match_components, true_from_mask

    m = match_components(pred, true_from_mask(true), spacing_mm=1.0, tolerance_mm=match_px)
    return m.n_true, m.n_found, int(np.count_nonzero(~m.pred_is_tp))


def blend_weight(seeds_rc: np.ndarray, shape: tuple[int, int], rho_px: float, gamma: float) -> np.ndarray:
    """SPEC §4: W(u) = min(1, gamma · max_c exp(-|u - c|² / (2 rho²))); 0 everywhere without seeds."""
    w = np.zeros(shape, np.float32)
    if len(seeds_rc) == 0:
        return w
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    for r, c in seeds_rc:
        np.maximum(w, np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * rho_px**2)), out=w)
    return np.minimum(1.0, gamma * w).astype(np.float32)


def half_of_mcs(centres_px: np.ndarray, rng: np.random.Generator, fraction: float = 0.5) -> np.ndarray:
    """A random `fraction` of the MC centres (at least one when there are MCs), rounded to pixels."""
    n = len(centres_px)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    k = max(1, int(round(fraction * n)))
    return np.rint(centres_px[rng.permutation(n)[:k]]).astype(np.int64)


@torch.no_grad()
def run(seg: torch.nn.Module, gen: torch.nn.Module, n: int, patch_px: int, device: torch.device,
        rcfg: RefineConfig, batch: int, seed: int) -> tuple[Tally, Tally]:
    """Tallies of the segmentor on the raw patches and on their seed-consistent projections."""
    from mcgenref_fast.synth.config import SynthConfig
    from mcgenref_fast.synth.dataset import SyntheticPairDataset
    from mcgenref_fast.synth.seeds import gaussian_dots

    cfg = SynthConfig()
    ds = SyntheticPairDataset(n, seed, patch_px, cfg)
    match_px = 0.5 / CANONICAL_SPACING_MM
    raw, refined = Tally(), Tally()
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        pairs = [ds.pair(i)[0] for i in idx]
        rngs = [np.random.default_rng([seed, i, 50]) for i in idx]
        seed_pts = [half_of_mcs(p.centres_px, r) for p, r in zip(pairs, rngs)]
        img = torch.from_numpy(np.stack([p.image for p in pairs]))[:, None].to(device)
        s_map = torch.from_numpy(np.stack([gaussian_dots(pt, p.image.shape, rcfg.seed_sigma_px)
                                           for pt, p in zip(seed_pts, pairs)]))[:, None].to(device)
        w = torch.from_numpy(np.stack([blend_weight(pt, p.image.shape, rcfg.blend_rho_px, rcfg.blend_gamma)
                                       for pt, p in zip(seed_pts, pairs)]))[:, None].to(device)
        p_raw = torch.sigmoid(seg(img))
        y = torch.zeros_like(p_raw)
        for r in range(rcfg.n_samples):
            g = torch.Generator().manual_seed(seed * 7919 + start * 31 + r)
            eps = torch.randn(img.shape, generator=g).to(device)
            x = euler_project(img, s_map, gen, rcfg.t0, rcfg.euler_steps, eps=eps)
            x_hat = torch.clamp(w * x + (1 - w) * img, min=0)
            y += torch.sigmoid(seg(x_hat)) / rcfg.n_samples
        for k, p in enumerate(pairs):
            raw.add(p_raw[k, 0].cpu().numpy() > rcfg.threshold, p.mask, match_px)
            refined.add(y[k, 0].cpu().numpy() > rcfg.threshold, p.mask, match_px)
    return raw, refined


def markdown(rows: list[dict]) -> str:
    head = ("| method | pixel Dice | recall | precision | MC sensitivity | found / true MCs | FP MCs | "
            "FP MCs per 256² patch |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dice']:.3f} | {r['recall']:.3f} | {r['precision']:.3f} | "
                     f"{r['mc_sensitivity']:.3f} | {r['found_mcs']} / {r['true_mcs']} | {r['fp_mcs']} | "
                     f"{r['fp_per_patch']:.3f} |")
    return "\n".join(lines)


def generator_check(raw: dict, refined: dict) -> tuple[bool, str]:
    """More true MCs found, and FP MCs at most +10 % (slack of one MC over the set)."""
    more = refined["found_mcs"] > raw["found_mcs"]
    fp_ok = refined["fp_mcs"] <= max(1.10 * raw["fp_mcs"], raw["fp_mcs"] + 1)
    msg = (f"generator check: found {refined['found_mcs']} vs {raw['found_mcs']} true MCs "
           f"({'more' if more else 'NOT more'}); FP MCs {refined['fp_mcs']} vs {raw['fp_mcs']} "
           f"({'within' if fp_ok else 'OVER'} +10 %) -> {'PASS' if more and fp_ok else 'FAIL'}")
    return more and fp_ok, msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, help="weights directory with manifest.json (default: the shipped ones)")
    ap.add_argument("--n", type=int, default=200, help="validation patches (default 200)")
    ap.add_argument("--patch", type=int, default=256, help="patch size px (default 256)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=VALIDATION_SEED)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mcgenref_fast.models.weights import default_weights_dir, load_models

    device = torch.device(args.device)
    weights = args.weights or default_weights_dir()
    seg, gen = load_models(weights, device)
    rcfg = RefineConfig()
    t0 = time.perf_counter()
    raw, refined = run(seg, gen, args.n, args.patch, device, rcfg, args.batch, args.seed)
    rows = [raw.row("segmentor f(I)"), refined.row("f on seed-consistent projection (50 % true seeds)")]
    print(f"validation: {args.n} synthetic {args.patch}² patches at {CANONICAL_SPACING_MM} mm, seed {args.seed}, "
          f"weights {weights} (segmentor {seg.weights_info['sha256'][:12]}, generator "
          f"{gen.weights_info['sha256'][:12]}), t0={rcfg.t0}, {rcfg.euler_steps} Euler steps, "
          f"{rcfg.n_samples} samples, {time.perf_counter() - t0:.0f} s on {device}\n")
    print(markdown(rows))
    ok, msg = generator_check(rows[0], rows[1])
    print("\n" + msg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

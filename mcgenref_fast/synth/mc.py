"""Microcalcifications and clusters (SPEC §2): sampling in mm, supersampled rasterisation in px.

Coordinates are (row, col) px with pixel centres at integers (pixel (r, c) covers [r-½, r+½) × [c-½, c+½)).
Each MC is an ellipse (aspect ≤ 2) or a star-convex blob R(θ) = R0·(1 + Σ a_k cos(kθ + φ_k)), scaled so
that its area is π d²/4 (d = equivalent diameter, mm). Projected thickness thk = d·sqrt(1 - r²), r the
normalised radius. Each MC is rasterised only in its bounding box, `supersample`² points per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mcgenref_fast.synth.config import SynthConfig



@dataclass(frozen=True)
class MC:
    """One microcalcification. `harmonics` empty → ellipse; else star-convex with (k, a_k, φ_k) terms."""

    centre_px: tuple[float, float]
    diameter_mm: float
    angle_rad: float = 0.0
    aspect: float = 1.0
    harmonics: tuple[tuple[int, float, float], ...] = ()

    @property
    def irregular(self) -> bool:
        return bool(self.harmonics)

    @property
    def base_radius_mm(self) -> float:
        """R0 (star-convex) or sqrt(a·b) (ellipse): the area is π·R0²·(1 + ½Σa_k²) = π d²/4."""
        boost = 1.0 + 0.5 * sum(a * a for _, a, _ in self.harmonics)
        return 0.5 * self.diameter_mm / math.sqrt(boost)

    @property
    def extent_mm(self) -> float:
        """Largest distance from the centre to the boundary (mm)."""
        if self.irregular:
            return self.base_radius_mm * (1.0 + sum(abs(a) for _, a, _ in self.harmonics))
        return 0.5 * self.diameter_mm * math.sqrt(self.aspect)


@dataclass(frozen=True)
class Cluster:
    """A sampled cluster: centre (px), radius (major semi-axis, mm), aspect (1 = disc), angle, its MCs."""

    centre_px: tuple[float, float]
    radius_mm: float
    aspect: float
    angle_rad: float
    mcs: tuple[MC, ...] = field(default_factory=tuple)


def sample_diameter_mm(rng: np.random.Generator, cfg: SynthConfig, size: int | None = None) -> np.ndarray | float:
    """Equivalent diameter ~ LogNormal(median, sigma_log) clipped to diameter_clip_mm."""
    d = np.exp(np.log(cfg.diameter_median_mm) + cfg.diameter_sigma_log * rng.standard_normal(size))
    return np.clip(d, *cfg.diameter_clip_mm)


def sample_mc(rng: np.random.Generator, cfg: SynthConfig, centre_px: tuple[float, float]) -> MC:
    """Shape and size of one MC at `centre_px` (fixed number of draws whatever the shape)."""
    d = float(sample_diameter_mm(rng, cfg))
    angle = float(rng.uniform(0.0, np.pi))
    irregular = bool(rng.random() < cfg.p_irregular)
    aspect = float(rng.uniform(1.0, cfg.ellipse_max_aspect))
    k_lo, k_hi = cfg.irregular_harmonics
    ks = np.arange(k_lo, k_hi + 1)
    amps = rng.uniform(0.0, 1.0, size=len(ks)) / ks
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(ks))
    if not irregular:
        return MC(centre_px, d, angle, aspect)
    total = float(amps.sum())
    if total > cfg.irregular_amplitude:
        amps *= cfg.irregular_amplitude / total
    harmonics = tuple((int(k), float(a), float(p)) for k, a, p in zip(ks, amps, phases))
    return MC(centre_px, d, angle, 1.0, harmonics)


def _points_in_ellipse(rng: np.random.Generator, n: int, major: float, minor: float, angle: float) -> np.ndarray:
    """n uniform points (dy, dx) in an ellipse with semi-axes major, minor (same units), rotated by angle."""
    rad = np.sqrt(rng.random(n))
    th = rng.uniform(0.0, 2.0 * np.pi, n)
    u, v = major * rad * np.cos(th), minor * rad * np.sin(th)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([u * sa + v * ca, u * ca - v * sa], axis=1)


def sample_cluster(rng: np.random.Generator, cfg: SynthConfig, shape: tuple[int, int], spacing_mm: float,
                   centre_px: tuple[float, float] | None = None, allowed: np.ndarray | None = None) -> Cluster:
    """A cluster of n ~ U{n_mcs} MCs uniform in a disc or a segmental ellipse of radius ~ U[radius] mm.

    MCs are placed one by one, each at the first of `placement_candidates` uniform draws in the cluster
    shape that lies at least mc_min_gap_ratio × (sum of equivalent radii) from every MC placed before
    (MCs may touch, but do not pile up); an MC with no such draw is left out (a crowded small cluster
    keeps fewer). Then the cluster is cropped like a patch of a larger image: MCs whose centre falls
    outside the image (`shape`) or where `allowed` (bool (H, W)) is False are dropped.
    `centre_px=None` places the centre uniformly in the image.
    """
    h, w = shape
    radius_mm = float(rng.uniform(*cfg.cluster_radius_mm))
    segmental = bool(rng.random() < cfg.p_segmental)
    c_aspect = float(rng.uniform(*cfg.segmental_aspect))
    aspect = c_aspect if segmental else 1.0
    angle = float(rng.uniform(0.0, np.pi))
    n = int(rng.integers(cfg.n_mcs[0], cfg.n_mcs[1] + 1))
    if centre_px is None:
        centre_px = (float(rng.uniform(0.0, h - 1)), float(rng.uniform(0.0, w - 1)))
    radius_px = radius_mm / spacing_mm
    cy, cx = centre_px
    mcs: list[MC] = []
    placed = np.zeros((n, 2))          # every placed MC, kept or cropped, in px
    placed_r_mm = np.zeros(n)
    k = 0
    for _ in range(n):
        mc = sample_mc(rng, cfg, (cy, cx))
        cand = _points_in_ellipse(rng, cfg.placement_candidates, radius_px, radius_px / aspect, angle) + (cy, cx)
        if k and cfg.mc_min_gap_ratio > 0:
            diff = cand[:, None, :] - placed[None, :k, :]
            dist_mm = np.sqrt((diff * diff).sum(-1)) * spacing_mm
            room = (dist_mm >= cfg.mc_min_gap_ratio * (0.5 * mc.diameter_mm + placed_r_mm[None, :k])).all(axis=1)
            hits = np.flatnonzero(room)
            if hits.size == 0:
                continue  # the cluster is full: it keeps fewer MCs
            pos = cand[hits[0]]
        else:
            pos = cand[0]
        placed[k], placed_r_mm[k] = pos, 0.5 * mc.diameter_mm
        k += 1
        r, c = float(pos[0]), float(pos[1])
        if not (0.0 <= r <= h - 1 and 0.0 <= c <= w - 1):
            continue  # cropped by the image edge
        if allowed is not None and not allowed[int(round(r)), int(round(c))]:
            continue  # outside the allowed region (the breast)
        mcs.append(MC((r, c), mc.diameter_mm, mc.angle_rad, mc.aspect, mc.harmonics))
    return Cluster((float(cy), float(cx)), radius_mm, aspect, angle, tuple(mcs))


@dataclass(frozen=True)
class Raster:
    """Rasterised MCs on an (H, W) grid.

    thickness_mm: mean projected thickness per pixel (MCs add up where they overlap);
    coverage: fraction of each pixel's subsamples inside any MC (the union);
    best_px (n, 2) int: each MC's pixel of largest own coverage; best_cov (n,): that coverage.
    """

    thickness_mm: np.ndarray
    coverage: np.ndarray
    best_px: np.ndarray
    best_cov: np.ndarray


def _bbox(mc: MC, shape: tuple[int, int], spacing_mm: float) -> tuple[int, int, int, int]:
    """[r0, r1) × [c0, c1) pixels that can hold part of `mc`, clipped to the grid."""
    ext = mc.extent_mm / spacing_mm
    cy, cx = mc.centre_px
    r0, r1 = max(0, math.floor(cy - ext + 0.5)), min(shape[0], math.floor(cy + ext + 0.5) + 1)
    c0, c1 = max(0, math.floor(cx - ext + 0.5)), min(shape[1], math.floor(cx + ext + 0.5) + 1)
    return r0, r1, c0, c1


def mc_footprint(mc: MC, r0: int, r1: int, c0: int, c1: int, spacing_mm: float,
                 supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled (inside bool, thickness mm) of `mc` over pixels [r0, r1) × [c0, c1)."""
    s = supersample
    offs = (np.arange(s, dtype=np.float64) + 0.5) / s - 0.5
    ys = (np.arange(r0, r1, dtype=np.float64)[:, None] + offs[None, :]).ravel()
    xs = (np.arange(c0, c1, dtype=np.float64)[:, None] + offs[None, :]).ravel()
    dy = ((ys - mc.centre_px[0]) * spacing_mm)[:, None]
    dx = ((xs - mc.centre_px[1]) * spacing_mm)[None, :]
    ca, sa = math.cos(mc.angle_rad), math.sin(mc.angle_rad)
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    if mc.irregular:
        theta = np.arctan2(v, u)
        radius = np.ones_like(theta)
        for k, a, ph in mc.harmonics:
            radius += a * np.cos(k * theta + ph)
        radius *= mc.base_radius_mm
        rr2 = (u * u + v * v) / (radius * radius)
    else:
        a = mc.base_radius_mm * math.sqrt(mc.aspect)
        b = mc.base_radius_mm / math.sqrt(mc.aspect)
        rr2 = (u / a) ** 2 + (v / b) ** 2
    inside = rr2 < 1.0
    thick = mc.diameter_mm * np.sqrt(np.maximum(1.0 - rr2, 0.0))
    return inside, thick


def _block_mean(a: np.ndarray, s: int) -> np.ndarray:
    h, w = a.shape[0] // s, a.shape[1] // s
    return a.reshape(h, s, w, s).sum(axis=(1, 3), dtype=np.float32) * np.float32(1.0 / (s * s))


def rasterise(mcs: tuple[MC, ...] | list[MC], shape: tuple[int, int], spacing_mm: float,
              supersample: int = 4) -> Raster:
    """Thickness, union coverage and each MC's best pixel on an (H, W) grid (float32 / int64)."""
    s = supersample
    thickness = np.zeros(shape, np.float32)
    coverage = np.zeros(shape, np.float32)
    n = len(mcs)
    best_px = np.zeros((n, 2), np.int64)
    best_cov = np.zeros(n, np.float32)
    if n == 0:
        return Raster(thickness, coverage, best_px, best_cov)
    boxes = [_bbox(mc, shape, spacing_mm) for mc in mcs]
    R0, R1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    C0, C1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    union = np.zeros(((R1 - R0) * s, (C1 - C0) * s), bool)
    for i, (mc, (r0, r1, c0, c1)) in enumerate(zip(mcs, boxes)):
        inside, thick = mc_footprint(mc, r0, r1, c0, c1, spacing_mm, s)
        thickness[r0:r1, c0:c1] += _block_mean(thick, s)
        union[(r0 - R0) * s:(r1 - R0) * s, (c0 - C0) * s:(c1 - C0) * s] |= inside
        own = _block_mean(inside, s)
        j = int(np.argmax(own))
        if own.flat[j] > 0:
            best_px[i] = (r0 + j // own.shape[1], c0 + j % own.shape[1])
            best_cov[i] = own.flat[j]
        else:  # sub-subsample MC: its centre pixel
            best_px[i] = (min(max(round(mc.centre_px[0]), 0), shape[0] - 1),
                          min(max(round(mc.centre_px[1]), 0), shape[1] - 1))
    coverage[R0:R1, C0:C1] = _block_mean(union, s)
    return Raster(thickness, coverage, best_px, best_cov)

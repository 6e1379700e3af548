"""Full-field injection (SPEC §2, for evaluation sets): the same formation model applied at chosen sites of
a whole canonical mammogram; the mask and the added intensity are mapped back to the input grid with the
CanonicalImage's own inverse mapping.

The real image already carries its own quantum noise, so no noise is added here (adding it only around the
sites would mark them). Sites are (row, col) px in the canonical grid, or in the input grid with
`sites_in="input"`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mcgenref_fast.synth.config import SynthConfig
from mcgenref_fast.synth.formation import (PSF_TRUNCATE_SIGMAS, FormationParams, exact_mask, mc_signal,
                                           sample_formation, window_px)
from mcgenref_fast.synth.mc import MC, rasterise, sample_cluster

SITE_SEPARATION_RADII: float = 2.0   # chosen sites are at least this many max cluster radii apart
SITE_DRAWS_PER_SITE: int = 200       # random candidates tried per requested site


@dataclass(frozen=True)
class InjectedCluster:
    """One injected cluster: site (canonical and input px), geometry, its formation draws, its MCs."""

    site_canonical_px: tuple[float, float]
    site_input_px: tuple[float, float]
    radius_mm: float
    aspect: float
    formation: FormationParams
    mcs: tuple[MC, ...]                 # centres in canonical px
    mc_centres_input_px: np.ndarray     # (n, 2)


@dataclass(frozen=True)
class FullFieldInjection:
    """image: canonical image with the MCs; signal: what was added (canonical units); mask: canonical bool;
    mask_input: bool in the input grid and orientation."""

    image: np.ndarray
    signal: np.ndarray
    mask: np.ndarray
    mask_input: np.ndarray
    clusters: tuple[InjectedCluster, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the injected clusters and MCs (px are (row, col); mm as named)."""
        out = []
        for i, cl in enumerate(self.clusters):
            out.append({
                "cluster": i,
                "site_canonical_px": list(cl.site_canonical_px),
                "site_input_px": list(cl.site_input_px),
                "radius_mm": cl.radius_mm,
                "aspect": cl.aspect,
                "psf_sigma_mm": cl.formation.psf_sigma_mm,
                "contrast_c0_per_mm": cl.formation.c0,
                "n_mcs": len(cl.mcs),
                "mcs": [{"centre_canonical_px": list(mc.centre_px),
                         "centre_input_px": [float(v) for v in cin],
                         "diameter_mm": mc.diameter_mm,
                         "shape": "irregular" if mc.irregular else "ellipse",
                         "aspect": mc.aspect}
                        for mc, cin in zip(cl.mcs, cl.mc_centres_input_px)],
            })
        return {"n_clusters": len(out), "n_mcs": int(sum(len(c.mcs) for c in self.clusters)),
                "mask_pixels_input": int(self.mask_input.sum()), "clusters": out}


def _affine_to_input(canonical: Any) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with points_to_input(p) = p @ A.T + b, read off the canonical image's own mapping."""
    probe = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = np.asarray(canonical.points_to_input(probe), np.float64)
    b = q[0]
    a = np.stack([q[1] - b, q[2] - b], axis=1)
    return a, b


def input_to_canonical_points(canonical: Any, rc_input_px: np.ndarray) -> np.ndarray:
    """Inverse of `canonical.points_to_input` (an affine map: scale and flip), (n, 2) canonical px."""
    a, b = _affine_to_input(canonical)
    pts = np.asarray(rc_input_px, np.float64).reshape(-1, 2)
    return (pts - b) @ np.linalg.inv(a).T


def max_cluster_reach_px(cfg: SynthConfig, spacing_mm: float) -> int:
    """Pixels around a site that a cluster, its MCs, the PSF and the 2 mm local-mean window can touch."""
    mc_ext = 0.5 * cfg.diameter_clip_mm[1] * max(math.sqrt(cfg.ellipse_max_aspect), 1.0 + cfg.irregular_amplitude)
    psf = PSF_TRUNCATE_SIGMAS * cfg.psf_sigma_mm[1]
    reach_mm = cfg.cluster_radius_mm[1] + mc_ext + psf
    return int(math.ceil(reach_mm / spacing_mm)) + window_px(cfg.local_mean_window_mm, spacing_mm) // 2 + 2


def choose_sites(canonical: Any, n_sites: int, rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """Up to n_sites canonical (row, col) px inside the breast, at least one max cluster radius from its
    edge and SITE_SEPARATION_RADII radii apart (fewer when the breast is too small)."""
    from scipy import ndimage as ndi

    h = canonical.spacing_mm
    margin = cfg.cluster_radius_mm[1] / h
    inner = ndi.distance_transform_edt(np.asarray(canonical.breast_mask, bool)) >= margin
    cand = np.argwhere(inner)
    sites: list[np.ndarray] = []
    if len(cand) == 0:
        return np.zeros((0, 2), np.float64)
    for _ in range(n_sites * SITE_DRAWS_PER_SITE):
        if len(sites) == n_sites:
            break
        p = cand[rng.integers(len(cand))].astype(np.float64)
        if all(np.hypot(*(p - s)) >= SITE_SEPARATION_RADII * margin for s in sites):
            sites.append(p)
    return np.array(sites, np.float64).reshape(-1, 2)


def inject_clusters(canonical: Any, sites_px: np.ndarray, rng: np.random.Generator, cfg: SynthConfig = SynthConfig(),
                    sites_in: Literal["canonical", "input"] = "canonical") -> FullFieldInjection:
    """Inject one cluster (n ~ U{n_mcs}, never empty by choice) centred at each site; MCs stay inside
    the breast mask. The background for the contrast modulation is the original canonical image."""
    if sites_in not in ("canonical", "input"):
        raise ValueError(f"sites_in must be 'canonical' or 'input', got {sites_in!r}")
    sites = np.asarray(sites_px, np.float64).reshape(-1, 2)
    if sites_in == "input":
        sites = input_to_canonical_points(canonical, sites)
    base = np.asarray(canonical.image, np.float32)
    breast = np.asarray(canonical.breast_mask, bool)
    h = float(canonical.spacing_mm)
    big_h, big_w = base.shape
    signal = np.zeros_like(base)
    mask = np.zeros(base.shape, bool)
    reach = max_cluster_reach_px(cfg, h)
    clusters = []
    for site in sites:
        cy, cx = float(site[0]), float(site[1])
        if not (0 <= cy <= big_h - 1 and 0 <= cx <= big_w - 1):
            raise ValueError(f"site (row {cy:.1f}, col {cx:.1f}) lies outside the {big_h}x{big_w} canonical image")
        y0, y1 = max(0, int(cy) - reach), min(big_h, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(big_w, int(cx) + reach + 1)
        win = (slice(y0, y1), slice(x0, x1))
        cluster = sample_cluster(rng, cfg, (y1 - y0, x1 - x0), h, (cy - y0, cx - x0), breast[win])
        raster = rasterise(cluster.mcs, (y1 - y0, x1 - x0), h, cfg.supersample)
        params = sample_formation(rng, cfg)
        signal[win] += mc_signal(base[win], raster.thickness_mm, params, h, cfg)
        mask[win] |= exact_mask(raster, cfg)
        mcs = tuple(MC((m.centre_px[0] + y0, m.centre_px[1] + x0), m.diameter_mm, m.angle_rad, m.aspect, m.harmonics)
                    for m in cluster.mcs)
        centres = np.array([m.centre_px for m in mcs], np.float64).reshape(-1, 2)
        centres_in = np.asarray(canonical.points_to_input(centres), np.float64).reshape(-1, 2)
        site_in = np.asarray(canonical.points_to_input(np.array([[cy, cx]])), np.float64).reshape(2)
        clusters.append(InjectedCluster((cy, cx), (float(site_in[0]), float(site_in[1])), cluster.radius_mm,
                                        cluster.aspect, params, mcs, centres_in))
    mask_input = np.asarray(canonical.mask_to_input(mask), bool)
    return FullFieldInjection(base + signal, signal, mask, mask_input, tuple(clusters))


def signal_to_input(canonical: Any, signal: np.ndarray) -> np.ndarray:
    """The added intensity in the input grid and the input's units: the canonical signal flipped back,
    resampled like the image was (`canonical.resample`: area-averaging down, bicubic up, so the MCs keep
    their integrated brightness) and scaled by (hi - lo). Falls back to `prob_to_input` (nearest up, max
    down) when the canonical module offers no resampler."""
    shape = tuple(int(v) for v in canonical.input_shape)
    peak = float(np.max(signal)) if signal.size else 0.0
    if peak <= 0:
        return np.zeros(shape, np.float32)
    try:
        from mcgenref_fast.canonical import resample
    except ImportError:
        mapped = np.asarray(canonical.prob_to_input(signal / peak), np.float32) * np.float32(peak)
    else:
        arr = np.asarray(signal, np.float32)
        arr = arr[:, ::-1] if canonical.flipped_lr else arr
        mapped = np.maximum(resample(arr, shape), 0.0) if arr.shape != shape else np.ascontiguousarray(arr)
    return mapped.astype(np.float32) * np.float32(canonical.hi - canonical.lo)


def input_image_with_mcs(input_image: np.ndarray, canonical: Any, injection: FullFieldInjection) -> np.ndarray:
    """The input image (its grid, dense bright) plus the injected MCs (float32)."""
    img = np.asarray(input_image, np.float32)
    add = signal_to_input(canonical, injection.signal)
    if add.shape != img.shape:
        raise ValueError(f"mapped signal {add.shape} does not match the input image {img.shape}")
    return img + add

"""One synthetic training pair (x, m) (SPEC §2): background, cluster, rasterisation, formation, mask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcgenref_fast.config import CANONICAL_SPACING_MM
from mcgenref_fast.synth.background import procedural_background
from mcgenref_fast.synth.config import SynthConfig
from mcgenref_fast.synth.formation import FormationParams, exact_mask, form_image, sample_formation
from mcgenref_fast.synth.mc import MC, rasterise, sample_cluster


@dataclass(frozen=True)
class SyntheticPair:
    """image float32 (P, P) ≥ 0; mask bool (P, P); centres_px (n, 2) (row, col); diameters_mm (n,);
    plus what made it: background B, the MCs and the formation draws."""

    image: np.ndarray
    mask: np.ndarray
    centres_px: np.ndarray
    diameters_mm: np.ndarray
    background: np.ndarray
    mcs: tuple[MC, ...]
    formation: FormationParams
    spacing_mm: float


def sample_on_source_grid(image: np.ndarray, background: np.ndarray, spacing_mm: float,
                          source_spacing_mm: float) -> np.ndarray:
    """`background + up(down(image - background))`, ≥ 0: the formed MC layer (MCs, their noise) as a file of
    pitch `source_spacing_mm` records it — area average onto that grid, then canonical's bicubic back to
    `spacing_mm` (`canonical.resample`, what reading such a file does). The background is already a real
    file's canonical image, so it is left as it is."""
    from mcgenref_fast.canonical import resample

    shape = image.shape
    coarse = tuple(max(1, int(round(n * spacing_mm / source_spacing_mm))) for n in shape)
    layer = np.asarray(image, np.float32) - np.asarray(background, np.float32)
    back = resample(resample(layer, coarse), shape)
    return np.maximum(np.asarray(background, np.float32) + back, 0.0).astype(np.float32)


def make_pair(rng: np.random.Generator, cfg: SynthConfig = SynthConfig(), patch_px: int = 256,
              spacing_mm: float = CANONICAL_SPACING_MM, background: np.ndarray | None = None,
              source_spacing_mm: float | None = None) -> SyntheticPair:
    """Draw one pair. `background` (P, P) canonical patch, or None for a procedural one. `source_spacing_mm`:
    pixel pitch of the file the background came from; when it is at least `cfg.source_sampling_min_ratio`
    times `spacing_mm` (film), the MC layer is sampled on that grid too (`sample_on_source_grid`).

    The rng draws happen in a fixed order (background, negative?, cluster, formation, noise), so a seeded
    generator always gives the same pair.
    """
    shape = (patch_px, patch_px)
    if background is None:
        b = procedural_background(rng, shape, spacing_mm, cfg)
    else:
        b = np.asarray(background, np.float32)
        if b.shape != shape:
            raise ValueError(f"background shape {b.shape} != patch {shape}")
    negative = bool(rng.random() < cfg.p_negative)
    mcs = () if negative else sample_cluster(rng, cfg, shape, spacing_mm).mcs
    raster = rasterise(mcs, shape, spacing_mm, cfg.supersample)
    params = sample_formation(rng, cfg)
    image = form_image(b, raster.thickness_mm, params, spacing_mm, cfg, rng, noise=True)
    if source_spacing_mm is not None and source_spacing_mm >= cfg.source_sampling_min_ratio * spacing_mm:
        image = sample_on_source_grid(image, b, spacing_mm, source_spacing_mm)
    centres = np.array([mc.centre_px for mc in mcs], np.float64).reshape(-1, 2)
    diameters = np.array([mc.diameter_mm for mc in mcs], np.float64)
    return SyntheticPair(image, exact_mask(raster, cfg), centres, diameters, b, tuple(mcs), params, spacing_mm)

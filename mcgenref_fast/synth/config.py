"""SynthConfig: every range of the synthetic MC image formation model (SPEC §2, seed maps §3).

Ranges are `(low, high)` tuples; distances in mm unless the name says px; intensities are canonical units
(the breast's 0.5 %..99.8 % percentile range maps to [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

from mcgenref_fast.config import CANONICAL_SPACING_MM


@dataclass(frozen=True)
class SynthConfig:
    """SPEC §2 defaults. Procedural background ranges: see docs/synth_calibration.md (compared with canonical
    patches of the train-split FFDM images); mc_min_gap_ratio is a choice beyond SPEC, measured there too."""

    # --- procedural background B (anatomical 1/f^beta noise + smooth density field) ---
    beta_psd: tuple[float, float] = (2.5, 3.5)            # power spectrum ∝ 1/f^beta
    background_mean: tuple[float, float] = (0.15, 0.75)   # patch mean (canonical units)
    anatomical_std: tuple[float, float] = (0.04, 0.20)    # std of the 1/f^beta component
    density_std: tuple[float, float] = (0.0, 0.08)        # std of the smooth density field
    density_scale_mm: float = 6.0                         # smallest wavelength/2 of the density field
    density_modes: int = 4                                # cosine modes per axis (low order, non-periodic)
    # --- real negative backgrounds ---
    p_real_background: float = 0.75          # share of real patches when a sampler is given
    real_min_breast_fraction: float = 1.0    # a real patch must lie (this much) inside the breast mask
    # Film digitised at a coarser pitch than canonical (mini-MIAS: 0.2 mm) carries every MC blurred by that
    # sampling; True forms the MC layer (x - B, MCs and noise) on the real source's own grid too: area
    # average down to the source pitch, canonical's bicubic back up (what reading such a file does).
    match_source_sampling: bool = False
    source_sampling_min_ratio: float = 1.25  # ... when source pitch >= this × canonical spacing
    # --- cluster ---
    p_negative: float = 0.25                 # no MC at all
    n_mcs: tuple[int, int] = (3, 30)         # inclusive
    cluster_radius_mm: tuple[float, float] = (1.0, 6.0)
    p_segmental: float = 0.3                 # elongated cluster (ellipse) instead of a disc
    segmental_aspect: tuple[float, float] = (2.0, 4.0)   # major / minor semi-axis; major = radius
    mc_min_gap_ratio: float = 1.0            # centres >= this × (r_i + r_j) apart: MCs may touch, not pile up
    placement_candidates: int = 16           # uniform position draws per MC (first valid one is used)
    # --- single MC ---
    diameter_median_mm: float = 0.35         # LogNormal median of the equivalent diameter
    diameter_sigma_log: float = 0.5
    diameter_clip_mm: tuple[float, float] = (0.1, 1.5)
    p_irregular: float = 0.5                 # star-convex blob instead of an ellipse
    ellipse_max_aspect: float = 2.0
    irregular_harmonics: tuple[int, int] = (2, 6)         # k range of the radius harmonics (inclusive)
    irregular_amplitude: float = 0.5         # max sum of |a_k|: radius stays >= (1 - this) * R0
    supersample: int = 4                     # subsamples per pixel side
    # --- image formation ---
    psf_sigma_mm: tuple[float, float] = (0.03, 0.08)
    contrast_c0: tuple[float, float] = (0.15, 1.5)       # LogUniform, per mm of thickness
    density_attenuation: float = 0.5         # k = c0 * (1 - 0.5 * L)
    local_mean_window_mm: float = 2.0        # L = local mean of B over this window, clipped to [0, 1]
    noise_sigma: tuple[float, float] = (0.0, 0.02)       # x = x0 + N(0, sigma_n^2 * max(x0, 0))
    mask_min_coverage: float = 0.5           # mask pixel: supersampled coverage >= this
    # --- seed maps (SPEC §3) ---
    seed_sigma_px: float = 1.0
    seed_fraction: tuple[float, float] = (0.3, 1.0)      # share of MC centres that get a dot
    spurious_seed_mean: float = 0.3          # Poisson mean of spurious dots per patch
    seed_radius_sigmas: float = 4.0          # dots are drawn within this many sigma
    # --- default geometry ---
    spacing_mm: float = CANONICAL_SPACING_MM
    patch_px: int = 256

    def __post_init__(self) -> None:
        for name in ("beta_psd", "background_mean", "anatomical_std", "density_std", "n_mcs",
                     "cluster_radius_mm", "segmental_aspect", "diameter_clip_mm", "irregular_harmonics",
                     "psf_sigma_mm", "contrast_c0", "noise_sigma", "seed_fraction"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"SynthConfig.{name}: low {lo} > high {hi}")
        for name in ("p_real_background", "p_negative", "p_segmental", "p_irregular", "mask_min_coverage",
                     "real_min_breast_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SynthConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.contrast_c0[0] <= 0:
            raise ValueError("SynthConfig.contrast_c0 must be positive (log-uniform)")
        if self.n_mcs[0] < 1:
            raise ValueError("SynthConfig.n_mcs must start at >= 1 (use p_negative for empty patches)")
        if not 0.0 <= self.irregular_amplitude < 1.0:
            raise ValueError("SynthConfig.irregular_amplitude must be in [0, 1)")
        if self.ellipse_max_aspect < 1.0:
            raise ValueError("SynthConfig.ellipse_max_aspect must be >= 1")
        if self.mc_min_gap_ratio < 0 or self.placement_candidates < 1:
            raise ValueError("SynthConfig: need mc_min_gap_ratio >= 0 and placement_candidates >= 1")
        if not self.source_sampling_min_ratio >= 1.0:
            raise ValueError("SynthConfig.source_sampling_min_ratio must be >= 1 (a source coarser than canonical)")
        if self.supersample < 1:
            raise ValueError("SynthConfig.supersample must be >= 1")

"""Frozen configuration dataclasses holding the SPEC's defaults (units in the names: mm or px).

Every stage reads its settings from one of these; no scattered literals. `config_hash` gives a stable
digest recorded in findings.json provenance.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

CANONICAL_SPACING_MM: float = 0.07  # SPEC h: INbreast pixel pitch


@dataclass(frozen=True)
class CanonicalConfig:
    """SPEC §1 canonical form: resample to `spacing_mm`, chest wall left, robust normalisation."""

    spacing_mm: float = CANONICAL_SPACING_MM
    lo_percentile: float = 0.5
    hi_percentile: float = 99.8


@dataclass(frozen=True)
class TileConfig:
    """SPEC §4 tiles: size `tile_px`, overlap `overlap_px` (at most tile_px / 2)."""

    tile_px: int = 256
    overlap_px: int = 32

    def __post_init__(self) -> None:
        if self.tile_px < 1:
            raise ValueError(f"tile_px must be >= 1, got {self.tile_px}")
        if not 0 <= self.overlap_px <= self.tile_px // 2:
            raise ValueError(f"overlap_px must be in [0, tile_px/2] = [0, {self.tile_px // 2}], got {self.overlap_px}")


@dataclass(frozen=True)
class RefineConfig:
    """SPEC §4 TT-GPR settings (defaults are the SPEC's)."""

    tiles: TileConfig = field(default_factory=TileConfig)
    spacing_mm: float = CANONICAL_SPACING_MM
    outer_iters: int = 3            # K
    n_samples: int = 2              # projections per tile and iteration
    t0: float = 0.7                 # projection start time
    euler_steps: int = 4            # N
    seed_threshold: float = 0.3     # tau_s (probability)
    max_seeds_per_tile: int = 64    # n_s
    seed_sigma_px: float = 1.0      # Gaussian seed dots
    blend_rho_mm: float = 1.0       # rho = 1 mm / h
    blend_gamma: float = 2.0        # gamma
    inner_steps: int = 10           # J
    eta: float = 0.5                # step size
    lam_ov: float = 1.0
    lam_edge: float = 0.1
    edge_delta: float = 0.5
    edge_sigma_i: float = 0.05
    lam_prox: float = 0.05
    z_clamp: float = 4.0            # z0 = clamp(f(I), -4, 4)
    threshold: float = 0.5          # operating threshold on p

    @property
    def blend_rho_px(self) -> float:
        return self.blend_rho_mm / self.spacing_mm


# The engine's TT-GPR operating point (issue 11): SPEC §4's defaults except the proximal weight λ_prox, 0.2
# instead of 0.05, and the projection start t0, 0.85 instead of 0.7, both chosen on the `dev` semi-real set
# (README, "Operating point"). λ_prox 0.2 keeps TT-GPR closer to the segmentor's logits z0 away from the
# generator's evidence, which cut its false positives on real tissue; with the shipped generator (trained for the
# surrogate, MODEL_CARD) t0 0.85 keeps more of the image and put the surrogate above p0 at the true MCs. The step
# stays stable (curvature bound 0.25 + 1 + 1.6 + 0.2 ≈ 3.05, η·L ≈ 1.5 < 2). `refine()` and the reference keep
# the SPEC's defaults (RefineConfig()); only `EngineConfig` (CLI, eval, screen) starts from this one.
ENGINE_LAM_PROX = 0.2
ENGINE_T0 = 0.85


def engine_refine_config() -> RefineConfig:
    """The TT-GPR settings an Engine uses by default: `RefineConfig()` with `lam_prox = ENGINE_LAM_PROX` and
    `t0 = ENGINE_T0`."""
    return RefineConfig(lam_prox=ENGINE_LAM_PROX, t0=ENGINE_T0)


# TT-GPR runs on inputs that reach the canonical pitch by at most this enlargement (input pitch / canonical
# pitch); coarser inputs keep the segmentor's map (issue 11, README "Film scans"). The generator learnt MCs at
# 0.07 mm; a film scanned at 0.2 mm is enlarged 2.9× and there every TT-GPR setting and generator tried lost
# recall against the segmentor. 2.0 (0.14 mm) keeps every digital detector pitch (0.05-0.1 mm) refined.
ENGINE_REFINE_MAX_ENLARGEMENT = 2.0
REFINE_EVERY_INPUT = float("inf")   # refine_max_enlargement of `--refine-film` and of sweeps

# Film segmentor (issue 11): inputs reaching 0.07 mm by more than this enlargement (film scans) are segmented
# by the weights' `segmentor_film` when they hold one: segmentor v7, v4 fine-tuned with MCs formed on the film's
# own grid and then on film backgrounds only (MODEL_CARD "Film segmentor"). On the 48 semi-real dev film crops
# it beat v4 on Dice, precision and recall (0.548 / 0.557 / 0.540 against 0.491 / 0.463 / 0.522) and on
# mini-MIAS dev had 1.00 FP clusters per normal against 1.58; its earlier form (v6) lost on digital crops as the
# only segmentor, so they keep v4. Same boundary as the film rule above; NO_FILM_SEGMENTOR (`--no-film-segmentor`,
# sweeps) segments every input with `segmentor`.
ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT = ENGINE_REFINE_MAX_ENLARGEMENT
NO_FILM_SEGMENTOR = float("inf")


@dataclass(frozen=True)
class FindingsConfig:
    """SPEC §6 findings: MCs, large components, clusters."""

    large_diameter_mm: float = 2.0
    cluster_min_mcs: int = 5
    cluster_link_mm: float = 5.0
    regional_extent_mm: float = 20.0
    cluster_score_top_k: int = 5
    threshold: float = 0.5
    # MCs whose centroid lies within this distance (mm) of the breast outline (the skin line, or the image
    # edge where the breast meets it) are reported with `at_outline` and kept out of clusters: the skin is
    # about 2 mm thick and calcifications in it are dermal (benign), and the outline is where film edges,
    # skin folds and the bright film border make false clusters. Every image edge counts, the chest-wall side
    # included (a film scan's cut edge is bright there too). 0 turns the rule off.
    outline_margin_mm: float = 2.0


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def config_hash(*cfgs: Any) -> str:
    """Stable sha256 (first 16 hex digits) of one or more config dataclasses."""
    return hash_named_dicts([(type(c).__name__, config_to_dict(c)) for c in cfgs])


def hash_named_dicts(named: list[tuple[str, dict]]) -> str:
    """`config_hash` of (class name, field dict) pairs, for callers that edit the fields first."""
    blob = json.dumps([{name: fields} for name, fields in named], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_refine_overrides(text: str) -> dict[str, int | float]:
    """`"t0=0.85,euler_steps=8"` → RefineConfig field overrides (int fields as int, others float; empty
    text → {}). ValueError naming the bad part for a missing `=`, an unknown field or a non-number."""
    kinds = {f.name: f.type for f in dataclasses.fields(RefineConfig)}
    out: dict[str, int | float] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected field=value, got {part!r}")
        if key not in kinds:
            raise ValueError(f"unknown RefineConfig field {key!r}")
        try:
            out[key] = int(value) if kinds[key] in ("int", int) else float(value)
        except ValueError:
            raise ValueError(f"{key}: not a number: {value!r}") from None
    return out


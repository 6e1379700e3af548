"""Synthetic microcalcification training pairs and full-field injection (SPEC §2, seed maps §3).

Public API: `SynthConfig`; `make_pair(rng, cfg, patch_px, spacing_mm, background) -> SyntheticPair`;
`seed_map(centres_px, shape, rng, cfg)`; `SyntheticPairDataset`; backgrounds (`procedural_background`,
`RealNegativeSampler`, `train_split_backgrounds`); full-field injection (`inject_clusters`, `choose_sites`).
"""
from mcgenref_fast.synth.background import (RealNegativeSampler, procedural_background, psd_slope,
                                            train_split_backgrounds)
from mcgenref_fast.synth.config import SynthConfig
from mcgenref_fast.synth.dataset import SyntheticPairDataset, pair_rng
from mcgenref_fast.synth.formation import FormationParams
from mcgenref_fast.synth.fullfield import (FullFieldInjection, choose_sites, inject_clusters,
                                           input_image_with_mcs, input_to_canonical_points)
from mcgenref_fast.synth.mc import MC, Cluster, rasterise, sample_cluster
from mcgenref_fast.synth.pair import SyntheticPair, make_pair
from mcgenref_fast.synth.seeds import gaussian_dots, seed_map

__all__ = [
    "SynthConfig", "SyntheticPair", "make_pair", "seed_map", "gaussian_dots", "SyntheticPairDataset", "pair_rng",
    "RealNegativeSampler", "procedural_background", "psd_slope", "train_split_backgrounds", "FormationParams",
    "MC", "Cluster", "rasterise", "sample_cluster", "FullFieldInjection", "inject_clusters", "choose_sites",
    "input_image_with_mcs", "input_to_canonical_points",
]

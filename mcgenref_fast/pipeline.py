"""The full-field flow for one mammogram: read → canonical → tiles → segmentor → TT-GPR → findings → outputs.

`Engine` holds the models and the configuration; `Engine.analyse` works in canonical space and returns
plain data, `Engine.run_file` reads a file and writes every output of the shared layout
(`OUT/<key>/mask.png, prob.png, overlay.png, findings.json[, seg.dcm]`) in the input's grid.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch

from mcgenref_fast.baseline import TopHatConfig
from mcgenref_fast.config import (ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT, ENGINE_REFINE_MAX_ENLARGEMENT,
                                  NO_FILM_SEGMENTOR, REFINE_EVERY_INPUT, CanonicalConfig, FindingsConfig,
                                  RefineConfig, config_to_dict, engine_refine_config, hash_named_dicts)
from mcgenref_fast.devices import usable_device
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.net_exec import PRECISIONS, Precision, upload
from mcgenref_fast.tiling import make_grid

Method = Literal["gpr", "initializer", "tophat"]
SegmentorName = Literal["segmentor", "segmentor_film"]   # manifest names (`models.weights.FILM_SEGMENTOR`)
Implementation = Literal["fast", "reference"]


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides an Engine's output (its hash goes into findings.json provenance).

    method: 'gpr' (segmentor + TT-GPR), 'initializer' (segmentor only, `--no-refine`), 'tophat' (the
    classical baseline). implementation: the fast refine or the pure-PyTorch reference. precision: the
    networks' precision in the fast refine, 'fp32' (default; the only one on the CPU), or 'bf16' / 'fp16'
    on CUDA (`--precision`; SPEC §7's low-precision rule). edge_sigma_per_input_pitch: on an input scanned
    coarser than the canonical pitch (film at 0.2 mm, enlarged s = h_in/h times), TT-GPR's edge weights use
    σ_I/s, since enlargement divides the intensity step between neighbouring pixels by about s (opt-in,
    `--pitch-scaled-edge`; README, film: mixed, so off). refine: SPEC §4's TT-GPR settings except λ_prox and
    t0 (`config.engine_refine_config`, issue 11's operating point). refine_max_enlargement: 'gpr' refines an
    input only when it reaches the canonical pitch by at most this enlargement (input pitch / canonical pitch);
    a coarser one (film at 0.2 mm: 2.9×) keeps the segmentor's map, recorded as `method_applied` (inf:
    refine every input, `--refine-film`; README, film scans). film_segmentor_min_enlargement: an input
    enlarged more than this is segmented by the weights' film segmentor (`segmentor_film`, MCs learnt on the
    film's grid) when the engine has one, recorded as `segmentor_applied` (inf: the segmentor for every input,
    `--no-film-segmentor`; an Engine without a film segmentor sets it to inf, so its hash says what ran).
    """

    canonical: CanonicalConfig = field(default_factory=CanonicalConfig)
    refine: RefineConfig = field(default_factory=engine_refine_config)   # SPEC §4 but λ_prox (config.py)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    tophat: TopHatConfig = field(default_factory=TopHatConfig)
    method: Method = "gpr"
    implementation: Implementation = "fast"
    seed: int = 0
    overlay_max_side_px: int = 2048
    write_seg: bool = True
    precision: Precision = "fp32"
    edge_sigma_per_input_pitch: bool = False
    refine_max_enlargement: float = ENGINE_REFINE_MAX_ENLARGEMENT
    film_segmentor_min_enlargement: float = ENGINE_FILM_SEGMENTOR_MIN_ENLARGEMENT

    def __post_init__(self) -> None:
        if not self.refine_max_enlargement >= 1.0:   # NaN fails too
            raise ConfigError(f"refine_max_enlargement must be >= 1 (inf: refine every input), "
                              f"got {self.refine_max_enlargement}")
        if not self.film_segmentor_min_enlargement >= 1.0:
            raise ConfigError(f"film_segmentor_min_enlargement must be >= 1 (inf: no film segmentor), "
                              f"got {self.film_segmentor_min_enlargement}")

    def method_for(self, enlargement: float) -> Method:
        """The method that runs on an input enlarged by `enlargement` (input pitch / canonical pitch) to reach
        the canonical grid: `method`, except 'gpr' above `refine_max_enlargement`, which gets 'initializer'."""
        if self.method == "gpr" and enlargement > self.refine_max_enlargement:
            return "initializer"
        return self.method

    def segmentor_for(self, enlargement: float) -> SegmentorName:
        """The segmentor for an input enlarged by `enlargement`: 'segmentor_film' above
        `film_segmentor_min_enlargement`, else 'segmentor' (the Engine holds the film one only when its
        weights have it; without it this field is inf)."""
        return "segmentor_film" if enlargement > self.film_segmentor_min_enlargement else "segmentor"


def engine_config_hash(cfg: EngineConfig) -> str:
    """`config.config_hash(cfg)`, with the fields added since the first release left out where they hold the
    behaviour from before they existed: `precision` 'fp32', `edge_sigma_per_input_pitch` off,
    `refine_max_enlargement` inf (every input refined: `--refine-film`, sweeps) and
    `film_segmentor_min_enlargement` inf (no film segmentor). So such configurations keep their hashes, and
    findings.json provenance, screen journals and evaluation caches made before the fields stay valid."""
    fields = config_to_dict(cfg)
    if fields.get("precision") == "fp32":
        del fields["precision"]
    if fields.get("edge_sigma_per_input_pitch") is False:
        del fields["edge_sigma_per_input_pitch"]
    if fields.get("refine_max_enlargement") == REFINE_EVERY_INPUT:
        del fields["refine_max_enlargement"]
    if fields.get("film_segmentor_min_enlargement") == NO_FILM_SEGMENTOR:
        del fields["film_segmentor_min_enlargement"]
    return hash_named_dicts([(type(cfg).__name__, fields)])


def outline_mcs_mask(mask: np.ndarray, findings: Any) -> Optional[np.ndarray]:
    """The pixels of `mask` (canonical) that belong to MCs at the breast outline (`MC.at_outline`; an MC's id
    is its 8-connected label in `mask`); None when there are none."""
    from mcgenref_fast.findings import label_components

    ids = [m.id for m in findings.mcs if m.at_outline]
    if not ids:
        return None
    labels, _ = label_components(mask)
    return np.isin(labels, ids)


def _refuse_unused_film_folder(weights_dir: str | Path) -> None:
    """ConfigError for a `--weights` folder that holds only a film segmentor when the engine runs none
    (`--no-film-segmentor`): the user's only network would be ignored without a word."""
    from mcgenref_fast.models.weights import FILM_SEGMENTOR, read_manifest

    if set(read_manifest(weights_dir)["models"]) == {FILM_SEGMENTOR}:
        raise ConfigError(f"{weights_dir}: holds only a {FILM_SEGMENTOR}, which --no-film-segmentor turns off: "
                          "drop one of the two")


def _check_precision(cfg: EngineConfig, device: torch.device) -> None:
    """ConfigError for a precision the engine cannot run (unknown, off CUDA, or with the reference)."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.precision == "fp32" or cfg.method == "tophat":
        return
    if device.type != "cuda":
        raise ConfigError(f"--precision {cfg.precision} needs a CUDA device (--device cuda); on {device.type} "
                          "the networks run in fp32")
    if cfg.implementation == "reference":
        raise ConfigError(f"--precision {cfg.precision} applies to the fast TT-GPR only, not --reference")


@dataclass(frozen=True, eq=False)
class Analysis:
    """Canonical-space result of one image: probability map, mask, findings, timings (s), diagnostics."""

    canonical: Any
    prob: np.ndarray
    mask: np.ndarray
    findings: Any
    timings_s: dict[str, float]
    n_tiles: int
    diagnostics: list[Any]
    method_applied: str = "gpr"   # what ran: `EngineConfig.method_for` the input's pitch
    segmentor_applied: Optional[str] = None   # `EngineConfig.segmentor_for` the input's pitch; None: top-hat


@dataclass(frozen=True, eq=False)
class ImageResult:
    """What `run_file` wrote for one input."""

    input_path: str
    key: str
    out_dir: Path
    analysis: Analysis
    meta: Any

    @property
    def findings(self) -> Any:
        return self.analysis.findings


def refine_function(implementation: Implementation) -> Callable[..., Any]:
    """The TT-GPR implementation: the fast path (default) or the reference (`--reference`)."""
    if implementation == "reference":
        from mcgenref_fast.reference import refine
    else:
        from mcgenref_fast.refine import refine
    return refine


class Engine:
    """Models + configuration; runs the flow for one image at a time."""

    def __init__(self, cfg: EngineConfig = EngineConfig(), segmentor: torch.nn.Module | None = None,
                 generator: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                 weights_sha256: dict[str, str] | None = None, progress: bool = False,
                 weights_dir: str | Path | None = None, film_segmentor: torch.nn.Module | None = None) -> None:
        """Networks: `segmentor` and `generator` given in memory (both; `film_segmentor` too, optionally), or
        else loaded (sha256-checked) from `weights_dir` where its manifest holds them and from the shipped
        weights otherwise (the film segmentor: `models.weights.film_segmentor_source`). Without a film
        segmentor, or with `cfg.film_segmentor_min_enlargement` inf, every input gets `segmentor`."""
        # the top-hat baseline runs no network: any device name stays as given (it never moves a tensor there)
        self.device = torch.device(device) if cfg.method == "tophat" else usable_device(device)
        _check_precision(cfg, self.device)
        self.progress = progress
        self.weights_sha256 = weights_sha256
        wants_film = cfg.method != "tophat" and cfg.film_segmentor_min_enlargement < NO_FILM_SEGMENTOR
        if cfg.method != "tophat" and (segmentor is None or generator is None):
            from mcgenref_fast.models.weights import load_film_segmentor, load_models_over_default

            segmentor, generator, self.weights_sha256 = load_models_over_default(weights_dir, self.device)
            film_segmentor = load_film_segmentor(weights_dir, self.device) if wants_film else None
            if not wants_film and weights_dir is not None:
                _refuse_unused_film_folder(weights_dir)
        self.segmentor = None if segmentor is None else segmentor.to(self.device).eval()
        self.generator = None if generator is None else generator.to(self.device).eval()
        use_film = wants_film and film_segmentor is not None
        self.film_segmentor = film_segmentor.to(self.device).eval() if use_film else None  # type: ignore[union-attr]
        film_info = getattr(self.film_segmentor, "weights_info", None)
        if self.weights_sha256 is not None and isinstance(film_info, dict) and "sha256" in film_info:
            # the film segmentor's digest (from its manifest entry: loaded here, or given in memory)
            from mcgenref_fast.models.weights import FILM_SEGMENTOR

            self.weights_sha256 = {**self.weights_sha256, FILM_SEGMENTOR: str(film_info["sha256"])}
        if self.film_segmentor is None and cfg.film_segmentor_min_enlargement < NO_FILM_SEGMENTOR:
            cfg = replace(cfg, film_segmentor_min_enlargement=NO_FILM_SEGMENTOR)   # what this engine does
        self.cfg = cfg
        self._refine = refine_function(cfg.implementation)
        self.config_hash = engine_config_hash(cfg)

    # ------------------------------------------------------------------------------------ canonical
    def analyse(self, canonical: Any) -> Analysis:
        """Segment a `CanonicalImage`: probability map, mask (p ≥ threshold, in the breast) and findings."""
        from mcgenref_fast.findings import extract_findings_canonical

        timings: dict[str, float] = {}
        t = time.perf_counter()
        diagnostics: list[Any] = []
        n_tiles = 0
        enlargement = canonical.input_spacing_mm / canonical.spacing_mm
        method = self.cfg.method_for(enlargement)
        segmentor_applied: Optional[str] = None
        if method == "tophat":
            from mcgenref_fast.baseline import tophat_detect

            prob = tophat_detect(canonical.image, canonical.breast_mask, canonical.spacing_mm, self.cfg.tophat).prob
            threshold = 0.5  # the baseline's pseudo-probability is >= 0.5 exactly on its detections
        else:
            rcfg = self.cfg.refine
            if method == "initializer":
                rcfg = replace(rcfg, outer_iters=0)
            elif self.cfg.edge_sigma_per_input_pitch and canonical.input_spacing_mm > canonical.spacing_mm:
                rcfg = replace(rcfg, edge_sigma_i=rcfg.edge_sigma_i * canonical.spacing_mm / canonical.input_spacing_mm)
            # CPU → CUDA through pinned memory, non-blocking (a plain copy elsewhere)
            image = upload(torch.from_numpy(np.ascontiguousarray(canonical.image, np.float32)), self.device)
            breast = upload(torch.from_numpy(np.ascontiguousarray(canonical.breast_mask, bool)), self.device)
            extra = {} if self.cfg.precision == "fp32" else {"precision": self.cfg.precision}
            segmentor_applied = self.cfg.segmentor_for(enlargement)
            segmentor = self.film_segmentor if segmentor_applied == "segmentor_film" else self.segmentor
            result = self._refine(image, breast, segmentor, self.generator, rcfg, seed=self.cfg.seed,
                                  progress=self.progress, **extra)
            prob = result.probability().float().cpu().numpy()
            diagnostics = list(result.diagnostics)
            n_tiles = make_grid(canonical.image.shape, canonical.breast_mask, rcfg.tiles).n_tiles
            threshold = rcfg.threshold
        timings["segment_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mask = (prob >= threshold) & canonical.breast_mask
        findings = extract_findings_canonical(prob, mask, canonical, replace(self.cfg.findings, threshold=threshold))
        timings["findings_s"] = time.perf_counter() - t
        return Analysis(canonical, prob, mask, findings, timings, n_tiles, diagnostics, method_applied=method,
                        segmentor_applied=segmentor_applied)

    # ------------------------------------------------------------------------------------ files
    def run_file(self, path: str | Path, layout: Any, spacing_mm: float | None = None,
                 allow_for_processing: bool = False) -> ImageResult:
        """Read one file, analyse it and write its outputs under `layout` (an `OutputLayout`)."""
        from mcgenref_fast.canonical import to_canonical
        from mcgenref_fast.io import read_mammogram

        t = time.perf_counter()
        mammogram = read_mammogram(path, spacing_mm=spacing_mm, allow_for_processing=allow_for_processing)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        canonical = to_canonical(mammogram, self.cfg.canonical)
        t_canon = time.perf_counter() - t
        analysis = self.analyse(canonical)
        analysis.timings_s.update(read_s=t_read, canonical_s=t_canon)
        t = time.perf_counter()
        key = layout.key_for(path, mammogram.meta.sop_instance_uid)
        out_dir = self.write_outputs(path, key, layout, mammogram, analysis)
        analysis.timings_s["write_s"] = time.perf_counter() - t
        layout.record(path, key)
        return ImageResult(str(path), key, out_dir, analysis, mammogram.meta)

    def write_outputs(self, path: str | Path, key: str, layout: Any, mammogram: Any, analysis: Analysis) -> Path:
        """mask.png, prob.png, overlay.png, findings.json (+ seg.dcm for DICOM) in the input's grid."""
        from mcgenref_fast.findings_json import image_block, make_provenance, write_findings_json
        from mcgenref_fast.overlay import write_overlay
        from mcgenref_fast.png_outputs import write_mask_png, write_prob_png

        meta = mammogram.meta
        canonical = analysis.canonical
        paths = layout.paths_for(key)
        paths.directory.mkdir(parents=True, exist_ok=True)
        mask_in = canonical.mask_to_input(analysis.mask)
        prob_in = canonical.prob_to_input(analysis.prob)
        write_mask_png(paths.mask_png, mask_in, expected_shape=meta.shape)
        write_prob_png(paths.prob_png, prob_in, expected_shape=meta.shape)
        findings_dict = analysis.findings.to_dict()
        outline = outline_mcs_mask(analysis.mask, analysis.findings)
        voi = None
        if meta.voi_center is not None and meta.voi_width is not None:
            voi = (meta.voi_center, meta.voi_width, meta.voi_function)
        write_overlay(paths.overlay_png, mammogram.image, mask_in, meta.spacing_mm, clusters=findings_dict["clusters"],
                      voi=voi, max_side_px=self.cfg.overlay_max_side_px,
                      breast_mask_input_grid=canonical.mask_to_input(canonical.breast_mask),
                      outline_mcs_input_grid=None if outline is None else canonical.mask_to_input(outline))
        provenance = make_provenance(
            path, meta.spacing_mm, meta.spacing_source, meta.flips, self.weights_sha256, self.config_hash,
            method=self.cfg.method, method_applied=analysis.method_applied,
            segmentor_applied=analysis.segmentor_applied,
            implementation=self.cfg.implementation, seed=self.cfg.seed,
            canonical_flipped_lr=bool(canonical.flipped_lr), timings_s=dict(analysis.timings_s),
        )
        write_findings_json(paths.findings_json, findings_dict, provenance, image_block(meta.shape, meta.spacing_mm, meta))
        if meta.file_format == "dicom" and self.cfg.write_seg:
            from mcgenref_fast.dicom_seg import write_seg

            write_seg(paths.seg_dcm, path, prob_in, spacing_mm=meta.spacing_mm, spacing_source=meta.spacing_source)
        return paths.directory

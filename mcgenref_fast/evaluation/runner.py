"""Run methods over an evaluation dataset, with a resumable cache.

For each item and method: the canonical probability map comes from the cache (`OUT/cache/probs/`, keyed by
the image file's identity, the method, the hash of the Engine settings that decide the map
(`map_config_hash`: everything but the findings and output settings) and its weights' sha256) or from
`Engine.analyse` (then cached); the map is thresholded at the operating threshold (the method's own, or
`EvalSettings.threshold`), findings are extracted, and the image is scored against its truth. Finished
per-image records go to `OUT/cache/metrics.jsonl` (one JSON object a line, appended and fsync'ed), keyed by
the probability key, the threshold, the scoring settings and the findings settings: a re-run skips them
entirely; a new threshold or new findings settings (`--outline-margin`) re-score the cached maps without
running any network.

Scoring happens in the input's grid (where every output is written): the canonical mask goes back with
`CanonicalImage.mask_to_input` (every component kept), the probability with `prob_to_input` (max down), the
breast mask likewise; distances use the input's spacing. See docs/evaluation.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from mcgenref_fast.config import FindingsConfig
from mcgenref_fast.errors import McGenRefError
from mcgenref_fast.evaluation.datasets import EvalItem, Truth
from mcgenref_fast.metrics_cluster import CLUSTER_MIN_RADIUS_MM, match_clusters, predicted_clusters
from mcgenref_fast.metrics_mc import MC_TOLERANCE_MM, DetectionMatch, match_mcs, true_from_labels, true_from_mask

EVAL_VERSION: int = 2                 # bump when the per-image record changes meaning (2: input_spacing_mm)
TOPHAT_THRESHOLD: float = 0.5         # the baseline's pseudo-probability is >= 0.5 exactly on its detections
METHODS: tuple[str, ...] = ("gpr", "initializer", "tophat")


@dataclass(frozen=True)
class EvalSettings:
    """threshold: operating threshold on p for every method (None = each method's own: TT-GPR's
    `RefineConfig.threshold`, 0.5 for the top-hat); froc_threshold: FROC candidates at the MC level are the
    components of `p >= min(froc_threshold, threshold)`; tolerances per SPEC §8; prob_dtype of the cache."""

    threshold: Optional[float] = None
    froc_threshold: float = 0.25
    mc_tolerance_mm: float = MC_TOLERANCE_MM
    cluster_min_radius_mm: float = CLUSTER_MIN_RADIUS_MM
    prob_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.froc_threshold <= 1.0:
            raise ValueError(f"froc_threshold must be in (0, 1], got {self.froc_threshold}")
        if self.prob_dtype not in ("float32", "float16"):
            raise ValueError(f"prob_dtype must be float32 or float16, got {self.prob_dtype}")

    def scoring_dict(self) -> dict[str, Any]:
        """The settings that change a record (not the cache dtype)."""
        d = asdict(self)
        d.pop("prob_dtype")
        d.pop("threshold")
        return d


# --------------------------------------------------------------------------------------------------
# Engines and keys
# --------------------------------------------------------------------------------------------------
def make_engine(method: str, device: str = "cpu", seed: int = 0, reference: bool = False,
                findings: Optional[FindingsConfig] = None, weights_dir: Optional[Path] = None,
                pitch_scaled_edge: bool = False, refine_film: bool = False, film_segmentor: bool = True) -> Any:
    """The Engine for a method name ('gpr', 'initializer', 'tophat'); gpr/initializer load the shipped weights,
    or those of `weights_dir` (`Engine`); `pitch_scaled_edge` turns the film edge rule on
    (`EngineConfig.edge_sigma_per_input_pitch`), `refine_film` lets 'gpr' refine coarse inputs too
    (`EngineConfig.refine_max_enlargement` = inf; the other methods keep the default, so their cache keys stay);
    `film_segmentor=False` segments film scans with the segmentor too (`--no-film-segmentor`)."""
    from mcgenref_fast.config import NO_FILM_SEGMENTOR, REFINE_EVERY_INPUT
    from mcgenref_fast.pipeline import Engine, EngineConfig

    if method not in METHODS:
        raise McGenRefError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    cfg = replace(EngineConfig(), method=method, seed=seed, implementation="reference" if reference else "fast",
                  findings=findings if findings is not None else FindingsConfig(),
                  edge_sigma_per_input_pitch=pitch_scaled_edge,
                  **({} if film_segmentor else {"film_segmentor_min_enlargement": NO_FILM_SEGMENTOR}),
                  **({"refine_max_enlargement": REFINE_EVERY_INPUT} if refine_film and method == "gpr" else {}))
    return Engine(cfg, device=device, weights_dir=weights_dir)


def operating_threshold(engine: Any) -> float:
    """The threshold at which the engine's own mask is `p >= threshold`."""
    return TOPHAT_THRESHOLD if engine.cfg.method == "tophat" else float(engine.cfg.refine.threshold)


def weights_digest(engine: Any) -> Optional[dict[str, str]]:
    """The engine's weights sha256 (from the manifest); for models given in memory, a digest of their
    state dicts — the film segmentor's too, when the engine runs one that `weights_sha256` does not name
    (two engines differing only in it must not share cached maps); None for the top-hat."""
    out = dict(engine.weights_sha256) if getattr(engine, "weights_sha256", None) else {}
    networks = (("segmentor", "segmentor"), ("generator", "generator"), ("segmentor_film", "film_segmentor"))
    for name, attr in networks[2:] if out else networks:
        model = getattr(engine, attr, None)
        if model is None or name in out:
            continue
        h = hashlib.sha256(type(model).__qualname__.encode())
        for key, tensor in sorted(model.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        out[name] = h.hexdigest()
    return out or None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def map_config_hash(engine: Any) -> str:
    """Hash of the engine settings that decide its probability map — everything but the findings and output
    settings, which only change scoring (so re-scoring with new findings settings reuses the cached maps)."""
    from mcgenref_fast.pipeline import engine_config_hash

    cfg = engine.cfg
    return engine_config_hash(replace(cfg, findings=FindingsConfig(), overlay_max_side_px=0, write_seg=False))


def prob_cache_key(item: EvalItem, engine: Any, engine_digest: Optional[dict] = None,
                   map_hash: Optional[str] = None) -> str:
    """Key of an item's canonical probability map under an engine: (image file, method, the map's config hash
    (`map_config_hash`, or `map_hash` when the caller has it), weights)."""
    breast = None
    if item.breast_mask_path is not None:
        p = Path(item.breast_mask_path)
        breast = {"path": str(p.resolve()), "size": p.stat().st_size if p.exists() else None}
    return _digest({
        "image": item.file_identity(), "id": item.id, "kind": item.kind, "spacing_mm": item.spacing_mm,
        "breast": breast, "method": engine.cfg.method,
        "config_hash": map_hash if map_hash is not None else map_config_hash(engine),
        "weights": engine_digest if engine_digest is not None else weights_digest(engine),
    })


def record_key(prob_key: str, threshold: float, settings: EvalSettings, findings_cfg: FindingsConfig) -> str:
    """Key of one scored record: the map, the threshold, the scoring settings and the findings settings."""
    return _digest({"prob": prob_key, "threshold": float(threshold), "scoring": settings.scoring_dict(),
                    "findings": asdict(replace(findings_cfg, threshold=threshold)),
                    "version": EVAL_VERSION})


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CachedProb:
    prob: np.ndarray
    meta: dict[str, Any]


class ProbCache:
    """Canonical probability maps as `ROOT/<key[:2]>/<key>.npz` (`prob`, `meta` JSON), written atomically."""

    def __init__(self, root: str | Path, dtype: str = "float32") -> None:
        self.root = Path(root)
        self.dtype = dtype

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> Optional[CachedProb]:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return CachedProb(np.asarray(z["prob"], np.float32), json.loads(str(z["meta"])))
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed

    def put(self, key: str, prob: np.ndarray, meta: dict[str, Any]) -> Path:
        from mcgenref_fast.atomic import write_with

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = np.asarray(prob, np.float32)
        if self.dtype == "float16":
            # round toward zero so that p16 >= t <=> p32 >= t for every float16 threshold t
            arr16 = arr.astype(np.float16)
            over = arr16.astype(np.float32) > arr
            arr16[over] = np.nextafter(arr16[over], np.float16(0))
            arr = arr16
        buf = io.BytesIO()
        np.savez_compressed(buf, prob=arr, meta=np.asarray(json.dumps(meta)))
        return write_with(p, lambda fh: fh.write(buf.getvalue()))


class MetricsLog:
    """Finished per-image records, one JSON object a line (`record_key` identifies one); torn last lines
    from an interrupted run are skipped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return out
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "record_key" in rec:
                    out[rec["record_key"]] = rec
        return out

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------------
# Scoring one image
# --------------------------------------------------------------------------------------------------
def encode_match(m: DetectionMatch) -> dict[str, list]:
    """JSON form of a DetectionMatch (-inf best scores as null)."""
    return {"true_best_score": [float(s) if np.isfinite(s) else None for s in m.true_best_score],
            "pred_scores": [float(s) for s in m.pred_scores], "pred_is_tp": [bool(b) for b in m.pred_is_tp]}


def decode_match(d: dict[str, list]) -> DetectionMatch:
    best = np.asarray([-np.inf if s is None else s for s in d["true_best_score"]], np.float64)
    return DetectionMatch(best, np.asarray(d["pred_scores"], np.float64), np.asarray(d["pred_is_tp"], bool))


def _counts(m: DetectionMatch) -> dict[str, int]:
    return {"n_true": m.n_true, "n_found": m.n_found, "n_pred": m.n_pred, "n_fp": m.n_fp}


def cluster_match(findings: Any, truth: Truth, spacing_mm: float, min_radius_mm: float) -> DetectionMatch:
    """Clusters matched per SPEC §8; predicted clusters matching only an ignored site are dropped."""
    pc, ps = predicted_clusters(findings, "input")
    m = match_clusters(pc, ps, truth.cluster_centres_rc_px, truth.cluster_radii_px, spacing_mm, min_radius_mm)
    if truth.ignore_centres_rc_px is not None and len(truth.ignore_centres_rc_px) and m.n_pred:
        ign = match_clusters(pc, ps, truth.ignore_centres_rc_px, truth.ignore_radii_px, spacing_mm, min_radius_mm)
        keep = m.pred_is_tp | ~ign.pred_is_tp
        m = DetectionMatch(m.true_best_score, m.pred_scores[keep], m.pred_is_tp[keep])
    return m


def score_image(canonical: Any, prob: np.ndarray, truth: Truth, threshold: float, settings: EvalSettings,
                findings_cfg: Any) -> dict[str, Any]:
    """Per-image record: pixel confusion counts, MC matches (operating point and FROC candidates), cluster
    matches, findings summary. Levels without truth are None."""
    from mcgenref_fast.findings import extract_findings_canonical
    from mcgenref_fast.metrics import confusion

    prob = np.asarray(prob, np.float32)
    breast = np.asarray(canonical.breast_mask, bool)
    mask = (prob >= threshold) & breast
    findings = extract_findings_canonical(prob, mask, canonical, replace(findings_cfg, threshold=threshold))
    in_shape = tuple(int(v) for v in canonical.input_shape)
    if tuple(truth.shape) != in_shape:
        raise McGenRefError(f"truth shape {truth.shape} differs from the image's {in_shape}")
    spacing_in = float(canonical.input_spacing_mm)
    rec: dict[str, Any] = {"pixel": None, "mc": None, "mc_froc": None, "cluster": None}
    pred_in = prob_in = None
    if truth.has_mcs or truth.has_pixels:
        pred_in = np.asarray(canonical.mask_to_input(mask), bool)
    if truth.has_pixels:
        breast_in = np.asarray(canonical.mask_to_input(breast), bool)
        c = confusion(pred_in, truth.mask, breast_in)
        rec["pixel"] = {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}
    if truth.has_mcs:
        true = true_from_labels(truth.mc_labels) if truth.mc_labels is not None else true_from_mask(truth.mask)
        prob_in = np.asarray(canonical.prob_to_input(prob), np.float32)
        m = match_mcs(pred_in, true, spacing_in, prob_in, settings.mc_tolerance_mm)
        rec["mc"] = _counts(m)
        ft = min(settings.froc_threshold, threshold)
        cand_in = np.asarray(canonical.mask_to_input((prob >= ft) & breast), bool)
        rec["mc_froc"] = encode_match(match_mcs(cand_in, true, spacing_in, prob_in, settings.mc_tolerance_mm))
        rec["mc_froc"]["candidate_threshold"] = ft
    if truth.has_clusters:
        rec["cluster"] = encode_match(cluster_match(findings, truth, spacing_in, settings.cluster_min_radius_mm))
    rec["findings"] = {
        "n_mcs": len(findings.mcs), "n_large": len(findings.large), "n_clusters": len(findings.clusters),
        "flagged": bool(findings.flagged),
        "max_cluster_score": max((c.score for c in findings.clusters), default=None),
    }
    rec["normal"] = truth.normal
    rec["input_spacing_mm"] = spacing_in
    rec["n_true_clusters"] = truth.n_clusters if truth.has_clusters else None
    return rec


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclass
class MethodRun:
    """Records of one method over the dataset, plus what the cache saved."""

    name: str
    threshold: float
    engine_method: str
    config_hash: str
    weights: Optional[dict[str, str]]
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    computed: int = 0        # probability maps computed now (networks / baseline run)
    prob_cached: int = 0     # maps read from the cache and re-scored
    metrics_cached: int = 0  # records reused as they were


@dataclass
class EvalRun:
    out_dir: Path
    settings: EvalSettings
    methods: dict[str, MethodRun]
    n_items: int
    seconds: float


def run_eval(items: Sequence[EvalItem], engines: Mapping[str, Any], out_dir: str | Path,
             settings: EvalSettings = EvalSettings(), log: Optional[Callable[[str], None]] = None) -> EvalRun:
    """Score every item under every engine (name → Engine), reusing OUT/cache; returns the records."""
    from mcgenref_fast.config import config_hash

    out_dir = Path(out_dir)
    cache = ProbCache(out_dir / "cache" / "probs", settings.prob_dtype)
    mlog = MetricsLog(out_dir / "cache" / "metrics.jsonl")
    done = mlog.load()
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    digests = {name: weights_digest(e) for name, e in engines.items()}
    map_hashes = {name: map_config_hash(e) for name, e in engines.items()}
    runs = {name: MethodRun(name, settings.threshold if settings.threshold is not None else operating_threshold(e),
                            e.cfg.method, e.config_hash, digests[name])
            for name, e in engines.items()}
    t_start = time.perf_counter()
    for i, item in enumerate(items):
        canonicals: dict[str, Any] = {}
        truth: Optional[Truth] = None
        for name, engine in engines.items():
            run = runs[name]
            t_item = time.perf_counter()
            try:
                pkey = prob_cache_key(item, engine, digests[name], map_hashes[name])
                rkey = record_key(pkey, run.threshold, settings, engine.cfg.findings)
                if rkey in done:
                    run.records.append(done[rkey])
                    run.metrics_cached += 1
                    continue
                ckey = config_hash(engine.cfg.canonical)
                if ckey not in canonicals:
                    canonicals[ckey] = item.load_canonical(engine.cfg.canonical)
                can = canonicals[ckey]
                entry = cache.get(pkey)
                if entry is not None and entry.prob.shape == tuple(can.image.shape):
                    prob, seconds = entry.prob, entry.meta.get("seconds")
                    run.prob_cached += 1
                    how = "cached map"
                else:
                    t = time.perf_counter()
                    analysis = engine.analyse(can)
                    seconds = time.perf_counter() - t
                    prob = np.where(np.asarray(can.breast_mask, bool), np.asarray(analysis.prob, np.float32), 0.0)
                    cache.put(pkey, prob, {"item": item.id, "method": engine.cfg.method, "seconds": seconds,
                                           "map_config_hash": map_hashes[name], "shape": list(prob.shape)})
                    prob = cache.get(pkey).prob if settings.prob_dtype == "float16" else prob.astype(np.float32)
                    run.computed += 1
                    how = f"analysed in {seconds:.1f} s"
                if truth is None:
                    truth = item.load_truth(tuple(int(v) for v in can.input_shape))
                rec = score_image(can, prob, truth, run.threshold, settings, engine.cfg.findings)
                rec.update({"record_key": rkey, "prob_key": pkey, "item": item.id, "path": str(item.path),
                            "split": item.split, "method": name, "threshold": run.threshold,
                            "seconds": seconds, "version": EVAL_VERSION})
                mlog.append(rec)
                done[rkey] = rec
                run.records.append(rec)
                say(f"[{i + 1}/{len(items)}] {item.id} {name}: {how}, scored in "
                    f"{time.perf_counter() - t_item:.1f} s")
            except (McGenRefError, OSError, ValueError) as exc:
                run.failures.append({"item": item.id, "error": f"{type(exc).__name__}: {exc}"})
                say(f"[{i + 1}/{len(items)}] {item.id} {name}: FAILED: {exc}")
    return EvalRun(out_dir, settings, runs, len(items), time.perf_counter() - t_start)

"""`mcgenref eval`: results files, plausible numbers, cache reuse, re-thresholding, split restriction."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mcgenref_fast.cli import main
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.evaluation import EvalSettings, ProbCache, build_results, load_dataset, run_eval, write_results
from mcgenref_fast.pipeline import Engine, EngineConfig
from test_datasets import make_mias_layout
from tiny_models import make_tiny_generator, make_tiny_segmentor


class CountingEngine(Engine):
    """A real Engine whose `analyse` calls are counted."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def analyse(self, canonical):  # type: ignore[override]
        self.calls += 1
        return super().analyse(canonical)


def tophat_engine() -> CountingEngine:
    return CountingEngine(EngineConfig(method="tophat"))


def make_synthetic_set(folder: Path, n: int = 3, size: int = 96, seed: int = 0) -> Path:
    """Smooth backgrounds with a cluster of 6 bright blurred discs (radius 2 px, contrast 0.15..0.55) each;
    image 0 has none."""
    from scipy import ndimage as ndi

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        image = 0.3 + 0.1 * yy / size + rng.normal(0, 0.01, (size, size))
        mask = np.zeros((size, size), bool)
        signal = np.zeros((size, size))
        if i > 0:
            for k in range(6):
                cy, cx = 30 + 8 * (k % 3) + 3 * i, 30 + 10 * (k // 3) + 2 * i
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 4
                mask |= disc
                signal[disc] += 0.15 + 0.08 * k
        image += ndi.gaussian_filter(signal, 0.7)
        buf = io.BytesIO()
        np.savez_compressed(buf, image=image.astype(np.float32), mask=mask.astype(np.uint8),
                            spacing_mm=np.float64(0.07))
        (folder / f"pair_{i:06d}.npz").write_bytes(buf.getvalue())
    return folder


def test_eval_tophat_writes_results_with_plausible_numbers(tmp_path: Path) -> None:
    data = make_synthetic_set(tmp_path / "syn")
    items = load_dataset("synthetic", data)
    engine = tophat_engine()
    run = run_eval(items, {"tophat": engine}, tmp_path / "out", log=lambda s: None)
    assert engine.calls == 3
    results = build_results(run, {"kind": "synthetic", "path": str(data)})
    jpath, mpath = write_results(tmp_path / "out", results)
    doc = json.loads(jpath.read_text())
    m = doc["methods"]["tophat"]
    assert set(m) >= {"pixel", "mc", "cluster", "image", "threshold", "cache", "per_image", "seconds_per_image"}
    assert m["cluster"] is None  # synthetic pairs carry no cluster truth
    assert m["threshold"] == 0.5 and m["n_images"] == 3 and m["n_failed"] == 0
    pooled = m["pixel"]["pooled"]
    assert set(pooled) == {"dice", "iou", "precision", "recall", "fnr", "specificity", "balanced_accuracy", "g_mean"}
    assert pooled["dice"] > 0.5 and pooled["specificity"] > 0.99 and pooled["recall"] > 0.4
    assert pooled["fnr"] == pytest.approx(1 - pooled["recall"])
    assert m["pixel"]["per_image"]["dice"]["n"] == 3 and m["pixel"]["per_image"]["recall"]["n"] == 2
    assert m["mc"]["n_true"] == 12 and m["mc"]["sensitivity"] > 0.8 and m["mc"]["fps_per_image"] < 2
    assert 0 < m["mc"]["froc"]["cpm"] <= 1
    assert [r["item"] for r in m["per_image"]] == ["pair_000000", "pair_000001", "pair_000002"]
    md = mpath.read_text()
    assert "## Pixel level" in md and "## MC level" in md and "| tophat | 0.50 |" in md
    assert "## Cluster level" not in md


def test_second_run_reuses_the_cache_and_threshold_rescores_without_recomputing(tmp_path: Path) -> None:
    data = make_synthetic_set(tmp_path / "syn")
    items = load_dataset("synthetic", data)
    out = tmp_path / "out"
    first = tophat_engine()
    r1 = run_eval(items, {"tophat": first}, out, log=lambda s: None)
    assert first.calls == 3 and r1.methods["tophat"].computed == 3
    second = tophat_engine()
    r2 = run_eval(items, {"tophat": second}, out, log=lambda s: None)
    assert second.calls == 0 and r2.methods["tophat"].metrics_cached == 3
    assert [r["record_key"] for r in r2.methods["tophat"].records] == [r["record_key"] for r in r1.methods["tophat"].records]
    third = tophat_engine()
    r3 = run_eval(items, {"tophat": third}, out, EvalSettings(threshold=0.9), log=lambda s: None)
    assert third.calls == 0 and r3.methods["tophat"].prob_cached == 3 and r3.methods["tophat"].computed == 0
    strict = [r["pixel"]["tp"] + r["pixel"]["fp"] for r in r3.methods["tophat"].records]
    loose = [r["pixel"]["tp"] + r["pixel"]["fp"] for r in r1.methods["tophat"].records]
    assert all(s <= l for s, l in zip(strict, loose)) and sum(strict) < sum(loose)
    assert all(r["threshold"] == 0.9 for r in r3.methods["tophat"].records)
    # re-thresholding the cached map equals thresholding a fresh one
    fresh = tophat_engine().analyse(items[1].load_canonical())
    cached = ProbCache(out / "cache" / "probs").get(r1.methods["tophat"].records[1]["prob_key"])
    np.testing.assert_array_equal(cached.prob, fresh.prob)
    # both thresholds' records are kept: a re-run at 0.5 is still fully cached
    fourth = tophat_engine()
    r4 = run_eval(items, {"tophat": fourth}, out, log=lambda s: None)
    assert fourth.calls == 0 and r4.methods["tophat"].metrics_cached == 3


def test_cache_resumes_after_a_torn_record_and_notices_changed_files(tmp_path: Path) -> None:
    data = make_synthetic_set(tmp_path / "syn")
    out = tmp_path / "out"
    run_eval(load_dataset("synthetic", data), {"tophat": tophat_engine()}, out, log=lambda s: None)
    log = out / "cache" / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # interrupted mid-write
    engine = tophat_engine()
    r = run_eval(load_dataset("synthetic", data), {"tophat": engine}, out, log=lambda s: None)
    assert engine.calls == 0 and r.methods["tophat"].metrics_cached == 2 and r.methods["tophat"].prob_cached == 1
    make_synthetic_set(data, n=1, seed=5)  # pair_000000 rewritten: its map must be recomputed
    engine = tophat_engine()
    run_eval(load_dataset("synthetic", data), {"tophat": engine}, out, log=lambda s: None)
    assert engine.calls == 1


def test_methods_are_keyed_by_config_and_weights(tmp_path: Path) -> None:
    data = make_synthetic_set(tmp_path / "syn", n=2, size=64)
    items = load_dataset("synthetic", data)
    refine = RefineConfig(tiles=TileConfig(tile_px=64, overlap_px=16), outer_iters=1, inner_steps=2, euler_steps=2)

    def tiny(method: str, seg_seed: int = 0) -> CountingEngine:
        return CountingEngine(EngineConfig(method=method, refine=refine), segmentor=make_tiny_segmentor(seg_seed),
                              generator=make_tiny_generator(1))

    engines = {"gpr": tiny("gpr"), "initializer": tiny("initializer"), "tophat": tophat_engine()}
    run = run_eval(items, engines, tmp_path / "out", log=lambda s: None)
    assert all(e.calls == 2 for e in engines.values())
    keys = {name: [r["prob_key"] for r in mr.records] for name, mr in run.methods.items()}
    assert len({k for ks in keys.values() for k in ks}) == 6
    results = build_results(run, {"kind": "synthetic", "path": str(data)})
    assert list(results["methods"]) == ["gpr", "initializer", "tophat"]
    assert results["methods"]["gpr"]["weights_sha256"]["segmentor"] != results["methods"]["gpr"]["weights_sha256"]["generator"]
    md = write_results(tmp_path / "out", results)[1].read_text()
    assert all(f"| {n} |" in md for n in ("gpr", "initializer", "tophat"))
    other = {"gpr": tiny("gpr", seg_seed=7)}  # other weights: recomputed, not served from the cache
    run_eval(items, other, tmp_path / "out", log=lambda s: None)
    assert other["gpr"].calls == 2
    same = {"gpr": tiny("gpr")}
    run_eval(items, same, tmp_path / "out", log=lambda s: None)
    assert same["gpr"].calls == 0


def test_float16_cache_thresholds_like_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((64, 64)).astype(np.float32)
    prob[0, :4] = [np.nextafter(np.float32(0.5), np.float32(0)), 0.5, 0.25, np.nextafter(np.float32(0.25), np.float32(0))]
    cache = ProbCache(tmp_path, "float16")
    cache.put("ab" * 32, prob, {"seconds": 1.0})
    got = cache.get("ab" * 32)
    for t in (0.5, 0.25, 0.125, 0.75):
        np.testing.assert_array_equal(got.prob >= t, prob >= t)
    assert got.meta == {"seconds": 1.0}


def test_cli_eval_synthetic_and_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_set(tmp_path / "syn")
    out = tmp_path / "out"
    assert main(["eval", "--method", "tophat", "--dataset", "synthetic", str(data), "--out", str(out),
                 "--limit", "2", "--threads", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["n_items"] == 2 and doc["dataset"]["kind"] == "synthetic"
    assert doc["methods"]["tophat"]["cache"] == {"computed": 2, "prob_cached": 0, "metrics_cached": 0}
    assert main(["eval", "--method", "tophat", "--dataset", "synthetic", str(data), "--out", str(out),
                 "--threshold", "0.8"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["methods"]["tophat"]["threshold"] == 0.8
    assert doc["methods"]["tophat"]["cache"] == {"computed": 1, "prob_cached": 2, "metrics_cached": 0}
    assert "| tophat | 0.80 |" in (out / "results.md").read_text()
    assert main(["eval", "--method", "tophat", "--dataset", "synthetic", str(data), "--out", str(out),
                 "--threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_cli_eval_mias_restricts_to_dev_and_scores_clusters(tmp_path: Path) -> None:
    mias = make_mias_layout(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "--method", "tophat", "--dataset", "mias", str(mias), "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["dataset"]["items"] == ["mdb001", "mdb003"] and doc["dataset"]["split"] == "dev"
    assert doc["dataset"]["splits_csv"].endswith("splits.csv")
    m = doc["methods"]["tophat"]
    assert m["pixel"] is None and m["mc"] is None
    c = m["cluster"]
    assert c["n_true"] == 2 and c["n_images"] == 2 and c["n_normal_images"] == 1
    assert c["fp_clusters_per_normal_image"] is not None and "froc" in c
    assert m["image"]["n_normal"] == 1 and m["image"]["n_abnormal"] == 1
    assert "## Cluster level" in (out / "results.md").read_text()
    assert main(["eval", "--method", "tophat", "--dataset", "mias", str(mias), "--out", str(tmp_path / "all"),
                 "--split", "all"]) == 0
    assert json.loads((tmp_path / "all" / "results.json").read_text())["n_items"] == 4


def test_clusters_matching_an_ignored_site_are_not_false_positives() -> None:
    from mcgenref_fast.evaluation.datasets import Truth
    from mcgenref_fast.evaluation.runner import cluster_match

    class C:
        def __init__(self, r: float, c: float, s: float) -> None:
            self.centroid_input_px, self.score = (r, c), s

    class F:
        clusters = (C(10, 10, 0.9), C(100, 100, 0.8), C(300, 300, 0.7))

    truth = Truth((400, 400), cluster_centres_rc_px=np.array([[12.0, 10.0]]), cluster_radii_px=np.array([5.0]),
                  ignore_centres_rc_px=np.array([[100.0, 104.0]]), ignore_radii_px=np.array([3.0]))
    m = cluster_match(F(), truth, 0.1, 5.0)
    assert m.n_true == 1 and m.n_found == 1 and m.n_pred == 2 and m.n_fp == 1


def test_new_findings_settings_rescore_cached_maps_without_the_networks(tmp_path: Path) -> None:
    """The map cache key leaves the findings settings out; the record key keeps them."""
    from dataclasses import replace

    from mcgenref_fast.config import FindingsConfig

    data = make_synthetic_set(tmp_path / "syn")
    items = load_dataset("synthetic", data)
    out = tmp_path / "out"
    r1 = run_eval(items, {"tophat": tophat_engine()}, out, log=lambda s: None)
    other = CountingEngine(replace(EngineConfig(method="tophat"), findings=FindingsConfig(outline_margin_mm=0.0)))
    r2 = run_eval(items, {"tophat": other}, out, log=lambda s: None)
    assert other.calls == 0 and r2.methods["tophat"].prob_cached == 3 and r2.methods["tophat"].metrics_cached == 0
    k1 = [r["record_key"] for r in r1.methods["tophat"].records]
    k2 = [r["record_key"] for r in r2.methods["tophat"].records]
    assert [r["prob_key"] for r in r1.methods["tophat"].records] == [r["prob_key"] for r in r2.methods["tophat"].records]
    assert not set(k1) & set(k2)


def test_eval_refuses_a_negative_outline_margin(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_synthetic_set(tmp_path / "syn", n=1)
    code = main(["eval", "--method", "tophat", "--dataset", "synthetic", str(data), "--out", str(tmp_path / "o"),
                 "--outline-margin", "-1"])
    assert code != 0
    assert "--outline-margin must be a finite distance >= 0 mm" in capsys.readouterr().err


def test_pixel_metrics_are_split_by_input_pitch_when_pitches_differ() -> None:
    from mcgenref_fast.evaluation.report import pixels_by_pitch

    def rec(tp: int, fp: int, fn: int, pitch) -> dict:
        return {"pixel": {"tp": tp, "fp": fp, "fn": fn, "tn": 1000}, "input_spacing_mm": pitch}

    film, ffdm = [rec(2, 2, 0, 0.2), rec(2, 0, 2, 0.2)], [rec(5, 0, 5, 0.07)]
    groups = pixels_by_pitch(film + ffdm)
    assert list(groups) == ["0.07", "0.2"] and groups["0.2"]["n_images"] == 2
    assert groups["0.2"]["pooled"]["precision"] == pytest.approx(4 / 6)
    assert groups["0.2"]["pooled"]["recall"] == pytest.approx(4 / 6)
    assert groups["0.07"]["pooled"]["recall"] == pytest.approx(0.5)
    assert pixels_by_pitch(film) is None  # one pitch: the pooled table says it all
    assert pixels_by_pitch([rec(1, 0, 0, None)] + ffdm) is None  # records from before the field


def test_results_markdown_shows_the_pitch_table(tmp_path: Path) -> None:
    from mcgenref_fast.evaluation.report import results_markdown

    data = make_synthetic_set(tmp_path / "syn")
    run = run_eval(load_dataset("synthetic", data), {"tophat": tophat_engine()}, tmp_path / "out", log=lambda s: None)
    assert all(r["input_spacing_mm"] == pytest.approx(0.07) for r in run.methods["tophat"].records)
    run.methods["tophat"].records[0]["input_spacing_mm"] = 0.2  # as if one image were a film scan
    md = results_markdown(build_results(run, {"kind": "synthetic", "path": str(data)}))
    assert "Pooled by the input's pixel pitch" in md and "| tophat | 0.2 | 1 |" in md and "| tophat | 0.07 | 2 |" in md

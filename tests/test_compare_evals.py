"""`mcgenref_fast.evaluation.compare` and scripts/compare_evals.py: rows read back from real results.json files,
issue 11's bar (TT-GPR vs the initializer on the same images), and clear errors for what is not a result."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from mcgenref_fast.cli import main as cli_main
from mcgenref_fast.errors import EvaluationError
from mcgenref_fast.evaluation.compare import (
    DICE_MARGIN,
    EvalRow,
    baseline_for,
    load_rows,
    recall_bar,
    rows_markdown,
)
from test_eval import make_synthetic_set

_SPEC = importlib.util.spec_from_file_location(
    "compare_evals", Path(__file__).resolve().parents[1] / "scripts" / "compare_evals.py")
compare_script = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_script)


def _row(method: str, dice: float, recall: float, dataset: str = "d", n: int = 10, threshold: float = 0.5) -> EvalRow:
    return EvalRow(run="r", method=method, kind="semireal", dataset=dataset, n_images=n, threshold=threshold,
                   dice=dice, precision=0.5, recall=recall, fnr=1 - recall, g_mean=0.7, mc_sensitivity=0.5,
                   fp_mcs_per_image=1.0, clusters_found=1, clusters_true=2, fp_clusters_per_normal=0.5)


@pytest.fixture(scope="module")
def eval_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `mcgenref eval` run (shipped networks, two tiny synthetic pairs): initializer, TT-GPR, top-hat."""
    tmp = tmp_path_factory.mktemp("cmp")
    data = make_synthetic_set(tmp / "syn")
    out = tmp / "out"
    assert cli_main(["eval", "--method", "initializer", "--method", "gpr", "--method", "tophat", "--dataset",
                     "synthetic", str(data), "--out", str(out), "--limit", "2", "--threads", "1"]) == 0
    return out


def test_rows_carry_the_results_json_figures(eval_out: Path) -> None:
    rows = load_rows([eval_out])
    doc = json.loads((eval_out / "results.json").read_text())
    assert [r.method for r in rows] == list(doc["methods"])
    for r in rows:
        m = doc["methods"][r.method]
        pooled = m["pixel"]["pooled"]
        assert (r.dice, r.precision, r.recall, r.fnr, r.g_mean) == (
            pooled["dice"], pooled["precision"], pooled["recall"], pooled["fnr"], pooled["g_mean"])
        assert r.mc_sensitivity == m["mc"]["sensitivity"] and r.fp_mcs_per_image == m["mc"]["fps_per_image"]
        assert r.clusters_true is None  # synthetic pairs carry no cluster truth
        assert r.kind == "synthetic" and r.n_images == 2 and r.run == str(eval_out) and r.threshold == 0.5
    # the same file named directly gives the same rows
    assert load_rows([eval_out / "results.json"]) == rows


def test_markdown_holds_gpr_rows_to_the_bar_against_the_initializer(eval_out: Path) -> None:
    rows = load_rows([eval_out])
    by = {r.method: r for r in rows}
    verdict = recall_bar(by["gpr"], by["initializer"])
    assert verdict is not None
    assert verdict.recall_above == (by["gpr"].recall > by["initializer"].recall)
    assert verdict.dice_within == (by["gpr"].dice >= by["initializer"].dice - DICE_MARGIN)
    lines = {line.split(" | ")[1]: line for line in rows_markdown(rows).splitlines()[2:]}
    assert lines["gpr"].endswith(verdict.text() + " |")
    assert lines["initializer"].endswith("| – |") and lines["tophat"].endswith("| – |")  # the bar is TT-GPR's


def test_bar_is_strict_on_recall_and_fnr_and_inclusive_on_the_dice_margin() -> None:
    base = _row("initializer", dice=0.5, recall=0.5)
    assert recall_bar(_row("gpr", dice=0.48, recall=0.51), base).passed          # Dice exactly 0.02 below
    assert not recall_bar(_row("gpr", dice=0.47, recall=0.51), base).dice_within
    same = recall_bar(_row("gpr", dice=0.6, recall=0.5), base)
    assert not same.recall_above and not same.fnr_below and not same.passed     # a tie is not "beats"
    assert recall_bar(replace(_row("gpr", 0.5, 0.6), recall=None), base) is None
    # recall and FNR are judged each on its own (here they disagree, as they cannot in real results)
    mixed = recall_bar(replace(_row("gpr", dice=0.5, recall=0.6), fnr=0.55), base)
    assert mixed.recall_above and not mixed.fnr_below and not mixed.passed


def test_baseline_must_have_scored_the_same_images_at_the_same_threshold() -> None:
    base = _row("initializer", 0.5, 0.5, dataset="a", n=10)
    base_03 = _row("initializer", 0.45, 0.58, dataset="./a", n=10, threshold=0.3)
    other_set = _row("gpr", 0.5, 0.6, dataset="b", n=10)
    fewer = _row("gpr", 0.5, 0.6, dataset="a", n=2)
    good = _row("gpr", 0.5, 0.6, dataset="a", n=10)
    rescored = _row("gpr", 0.5, 0.55, dataset="a", n=10, threshold=0.3)
    rows = [base, other_set, fewer, good, rescored, base_03]
    assert baseline_for(other_set, rows) is None and baseline_for(fewer, rows) is None
    assert baseline_for(good, rows) is base
    assert baseline_for(rescored, rows) is base_03       # not the initializer at 0.5, which it would "beat"
    assert baseline_for(rescored, rows[:-1]) is None
    table = rows_markdown(rows).splitlines()
    assert table[3].endswith("| – |") and table[4].endswith("| – |") and "pass:" in table[5]
    assert "| 0.30 |" in table[6] and "fail: recall ✗" in table[6]


def test_recall_by_pitch_gets_a_column_per_pitch(tmp_path: Path) -> None:
    doc = {"dataset": {"kind": "semireal", "path": "x"}, "n_items": 3, "methods": {"gpr": {
        "n_images": 3, "pixel": {"pooled": {"dice": 0.5, "recall": 0.5, "fnr": 0.5}},
        "pixel_by_pitch": {"0.07": {"pooled": {"recall": 0.25}}, "0.2": {"pooled": {"recall": 0.75}}}}}}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    (row,) = load_rows([tmp_path])
    assert row.recall_by_pitch == {"0.07": 0.25, "0.2": 0.75}
    header, _, line = rows_markdown([row]).splitlines()
    assert "recall @ 0.07 mm | recall @ 0.2 mm" in header and "| 0.250 | 0.750 |" in line


def test_what_is_not_a_result_raises_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(EvaluationError, match="no such file"):
        load_rows([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no results.json below"):
        load_rows([tmp_path / "empty"])
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(EvaluationError, match="unreadable"):
        load_rows([bad])
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(EvaluationError, match="not an evaluation results.json"):
        load_rows([bad.parent])
    for method in (None, {"n_images": None}, {"n_images": 3, "threshold": "high"}):
        (tmp_path / "odd").mkdir(exist_ok=True)
        (tmp_path / "odd" / "results.json").write_text(json.dumps({"methods": {"gpr": method}}))
        with pytest.raises(EvaluationError, match="method 'gpr' of its results.json is malformed"):
            load_rows([tmp_path / "odd"])
    assert compare_script.main([str(bad)]) == 2
    assert "not an evaluation results.json" in capsys.readouterr().err


def test_script_prints_and_writes_the_table(eval_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert compare_script.main([str(eval_out), "--out", str(tmp_path / "t" / "table.md")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t" / "table.md").read_text() == rows_markdown(load_rows([eval_out]))


def test_sweep_refine_scores_a_limited_set_on_the_given_device(tmp_path: Path) -> None:
    """scripts/sweep_refine.py with --limit / --device (as scripts/gpu_issue11.sh calls it): one results folder per
    --set, named after it, scoring only the first N images."""
    import subprocess
    import sys

    data = make_synthetic_set(tmp_path / "syn", n=3, size=64)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sweep_refine.py"), str(data), "--kind",
                           "synthetic", "--out", str(tmp_path / "sw"), "--set", "t0=0.85,outer_iters=1",
                           "--limit", "1", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = load_rows([tmp_path / "sw"])
    assert row.method == "gpr_t00.85_outer_iters1" and row.n_images == 1
    doc = json.loads((tmp_path / "sw" / "gpr_t00.85_outer_iters1" / "results.json").read_text())
    assert doc["n_items"] == 1
    # --device reaches the engine: a device torch does not know stops the run naming it
    bad = subprocess.run([sys.executable, str(root / "scripts" / "sweep_refine.py"), str(data), "--kind",
                          "synthetic", "--out", str(tmp_path / "sw2"), "--set", "t0=0.85", "--limit", "1",
                          "--device", "nodevice"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "nodevice" in bad.stderr


@pytest.mark.parametrize("script", ["bench/gpu_check.sh", "bench/gpu_env.sh", "bench/gpu_prepare.sh",
                                    "scripts/gpu_train_generator.sh", "scripts/gpu_issue11.sh"])
def test_device_scripts_parse(script: str) -> None:
    """The scripts that only run on a lent GPU at least parse here (a syntax error would waste a device call)."""
    import subprocess

    path = Path(__file__).resolve().parents[1] / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- bootstrap
def test_paired_bootstrap_on_known_counts() -> None:
    import numpy as np

    from mcgenref_fast.evaluation.bootstrap import paired_bootstrap

    base = {f"i{k}": np.array([10 + k, 5, 10]) for k in range(8)}
    same = paired_bootstrap(base, dict(base), n_resamples=200)
    assert same.recall_diff == 0 and same.recall_ci == (0.0, 0.0) and same.p_recall_not_above == 1.0
    assert same.dice_diff == 0 and same.n_images == 8 and same.n_resamples == 200
    # A finds 3 more pixels on every image (3 fewer missed): every resample has A's recall above B's
    better = {k: v + np.array([3, 0, -3]) for k, v in base.items()}
    d = paired_bootstrap(better, base, n_resamples=200)
    tp, fn = sum(v[0] for v in base.values()), sum(v[2] for v in base.values())
    assert d.recall_diff == pytest.approx((tp + 24) / (tp + fn) - tp / (tp + fn))
    assert 0 < d.recall_ci[0] <= d.recall_diff <= d.recall_ci[1] and d.p_recall_not_above == 0.0
    assert d.dice_diff > 0 and d.recall_text().startswith("+0.")
    # one image better, one worse by as much: the interval straddles 0
    mixed = dict(base, i0=base["i0"] + [8, 0, -8], i1=base["i1"] + [-8, 0, 8])
    m = paired_bootstrap(mixed, base, n_resamples=500)
    assert m.recall_diff == 0 and m.recall_ci[0] < 0 < m.recall_ci[1] and 0 < m.p_recall_not_above < 1
    # reproducible for a seed
    assert paired_bootstrap(mixed, base, n_resamples=100, seed=3) == paired_bootstrap(mixed, base, n_resamples=100,
                                                                                       seed=3)


def test_paired_bootstrap_refuses_different_images_and_bad_settings() -> None:
    import numpy as np

    from mcgenref_fast.evaluation.bootstrap import paired_bootstrap

    a = {"x": np.array([1, 1, 1]), "y": np.array([1, 1, 1])}
    with pytest.raises(EvaluationError, match="different images"):
        paired_bootstrap(a, {"x": np.array([1, 1, 1])})
    with pytest.raises(EvaluationError, match="n_resamples"):
        paired_bootstrap(a, a, n_resamples=0)


def test_bootstrap_reads_a_real_runs_counts(eval_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from mcgenref_fast.evaluation.bootstrap import paired_bootstrap, pixel_counts

    counts = pixel_counts(eval_out, "gpr", 0.5)
    records = [json.loads(line) for line in (eval_out / "cache" / "metrics.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["method"] == "gpr" and r["threshold"] == 0.5]
    assert len(counts) == 2 and {r["item"] for r in mine} == set(counts)
    for r in mine:
        assert list(counts[r["item"]]) == [r["pixel"]["tp"], r["pixel"]["fp"], r["pixel"]["fn"]]
    d = paired_bootstrap(counts, pixel_counts(eval_out, "initializer", 0.5), n_resamples=50)
    rows = load_rows([eval_out])
    by = {r.method: r for r in rows}
    assert d.recall_diff == pytest.approx(by["gpr"].recall - by["initializer"].recall, abs=1e-12)
    assert d.dice_diff == pytest.approx(by["gpr"].dice - by["initializer"].dice, abs=1e-12)
    # the script prints the two interval columns for the TT-GPR row only
    assert compare_script.main([str(eval_out), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    gpr_line = next(line for line in table.splitlines() if "| gpr |" in line)
    assert "Δrecall [95 % CI]" in table and gpr_line.count("[") == 2
    with pytest.raises(SystemExit):
        compare_script.main([str(eval_out), "--bootstrap", "-1"])

    # a results.json written before the per-image counts: the cache, limited to the images it lists; a torn
    # line (an interrupted run) is skipped; a record from another run of an image it does not list is ignored
    old = tmp_path / "old"
    shutil.copytree(eval_out, old)
    doc = json.loads((old / "results.json").read_text())
    for m in doc["methods"].values():
        for row in m["per_image"]:
            row.pop("pixel_counts", None)
    (old / "results.json").write_text(json.dumps(doc))
    stray = dict(mine[0], item="not_in_this_run")
    with (old / "cache" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(stray) + "\n" + '{"method": "gpr", "thresh')
    assert {k: list(v) for k, v in pixel_counts(old, "gpr", 0.5).items()} == \
        {k: list(v) for k, v in counts.items()}
    with pytest.raises(EvaluationError, match="no record at threshold 0.7"):
        pixel_counts(old, "gpr", 0.7)
    shutil.rmtree(old / "cache")
    with pytest.raises(EvaluationError, match="no cache/metrics.jsonl"):
        pixel_counts(old, "gpr", 0.5)
    # no pixel truth (mini-MIAS rows): nothing to bootstrap, shown as "–"
    for m in doc["methods"].values():
        for row in m["per_image"]:
            row.pop("pixel", None)
    (old / "results.json").write_text(json.dumps(doc))
    assert pixel_counts(old, "gpr", 0.5) is None
    # a method the results.json does not hold: one clear error
    with pytest.raises(EvaluationError, match="no per-image rows of method 'gpr_x'"):
        pixel_counts(eval_out, "gpr_x", 0.5)


def test_bootstrap_of_truth_free_images_is_refused() -> None:
    import numpy as np

    from mcgenref_fast.evaluation.bootstrap import paired_bootstrap

    empty = {"n1": np.array([0, 4, 0]), "n2": np.array([0, 0, 0])}
    with pytest.raises(EvaluationError, match="undefined"):
        paired_bootstrap(empty, dict(empty), n_resamples=20)

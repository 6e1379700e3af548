"""The Ray runner on a local Ray instance (one CPU) gives the same tables as the local runner; an actor
that dies on a file is replaced and only that file fails. Skipped when ray (optional extra) is absent."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install 'mcgenref_fast[ray]')")

from mcgenref_fast.screen import LocalRunner, ScreenOptions, discover_inputs  # noqa: E402
from mcgenref_fast.screen.ray_runner import RayRunner  # noqa: E402
from mcgenref_fast.screen.summary import read_csv  # noqa: E402
from test_screen import _crashy_decode, phantom_dicom, phantom_png, summary_without_timing, tophat_factory  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _folder(root: Path) -> Path:
    folder = root / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    phantom_png(folder / "a" / "same.png", 0)
    phantom_png(folder / "b" / "same.png", 1)            # same stem: key collision resolved in input order
    phantom_png(folder / "c.png", 2, chest_wall="right")
    phantom_dicom(folder / "d.dcm", 3)
    (folder / "e.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(256))
    return folder


def test_ray_runner_matches_the_local_runner(tmp_path: Path, local_ray) -> None:
    items = discover_inputs(_folder(tmp_path))
    options = ScreenOptions(spacing_mm=0.1, workers=1, progress=False)
    local = LocalRunner(tophat_factory(), tmp_path / "local", options).run(items)
    remote = RayRunner(tophat_factory(), tmp_path / "ray", options, address="local", batch_size=2).run(items)
    assert ray.is_initialized()                              # an existing instance is reused, not shut down
    assert (local.exit_status, remote.exit_status) == (2, 2) and remote.n_processed == local.n_processed == 4
    a, b = tmp_path / "local", tmp_path / "ray"
    assert summary_without_timing(a / "summary.csv") == summary_without_timing(b / "summary.csv")
    assert [r["key"] for r in read_csv(b / "summary.csv")][:3] == ["same", "same-2", "c"]
    for name in ("exams.csv", "errors.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    assert sorted(read_csv(a / "index.csv"), key=json.dumps) == sorted(read_csv(b / "index.csv"), key=json.dumps)
    assert (b / "report.html").is_file() and len(list((b / "thumbs").iterdir())) == 4

    again = RayRunner(tophat_factory(), b, options, address="local").run(items)     # resume: nothing redone
    assert again.n_skipped == 4 and again.n_processed == 0


def test_ray_actor_crash_fails_only_its_file(tmp_path: Path, local_ray) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        phantom_png(folder / f"ok{i}.png", i)
    phantom_png(folder / "crash.png", 5)
    options = ScreenOptions(spacing_mm=0.1, progress=False, report=False, decode_fn=_crashy_decode)
    result = RayRunner(tophat_factory(), tmp_path / "out", options, address="local", batch_size=3).run(
        discover_inputs(folder))
    assert result.n_processed == 2 and result.exit_status == 2
    errors = read_csv(tmp_path / "out" / "errors.csv")
    assert [(Path(e["input"]).name, e["error_type"]) for e in errors] == [("crash.png", "WorkerCrashed")]

"""scripts/weights_from_git.py: an earlier revision's shipped weights written into a `--weights` folder, each file
checked against that revision's manifest."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("weights_from_git", ROOT / "scripts" / "weights_from_git.py")
script = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(script)


def _in_git() -> bool:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not _in_git(), reason="needs this repository's git history")
def test_head_weights_load_as_a_weights_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcgenref_fast.models.weights import load_film_segmentor, load_models_over_default

    monkeypatch.chdir(tmp_path)   # git runs in the script's clone, wherever we are
    out = tmp_path / "w"
    assert script.main(["HEAD", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    committed = json.loads(subprocess.run(["git", "show", "HEAD:mcgenref_fast/weights/manifest.json"], cwd=ROOT,
                                          capture_output=True, check=True).stdout)
    assert manifest == committed
    for entry in manifest["models"].values():
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    seg, gen, shas = load_models_over_default(out, "cpu")
    assert shas == {name: manifest["models"][name]["sha256"] for name in ("segmentor", "generator")}
    film = load_film_segmentor(out, "cpu")   # HEAD's weights hold the film segmentor (since 2026-11-28)
    assert film is not None and film.weights_info["sha256"] == manifest["models"]["segmentor_film"]["sha256"]


@pytest.mark.skipif(not _in_git(), reason="needs this repository's git history")
def test_unknown_revision_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # git runs in the script's clone, wherever we are
    with pytest.raises(SystemExit, match="no-such-rev"):
        script.main(["no-such-rev", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()

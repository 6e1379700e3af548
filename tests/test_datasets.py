"""Evaluation dataset kinds load their images and truth where they belong (tiny fixtures)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcgenref_fast.errors import AnnotationError, ConfigError
from mcgenref_fast.evaluation.datasets import canonical_with_breast, load_dataset, read_bool_png

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INBREAST_XML = SHARED / "inbreast" / "20587148.xml"


# ------------------------------------------------------------------------------------------------ fixtures
def write_pair(path: Path, image: np.ndarray, mask: np.ndarray, spacing_mm: float | None = 0.07) -> None:
    arrays = {"image": image.astype(np.float32), "mask": mask.astype(np.uint8), "centres_px": np.zeros((0, 2))}
    if spacing_mm is not None:
        arrays["spacing_mm"] = np.float64(spacing_mm)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def make_mias_layout(root: Path, size: int = 64) -> Path:
    """root/data/mias/{images,calcifications.csv,normals.csv} + root/data/splits.csv (two levels up)."""
    mias = root / "data" / "mias"
    (mias / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("mdb001", "mdb002", "mdb003", "mdb004"):
        img = np.full((size, size), 20, np.uint8)
        img[8:56, 0:40] = 120 + rng.integers(0, 20, (48, 40)).astype(np.uint8)
        Image.fromarray(img).save(mias / "images" / f"{name}.png")
    write_csv(mias / "calcifications.csv", ["image", "tissue", "severity", "row", "col", "radius_px"], [
        {"image": "mdb001", "tissue": "F", "severity": "B", "row": 30, "col": 20, "radius_px": 6},
        {"image": "mdb001", "tissue": "F", "severity": "B", "row": 40, "col": 12, "radius_px": 3},
        {"image": "mdb002", "tissue": "G", "severity": "M", "row": 20, "col": 25, "radius_px": 5},
    ])
    write_csv(mias / "normals.csv", ["image", "tissue"], [{"image": "mdb003", "tissue": "F"},
                                                          {"image": "mdb004", "tissue": "D"}])
    write_csv(root / "data" / "splits.csv", ["path", "split", "spacing_mm"], [
        {"path": "mias/images/mdb001.png", "split": "dev", "spacing_mm": 0.2},
        {"path": "mias/images/mdb002.png", "split": "train", "spacing_mm": 0.2},
        {"path": "mias/images/mdb003.png", "split": "dev", "spacing_mm": 0.2},
        {"path": "mias/images/mdb004.png", "split": "train", "spacing_mm": 0.2},
    ])
    return mias


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_pairs_load_image_mask_and_spacing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [rng.random((40, 48)).astype(np.float32) for _ in range(2)]
    masks = [np.zeros((40, 48), bool) for _ in range(2)]
    masks[0][10:13, 20:22] = True
    write_pair(tmp_path / "pair_000001.npz", images[1], masks[1])
    write_pair(tmp_path / "pair_000000.npz", images[0], masks[0])
    (tmp_path / "synth.json").write_text(json.dumps({"spacing_mm": 0.07}))
    items = load_dataset("synthetic", tmp_path)
    assert [it.id for it in items] == ["pair_000000", "pair_000001"]
    t0, t1 = items[0].load_truth(), items[1].load_truth()
    np.testing.assert_array_equal(t0.mask, masks[0])
    assert t0.normal is False and t1.normal is True and t0.has_pixels and t0.has_mcs and not t0.has_clusters
    can = items[0].load_canonical()
    np.testing.assert_array_equal(can.image, images[0])
    assert can.breast_mask.all() and can.spacing_mm == pytest.approx(0.07) and not can.flipped_lr
    assert tuple(can.input_shape) == (40, 48)


def test_synthetic_spacing_mismatch_is_refused(tmp_path: Path) -> None:
    write_pair(tmp_path / "p.npz", np.zeros((8, 8)), np.zeros((8, 8), bool), spacing_mm=0.1)
    with pytest.raises(ConfigError, match="0.1 mm/px"):
        load_dataset("synthetic", tmp_path)[0].load_canonical()


def test_synthetic_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no .npz"):
        load_dataset("synthetic", tmp_path)


# ------------------------------------------------------------------------------------------------ INbreast
@pytest.mark.skipif(not INBREAST_XML.is_file(), reason=f"INbreast XML not found at {INBREAST_XML}")
def test_inbreast_layout_truth_in_the_right_place(tmp_path: Path) -> None:
    from dicom_factory import make_dicom

    from mcgenref_fast.annotations import read_inbreast_xml

    (tmp_path / "AllDICOMs").mkdir()
    (tmp_path / "AllXML").mkdir()
    shutil.copyfile(INBREAST_XML, tmp_path / "AllXML" / "20587148.xml")
    shape = (2048, 2560)  # must hold the XML's marks (rows up to ~2005, cols up to ~2426)
    pixels = np.full(shape, 100, np.uint16)
    make_dicom(tmp_path / "AllDICOMs" / "20587148_abcdef_MG_R_CC_ANON.dcm", pixels, pixel_spacing=(0.07, 0.07),
               image_laterality="R")
    make_dicom(tmp_path / "AllDICOMs" / "11111111_012345_MG_L_CC_ANON.dcm", np.full((64, 48), 100, np.uint16),
               pixel_spacing=(0.07, 0.07), image_laterality="L")
    items = load_dataset("inbreast", tmp_path)
    assert [it.id for it in items] == ["11111111", "20587148"]
    normal, case = items[0].load_truth(), items[1].load_truth()
    assert normal.normal is True and normal.shape == (64, 48) and not normal.mask.any()
    assert normal.has_clusters and normal.n_clusters == 0
    ann = read_inbreast_xml(INBREAST_XML)
    assert case.shape == shape and case.normal is False
    assert int(case.mc_labels.max()) == len(ann.calcifications) == len(np.unique(case.mc_labels)) - 1
    for k, roi in enumerate(ann.calcifications, start=1):
        r, c = (int(np.floor(v + 0.5)) for v in roi.centroid_rc_px)
        assert case.mc_labels[r, c] == k, roi  # each ROI is labelled where it is, with its own label
    points = [roi.points_rc_px[0] for roi in ann.calcifications if roi.kind == "point"]
    np.testing.assert_allclose(case.points_rc_px, np.asarray(points).reshape(-1, 2))
    np.testing.assert_array_equal(case.mask, case.mc_labels > 0)
    assert case.mask.sum() < 2000  # a few small marks, not a flood fill
    assert case.has_clusters and case.n_clusters == len(ann.clusters)


# ------------------------------------------------------------------------------------------------ mini-MIAS
def test_mias_keeps_dev_rows_of_the_splits_two_levels_up(tmp_path: Path) -> None:
    mias = make_mias_layout(tmp_path)
    items = load_dataset("mias", mias)
    assert [it.id for it in items] == ["mdb001", "mdb003"]
    assert all(it.split == "dev" and it.spacing_mm == pytest.approx(0.2) for it in items)
    t = items[0].load_truth()
    np.testing.assert_allclose(t.cluster_centres_rc_px, [[30, 20], [40, 12]])
    np.testing.assert_allclose(t.cluster_radii_px, [6, 3])
    assert t.normal is False and not t.has_pixels and not t.has_mcs
    t3 = items[1].load_truth()
    assert t3.normal is True and t3.n_clusters == 0 and t3.shape == (64, 64)
    everything = load_dataset("mias", mias, split="all")
    assert [it.id for it in everything] == ["mdb001", "mdb002", "mdb003", "mdb004"]
    assert [it.split for it in everything] == ["dev", "train", "dev", "train"]
    train = load_dataset("mias", mias, split="train", limit=1)
    assert [it.id for it in train] == ["mdb002"]


def test_mias_without_splits_keeps_everything(tmp_path: Path) -> None:
    mias = make_mias_layout(tmp_path)
    (tmp_path / "data" / "splits.csv").unlink()
    assert len(load_dataset("mias", mias)) == 4


def test_mias_breast_mask_folder_is_used(tmp_path: Path) -> None:
    mias = make_mias_layout(tmp_path)
    breast = np.zeros((64, 64), bool)
    breast[4:60, 2:50] = True
    (mias / "breast").mkdir()
    Image.fromarray((breast * 255).astype(np.uint8)).save(mias / "breast" / "mdb001.png")
    item = load_dataset("mias", mias)[0]
    assert item.breast_mask_path is not None
    can = item.load_canonical()
    back = can.mask_to_input(can.breast_mask)
    from scipy import ndimage as ndi

    # the given mask (up to the one-pixel 'any pixel' border of the way back), not the thresholded tissue 8:56, 0:40
    assert back[breast].all() and not back[~ndi.binary_dilation(breast, iterations=2)].any()


# ------------------------------------------------------------------------------------------------ semi-real
def test_semireal_reads_what_synth_full_field_writes(tmp_path: Path) -> None:
    from dicom_factory import breast_phantom

    from mcgenref_fast.cli import main

    src = tmp_path / "bg.png"
    Image.fromarray(breast_phantom((420, 300), chest_wall="left", seed=3, label=False)).save(src)
    out = tmp_path / "semi" / "case1"
    assert main(["synth", "--full-field", str(src), "--spacing", "0.07", "--out", str(out), "--sites", "2",
                 "--seed", "4"]) == 0
    record = json.loads((out / "injected.json").read_text())
    items = load_dataset("semireal", tmp_path / "semi")
    assert [it.id for it in items] == ["case1"]
    assert items[0].spacing_mm == pytest.approx(0.07) and items[0].path == out / "image.png"
    t = items[0].load_truth()
    np.testing.assert_array_equal(t.mask, read_bool_png(out / "mask.png"))
    assert t.mask.any() and t.normal is False
    big = [c for c in record["clusters"] if c["n_mcs"] >= 5]
    small = [c for c in record["clusters"] if c["n_mcs"] < 5]
    np.testing.assert_allclose(t.cluster_centres_rc_px, np.asarray([c["site_input_px"] for c in big]).reshape(-1, 2))
    np.testing.assert_allclose(t.cluster_radii_px, [c["radius_mm"] / 0.07 for c in big])
    assert len(t.ignore_centres_rc_px) == len(small)
    for c in record["clusters"]:  # every injected MC centre is on (or next to) a mask pixel
        for mc in c["mcs"]:
            r, col = (int(round(v)) for v in mc["centre_input_px"])
            assert t.mask[max(0, r - 1):r + 2, max(0, col - 1):col + 2].any()


def test_semireal_name_mask_pairs_need_a_spacing(tmp_path: Path) -> None:
    img = np.zeros((30, 40), np.uint16)
    img[5:25, 5:35] = 1000
    mask = np.zeros((30, 40), bool)
    mask[10, 10] = True
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "a_mask.png")
    with pytest.raises(ConfigError, match="--spacing"):
        load_dataset("semireal", tmp_path)
    items = load_dataset("semireal", tmp_path, spacing_mm=0.1)
    assert [it.id for it in items] == ["a"]
    t = items[0].load_truth()
    np.testing.assert_array_equal(t.mask, mask)
    assert not t.has_clusters and t.normal is False


def test_canonical_with_breast_uses_the_given_mask(tmp_path: Path) -> None:
    from mcgenref_fast.io import read_mammogram

    rng = np.random.default_rng(0)
    img = (1000 + 200 * rng.random((50, 60))).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "crop.png")
    mam = read_mammogram(tmp_path / "crop.png", spacing_mm=0.07)
    given = np.ones((50, 60), bool)
    can = canonical_with_breast(mam, __import__("mcgenref_fast.config", fromlist=["x"]).CanonicalConfig(), given)
    assert can.breast_mask.all()
    assert float(np.percentile(can.image, 0.5)) == pytest.approx(0.0, abs=1e-3)


def test_unknown_kind_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        load_dataset("ddsm", tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_dataset("synthetic", tmp_path / "nope")

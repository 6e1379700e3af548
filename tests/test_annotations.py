"""Annotation readers: INbreast XML (plist) and the mini-MIAS lists; rasterising to masks."""
from __future__ import annotations

import dataclasses
import plistlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from mcgenref_fast.annotations import (
    InbreastAnnotation,
    MiasCluster,
    Roi,
    calcification_mask,
    cluster_mask,
    mias_cluster_mask,
    rasterise_rois,
    read_inbreast_xml,
    read_mias_calcifications,
    read_mias_normals,
)
from mcgenref_fast.errors import AnnotationError

EIGHT = np.ones((3, 3), bool)


def _roi(name: str, points_xy: list[tuple[float, float]], roi_type: int = 15) -> dict:
    return {"Name": name, "NumberOfPoints": len(points_xy), "Type": roi_type, "IndexInImage": 0,
            "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points_xy], "Point_mm": ["(0, 0, 0)"] * len(points_xy)}


def _write_xml(path: Path, rois: list[dict]) -> Path:
    with open(path, "wb") as fh:
        plistlib.dump({"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}, fh)
    return path


# ------------------------------------------------------------------------------------------- INbreast
def test_synthetic_inbreast_xml(tmp_path: Path) -> None:
    square = [(10, 20), (14, 20), (14, 24), (10, 24)]  # (x, y)
    path = _write_xml(tmp_path / "a.xml", [
        _roi("Calcification", [(5.2, 7.7)], 19), _roi("Calcification", square), _roi("Calcifications", [(30, 30), (31, 33), (33, 31)]),
        _roi("Cluster", [(40, 40), (60, 40), (60, 55), (40, 55)], 9), _roi("Mass", [(0, 0), (3, 0), (0, 3)]), _roi("Spiculated Region", [(1, 1), (2, 2), (1, 2)]),
    ])
    ann = read_inbreast_xml(path)
    assert isinstance(ann, InbreastAnnotation) and ann.path == str(path)
    assert [len(g) for g in (ann.calcifications, ann.clusters, ann.masses, ann.others)] == [3, 1, 1, 1]
    point = ann.calcifications[0]
    assert point.kind == "point" and point.points_rc_px == ((7.7, 5.2),)  # (x, y) -> (row, col)
    sq = ann.calcifications[1]
    assert sq.kind == "contour" and sq.centroid_rc_px == pytest.approx((22.0, 12.0)) and sq.area_px == pytest.approx(16.0)
    assert ann.clusters[0].roi_type == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        sq.name = "x"  # type: ignore[misc]

    mask = calcification_mask(ann, (64, 64))
    assert mask[8, 5] and mask[20:25, 10:15].all()  # point rounded to its pixel; square filled with its outline
    assert ndi.label(mask, EIGHT)[1] == 3
    assert calcification_mask(ann, (64, 64), point_radius_px=2.0).sum() > mask.sum()
    cl = cluster_mask(ann, (64, 64))
    assert cl[40:56, 40:61].all() and cl.sum() == 16 * 21


def test_tiny_contour_keeps_a_pixel() -> None:
    tiny = Roi("Calcification", "contour", ((5.1, 5.1), (5.2, 5.3), (5.3, 5.1)))
    assert rasterise_rois([tiny], (10, 10)).sum() >= 1
    outside = Roi("Calcification", "point", ((50.0, 50.0),))
    assert not rasterise_rois([outside], (10, 10)).any()


@pytest.mark.data
def test_inbreast_20587148_calcifications(shared_data: Path) -> None:
    ann = read_inbreast_xml(shared_data / "inbreast" / "20587148.xml")
    assert len(ann.calcifications) == 3 and not ann.clusters and not ann.masses
    kinds = [r.kind for r in ann.calcifications]
    assert kinds == ["point", "contour", "contour"]
    assert ann.calcifications[0].points_rc_px[0] == pytest.approx((2004.98999, 2425.899902))
    # centroids and shoelace areas as in data/inbreast/per_calcification.csv (cx = col, cy = row)
    assert ann.calcifications[1].centroid_rc_px == pytest.approx((1215.2783, 2132.3946), abs=1e-3)
    assert ann.calcifications[2].centroid_rc_px == pytest.approx((1326.7856, 1931.9314), abs=1e-3)
    assert ann.calcifications[1].area_px == pytest.approx(70.4552, abs=1e-3)
    assert ann.calcifications[2].area_px == pytest.approx(257.1645, abs=1e-3)
    mask = calcification_mask(ann, (3328, 2560))
    lab, n = ndi.label(mask, EIGHT)
    assert n == 3 and mask[2005, 2426]
    sizes = sorted(np.bincount(lab.ravel())[1:])
    assert sizes[0] == 1 and 60 < sizes[1] < 110 and 240 < sizes[2] < 330  # filled polygon + outline


@pytest.mark.data
def test_inbreast_22580192_mass_only(shared_data: Path) -> None:
    ann = read_inbreast_xml(shared_data / "inbreast" / "22580192.xml")
    assert not ann.calcifications and len(ann.masses) == 1
    mass = ann.masses[0]
    assert mass.kind == "contour" and len(mass.points_rc_px) == 62
    assert mass.points_rc_px[0] == pytest.approx((1367.180054, 1747.560059))
    # Area in the XML is 1.5286 cm^2 = 152.86 mm^2; the shoelace area is at most that
    area_mm2 = mass.area_px * 0.07 ** 2
    assert 0.7 * 152.86 < area_mm2 <= 152.86


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"not xml at all", "not an INbreast XML plist"),
        (plistlib.dumps({"Foo": 1}), "no top-level 'Images'"),
        (plistlib.dumps({"Images": [{"ImageIndex": 0}]}), "no 'ROIs'"),
        (plistlib.dumps({"Images": [{"ROIs": [{"Name": "Mass"}]}]}), "no 'Point_px'"),
        (plistlib.dumps({"Images": [{"ROIs": [{"Name": "Mass", "Point_px": ["(1, 2)", "(x, 3)"]}]}]}), "cannot parse point"),
        (plistlib.dumps({"Images": [{"ROIs": [{"Point_px": ["(1, 2)"]}]}]}), "no 'Name'"),
    ],
)
def test_inbreast_malformed(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=pattern) as err:
        read_inbreast_xml(path)
    assert str(path) in str(err.value)


def test_inbreast_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="cannot be read"):
        read_inbreast_xml(tmp_path / "none.xml")


def test_inbreast_roi_without_points_skipped_with_warning(tmp_path: Path) -> None:
    path = _write_xml(tmp_path / "a.xml", [{"Name": "Calcification", "Point_px": []}, _roi("Calcification", [(1, 2)], 19)])
    with pytest.warns(UserWarning, match="without points"):
        ann = read_inbreast_xml(path)
    assert len(ann.calcifications) == 1


# ---------------------------------------------------------------------------------------------- MIAS
@pytest.mark.data
def test_mias_calcification_list(shared_data: Path) -> None:
    clusters = read_mias_calcifications(shared_data / "mias" / "calcifications.csv")
    assert len(clusters) == 10 and all(isinstance(c, MiasCluster) for c in clusters)
    first = clusters[0]
    assert (first.image, first.tissue, first.severity) == ("mdb209", "G", "M")
    assert (first.row_px, first.col_px, first.radius_px) == (521.0, 647.0, 87.0)
    assert first.centre_rc_px == (521.0, 647.0)
    assert sum(c.image == "mdb226" for c in clusters) == 3
    mask = mias_cluster_mask([c for c in clusters if c.image == "mdb226"], (1024, 1024))
    assert ndi.label(mask)[1] == 3
    assert mask.sum() == pytest.approx(np.pi * (7**2 + 25**2 + 8**2), rel=0.1)


@pytest.mark.data
def test_mias_normals(shared_data: Path) -> None:
    normals = read_mias_normals(shared_data / "mias" / "normals.csv")
    assert len(normals) == 40 and {n.tissue for n in normals} == {"F", "G", "D"}
    assert all((shared_data / "mias" / "images" / f"{n.image}.png").is_file() for n in normals)


def test_mias_bottom_origin_converted(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("image,tissue,severity,x,y_bottom_origin,radius_px\nmdb209,G,M,647,503,87\n")
    (c,) = read_mias_calcifications(path)
    assert (c.row_px, c.col_px) == (1024 - 503, 647)
    (c,) = read_mias_calcifications(path, image_height_px=2048)
    assert c.row_px == 2048 - 503


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("image,tissue\nmdb1,F\n", "missing column"),
        ("image,row,col,radius_px\nmdb1,5,x,3\n", "line 2: col='x' is not a number"),
        ("image,row,col,radius_px\nmdb1,5,6,-3\n", "must be positive"),
        ("image,row,col,radius_px\nmdb1,,,3\n", "no centre"),
    ],
)
def test_mias_malformed(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=pattern) as err:
        read_mias_calcifications(path)
    assert str(path) in str(err.value)

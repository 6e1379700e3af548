"""Ground-truth readers: INbreast XML (OsiriX plist) and the mini-MIAS calcification / normal lists.

Everything is returned as frozen dataclasses in the image's own pixel grid, coordinates `(row, col)`
from the top-left (INbreast's `Point_px` strings are `(x, y)`; mini-MIAS's original `y` counts from the
bottom). Rasterising helpers turn them into masks of a given shape for the metrics. Any malformed file
raises `AnnotationError` naming the file and what is wrong.
"""
from __future__ import annotations

import csv
import plistlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal
from xml.parsers.expat import ExpatError

import numpy as np
from skimage.draw import disk, line, polygon

from mcgenref_fast.errors import AnnotationError

PointRC = tuple[float, float]
_POINT_RE = re.compile(r"^\s*\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,\s*[-+0-9.eE]+\s*)?\)\s*$")


@dataclass(frozen=True)
class Roi:
    """One annotated region: a single point (`kind='point'`) or a closed contour (`kind='contour'`)."""

    name: str
    kind: Literal["point", "contour"]
    points_rc_px: tuple[PointRC, ...]
    roi_type: int | None = None  # OsiriX ROI type (19 point, 15 polygon, 9 oval, ...)
    index: int | None = None  # IndexInImage

    @property
    def centroid_rc_px(self) -> PointRC:
        """The point itself, or the polygon's area centroid (vertex mean if degenerate)."""
        pts = np.asarray(self.points_rc_px, dtype=np.float64)
        if len(pts) >= 3:
            r, c = pts[:, 0], pts[:, 1]
            r2, c2 = np.roll(r, -1), np.roll(c, -1)
            cross = c * r2 - c2 * r
            area2 = cross.sum()
            if abs(area2) > 1e-9:
                return (float(((r + r2) * cross).sum() / (3 * area2)), float(((c + c2) * cross).sum() / (3 * area2)))
        mean = pts.mean(axis=0)
        return (float(mean[0]), float(mean[1]))

    @property
    def area_px(self) -> float:
        """Shoelace area of a contour (0 for a point)."""
        pts = np.asarray(self.points_rc_px, dtype=np.float64)
        if len(pts) < 3:
            return 0.0
        r, c = pts[:, 0], pts[:, 1]
        return float(abs(np.dot(c, np.roll(r, -1)) - np.dot(r, np.roll(c, -1))) / 2)


@dataclass(frozen=True)
class InbreastAnnotation:
    """ROIs of one INbreast XML, split by name (case-insensitive: 'Calcification*', 'Cluster*', 'Mass*')."""

    path: str
    calcifications: tuple[Roi, ...]
    clusters: tuple[Roi, ...]
    masses: tuple[Roi, ...]
    others: tuple[Roi, ...]


def _parse_point(text: object, path: Path, where: str) -> PointRC:
    match = _POINT_RE.match(str(text))
    if not match:
        raise AnnotationError(f"{path}: {where}: cannot parse point {text!r} (expected '(x, y)')")
    x, y = float(match.group(1)), float(match.group(2))
    if not (np.isfinite(x) and np.isfinite(y)):
        raise AnnotationError(f"{path}: {where}: non-finite point {text!r}")
    return (y, x)


def _parse_roi(roi: object, path: Path, where: str) -> Roi | None:
    if not isinstance(roi, dict):
        raise AnnotationError(f"{path}: {where}: ROI is not a dict")
    name = roi.get("Name")
    if not isinstance(name, str):
        raise AnnotationError(f"{path}: {where}: ROI has no 'Name'")
    raw = roi.get("Point_px")
    if raw is None:
        raise AnnotationError(f"{path}: {where} ({name}): ROI has no 'Point_px'")
    if not isinstance(raw, list):
        raise AnnotationError(f"{path}: {where} ({name}): 'Point_px' is not an array")
    if not raw:
        warnings.warn(f"{path}: {where} ({name}): ROI without points, skipped", stacklevel=3)
        return None
    points = tuple(_parse_point(p, path, f"{where} ({name}) point {i}") for i, p in enumerate(raw))
    roi_type = roi.get("Type")
    index = roi.get("IndexInImage")
    return Roi(
        name=name,
        kind="point" if len(points) == 1 else "contour",
        points_rc_px=points,
        roi_type=int(roi_type) if isinstance(roi_type, int) else None,
        index=int(index) if isinstance(index, int) else None,
    )


def read_inbreast_xml(path: str | Path) -> InbreastAnnotation:
    """Parse an INbreast XML (plist: dict -> Images -> ROIs with Name, Point_px '(x, y)')."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            doc = plistlib.load(fh)
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (plistlib.InvalidFileException, ExpatError, ValueError, TypeError) as exc:
        raise AnnotationError(f"{path}: not an INbreast XML plist ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("Images"), list):
        raise AnnotationError(f"{path}: not an INbreast XML (no top-level 'Images' array)")
    groups: dict[str, list[Roi]] = {"calcification": [], "cluster": [], "mass": [], "other": []}
    for i, image in enumerate(doc["Images"]):
        rois = image.get("ROIs") if isinstance(image, dict) else None
        if not isinstance(rois, list):
            raise AnnotationError(f"{path}: Images[{i}] has no 'ROIs' array")
        for j, raw in enumerate(rois):
            roi = _parse_roi(raw, path, f"Images[{i}].ROIs[{j}]")
            if roi is None:
                continue
            key = roi.name.strip().lower()
            group = next((g for g in ("calcification", "cluster", "mass") if key.startswith(g)), "other")
            groups[group].append(roi)
    return InbreastAnnotation(
        path=str(path),
        calcifications=tuple(groups["calcification"]),
        clusters=tuple(groups["cluster"]),
        masses=tuple(groups["mass"]),
        others=tuple(groups["other"]),
    )


def _outline(rows: np.ndarray, cols: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixels on the straight segments joining consecutive vertices (and the last to the first)."""
    n = len(rows)
    pairs = [(i, i + 1) for i in range(n - 1)] + ([(n - 1, 0)] if closed else [])
    parts = [line(int(rows[a]), int(cols[a]), int(rows[b]), int(cols[b])) for a, b in pairs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def rasterise_rois(rois: Iterable[Roi], shape: tuple[int, int], point_radius_px: float = 0.0) -> np.ndarray:
    """Bool mask of `shape`: contours filled (outline included, so each keeps >= 1 pixel), points as a
    single pixel (or a disc of `point_radius_px`). Parts outside the image are dropped."""
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    for roi in rois:
        pts = np.asarray(roi.points_rc_px, dtype=np.float64)
        if roi.kind == "point" or len(pts) == 1:
            r, c = pts[0]
            if point_radius_px > 0:
                rr, cc = disk((r, c), point_radius_px, shape=shape)
                mask[rr, cc] = True
            else:
                ri, ci = int(np.floor(r + 0.5)), int(np.floor(c + 0.5))
                if 0 <= ri < h and 0 <= ci < w:
                    mask[ri, ci] = True
            continue
        rows, cols = np.round(pts[:, 0]).astype(np.int64), np.round(pts[:, 1]).astype(np.int64)
        if len(pts) >= 3:
            rr, cc = polygon(pts[:, 0], pts[:, 1], shape=shape)
            mask[rr, cc] = True
        rr, cc = _outline(rows, cols, closed=len(pts) >= 3)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        mask[rr[ok], cc[ok]] = True
    return mask


def calcification_mask(annotation: InbreastAnnotation, shape: tuple[int, int], point_radius_px: float = 0.0) -> np.ndarray:
    """Bool mask of the annotated calcifications (contours filled, points per `point_radius_px`)."""
    return rasterise_rois(annotation.calcifications, shape, point_radius_px)


def cluster_mask(annotation: InbreastAnnotation, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask of the annotated cluster outlines (filled)."""
    return rasterise_rois(annotation.clusters, shape)


@dataclass(frozen=True)
class MiasCluster:
    """One mini-MIAS calcification cluster: centre `(row_px, col_px)` from the top-left, radius in px."""

    image: str
    tissue: str
    severity: str
    row_px: float
    col_px: float
    radius_px: float

    @property
    def centre_rc_px(self) -> PointRC:
        return (self.row_px, self.col_px)


@dataclass(frozen=True)
class MiasNormal:
    """A mini-MIAS normal image and its background tissue class (F fatty, G glandular, D dense)."""

    image: str
    tissue: str


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(fields) or 'none'})")
            return [(n, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for n, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable CSV ({exc})") from exc


def _number(row: dict[str, str], key: str, path: Path, line_no: int) -> float:
    try:
        value = float(row[key])
    except (KeyError, ValueError) as exc:
        raise AnnotationError(f"{path}: line {line_no}: {key}={row.get(key)!r} is not a number") from exc
    if not np.isfinite(value):
        raise AnnotationError(f"{path}: line {line_no}: {key}={value} is not finite")
    return value


def read_mias_calcifications(path: str | Path, image_height_px: int = 1024) -> tuple[MiasCluster, ...]:
    """mini-MIAS calcification list: columns image, tissue, severity, and `row`/`col` (top origin) or
    the original `x`/`y_bottom_origin` (converted with `image_height_px`), and `radius_px`."""
    path = Path(path)
    rows = _read_csv(path, ("image", "radius_px"))
    clusters = []
    for line_no, row in rows:
        if row.get("row", "") != "" and row.get("col", "") != "":
            r, c = _number(row, "row", path, line_no), _number(row, "col", path, line_no)
        elif row.get("x", "") != "" and row.get("y_bottom_origin", "") != "":
            c = _number(row, "x", path, line_no)
            r = image_height_px - _number(row, "y_bottom_origin", path, line_no)
        else:
            raise AnnotationError(f"{path}: line {line_no}: no centre (need row/col or x/y_bottom_origin)")
        radius = _number(row, "radius_px", path, line_no)
        if radius <= 0:
            raise AnnotationError(f"{path}: line {line_no}: radius_px={radius} must be positive")
        if not row.get("image"):
            raise AnnotationError(f"{path}: line {line_no}: empty image name")
        clusters.append(MiasCluster(row["image"], row.get("tissue", ""), row.get("severity", ""), r, c, radius))
    return tuple(clusters)


def read_mias_normals(path: str | Path) -> tuple[MiasNormal, ...]:
    """mini-MIAS normals list: columns image, tissue."""
    path = Path(path)
    out = []
    for line_no, row in _read_csv(path, ("image",)):
        if not row.get("image"):
            raise AnnotationError(f"{path}: line {line_no}: empty image name")
        out.append(MiasNormal(row["image"], row.get("tissue", "")))
    return tuple(out)


def mias_cluster_mask(clusters: Iterable[MiasCluster], shape: tuple[int, int]) -> np.ndarray:
    """Bool mask of the cluster discs (centre and radius in px), clipped to `shape`."""
    mask = np.zeros(shape, dtype=bool)
    for cl in clusters:
        rr, cc = disk((cl.row_px, cl.col_px), cl.radius_px, shape=shape)
        mask[rr, cc] = True
    return mask

"""Evaluation datasets: each kind on disk becomes a list of `EvalItem`s (image, spacing, truth, split).

Kinds (`load_dataset(kind, path, ...)`):
- `synthetic`: a folder of `.npz` pairs as `mcgenref synth --out DIR` writes them (`image` canonical float32,
  `mask` uint8, `spacing_mm`, `centres_px`; `synth.json` beside them). The image is already canonical
  (0.07 mm, [0, 1] units); the whole patch is breast. Truth: pixel mask; MCs = its 8-connected components.
- `inbreast`: `PATH/AllDICOMs/*.dcm` + `PATH/AllXML/<case id>.xml` as distributed (the DICOM name starts
  with the case id, `<id>_<hash>_MG_<lat>_<view>_ANON.dcm`). Truth (input grid): pixel mask = calcification
  contours filled + point marks (one pixel each); MCs = one per calcification ROI (contour or point, touching
  ROIs keep their identity); clusters = `Cluster*` ROIs (centre = area centroid, radius = farthest vertex).
  A DICOM without an XML has no annotated finding (a normal image).
- `mias`: a mini-MIAS folder (`images/` + `calcifications.csv` + `normals.csv`, as in shared/data/mias) at
  `spacing_mm` (default 0.2). Truth: clusters (centre, radius px) of the listed cases; normals are known
  negatives; no pixel truth. Optional `breast/<name>.png` gives the breast mask (crops, see make_dev_sets).
- `semireal`: images with injected MC clusters as `mcgenref synth --full-field IMAGE --out DIR` writes them:
  every folder under PATH holding `injected.json` + `image.png` + `mask.png` (spacing from injected.json),
  optional `breast.png`; or, without any injected.json, `NAME.png` paired with `NAME_mask.png` at the given
  spacing. Truth: pixel mask, MCs = its components; clusters = injected sites with at least
  `min_cluster_mcs` MCs whose site lies in the image (the others are `ignore` sites: a predicted cluster
  near one is neither found nor false).

Split filtering (`splits` = a splits.csv with `path,split[,spacing_mm]`, paths relative to its folder): an
item is kept when its file (or its stem) is listed with `split`. For `mias`, a splits.csv in PATH, its
parent or grandparent is used by default; `split='all'` keeps everything.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np

from mcgenref_fast.config import CANONICAL_SPACING_MM, CanonicalConfig
from mcgenref_fast.errors import AnnotationError, ConfigError

DatasetKind = Literal["synthetic", "inbreast", "mias", "semireal"]
DATASET_KINDS: tuple[str, ...] = ("synthetic", "inbreast", "mias", "semireal")
MIAS_SPACING_MM: float = 0.2          # mini-MIAS film scans: 200 µm
MIN_CLUSTER_MCS: int = 5              # SPEC §6: a cluster has at least 5 MCs
IMAGE_SUFFIXES = (".png", ".pgm", ".tif", ".tiff", ".dcm")


# --------------------------------------------------------------------------------------------------
# Truth and items
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Truth:
    """Ground truth of one image in its input grid (`shape`), `(row, col)` px.

    mask: pixel-level truth (bool) or None (no pixel truth); mc_labels: int32 label image with one label per
    true MC (touching MCs keep their identity) or None (MCs = components of `mask`); points_rc_px: point
    marks among the MCs (n, 2); cluster_centres_rc_px (k, 2) / cluster_radii_px (k,): true clusters, or None
    (no cluster truth); ignore_centres_rc_px / ignore_radii_px: "don't care" cluster sites; normal: a known
    negative image (None = unknown).
    """

    shape: tuple[int, int]
    mask: Optional[np.ndarray] = None
    mc_labels: Optional[np.ndarray] = None
    points_rc_px: Optional[np.ndarray] = None
    cluster_centres_rc_px: Optional[np.ndarray] = None
    cluster_radii_px: Optional[np.ndarray] = None
    ignore_centres_rc_px: Optional[np.ndarray] = None
    ignore_radii_px: Optional[np.ndarray] = None
    normal: Optional[bool] = None

    @property
    def has_pixels(self) -> bool:
        return self.mask is not None

    @property
    def has_mcs(self) -> bool:
        return self.mask is not None or self.mc_labels is not None

    @property
    def has_clusters(self) -> bool:
        return self.cluster_centres_rc_px is not None

    @property
    def n_clusters(self) -> int:
        return 0 if self.cluster_centres_rc_px is None else int(len(self.cluster_centres_rc_px))


@dataclass(frozen=True, eq=False)
class EvalItem:
    """One image of a dataset: `id` (unique in the dataset), the file `path`, its `spacing_mm` (None = read
    from the file), `split` (None = unknown), `kind`; `load_truth()` and `load_canonical(cfg)` do the I/O."""

    id: str
    path: Path
    spacing_mm: Optional[float]
    kind: str
    split: Optional[str] = None
    breast_mask_path: Optional[Path] = None
    _truth: Callable[[Optional[tuple[int, int]]], Truth] = field(repr=False, default=None)  # type: ignore[assignment]
    _canonical: Optional[Callable[[CanonicalConfig], Any]] = field(repr=False, default=None)

    def load_truth(self, shape: Optional[tuple[int, int]] = None) -> Truth:
        """The truth in the input grid (`shape` = the image's (H, W) when known; read from the file if not)."""
        return self._truth(shape)

    def load_canonical(self, cfg: CanonicalConfig = CanonicalConfig()) -> Any:
        """The image as a `CanonicalImage` (read + `to_canonical`, or the item's own loader)."""
        if self._canonical is not None:
            return self._canonical(cfg)
        from mcgenref_fast.io import read_mammogram

        mammogram = read_mammogram(self.path, spacing_mm=self.spacing_mm)
        breast = None if self.breast_mask_path is None else read_bool_png(self.breast_mask_path)
        return canonical_with_breast(mammogram, cfg, breast)

    def file_identity(self) -> dict[str, Any]:
        """What identifies the bytes behind this item (for cache keys): resolved path, size, mtime."""
        p = Path(self.path)
        try:
            st = p.stat()
            return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            return {"path": str(p)}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def read_bool_png(path: str | Path) -> np.ndarray:
    """A mask PNG (any non-zero pixel is True; RGB/RGBA collapse to their maximum channel)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: cannot read mask PNG ({exc})") from exc
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2:
        raise AnnotationError(f"{path}: a mask must be a 2-D image, got shape {arr.shape}")
    return arr > 0


def canonical_with_breast(mammogram: Any, cfg: CanonicalConfig, breast_input: Optional[np.ndarray]) -> Any:
    """`to_canonical`, but with a given breast mask (input grid) instead of the computed one — crops that
    lie inside the breast need it, since the thresholding breast mask would cut into their fatty tissue."""
    from mcgenref_fast.canonical import CanonicalImage, canonical_shape, normalise, resample, to_canonical

    can = to_canonical(mammogram, cfg)
    if breast_input is None:
        return can
    if breast_input.shape != tuple(mammogram.image.shape):
        raise AnnotationError(f"{mammogram.meta.path}: breast mask shape {breast_input.shape} differs from the "
                              f"image's {mammogram.image.shape}")
    shape = canonical_shape(mammogram.image.shape, mammogram.meta.spacing_mm, cfg.spacing_mm)
    image = resample(np.asarray(mammogram.image, np.float32), shape)
    mask = resample(breast_input.astype(np.float32), shape) >= 0.5
    if can.flipped_lr:
        image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    normalised, lo, hi = normalise(image, mask, cfg)
    return CanonicalImage(image=normalised, breast_mask=mask, spacing_mm=can.spacing_mm, flipped_lr=can.flipped_lr,
                          input_shape=can.input_shape, input_spacing_mm=can.input_spacing_mm, lo=lo, hi=hi)


def image_shape(path: Path, spacing_mm: Optional[float]) -> tuple[int, int]:
    """(H, W) of an image file without decoding a DICOM's pixels."""
    if path.suffix.lower() == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[1]), int(im.size[0])


def _find_image(folder: Path, name: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class SplitTable:
    """Rows of a splits.csv: resolved path → split, and stem → split (for files listed under another name)."""

    path: Path
    by_path: dict[str, str]
    by_stem: dict[str, str]

    def split_of(self, image: Path) -> Optional[str]:
        return self.by_path.get(str(Path(image).resolve())) or self.by_stem.get(Path(image).stem)


def read_splits(path: str | Path) -> SplitTable:
    """Read a splits.csv (`path,split[,spacing_mm]`; paths relative to the csv's folder)."""
    path = Path(path)
    by_path: dict[str, str] = {}
    by_stem: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "split"} <= {f.strip() for f in reader.fieldnames}:
                raise AnnotationError(f"{path}: a splits.csv needs the columns path,split")
            for row in reader:
                rel, split = (row.get("path") or "").strip(), (row.get("split") or "").strip()
                if not rel:
                    continue
                by_path[str((path.parent / rel).resolve())] = split
                by_stem[Path(rel).stem] = split
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return SplitTable(path, by_path, by_stem)


def find_splits(path: Path, levels: int = 2) -> Optional[Path]:
    """splits.csv in `path` or up to `levels` folders above it."""
    p = Path(path).resolve()
    for cand in [p] + list(p.parents)[:levels]:
        if (cand / "splits.csv").is_file():
            return cand / "splits.csv"
    return None


def filter_split(items: list[EvalItem], table: Optional[SplitTable], split: Optional[str]) -> list[EvalItem]:
    """Items whose file is listed with `split` (all items when table is None or split is None/'all')."""
    if table is None:
        return items
    out = []
    for it in items:
        s = table.split_of(it.path)
        it = EvalItem(it.id, it.path, it.spacing_mm, it.kind, s, it.breast_mask_path, it._truth, it._canonical)
        if split in (None, "all") or s == split:
            out.append(it)
    return out


# --------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------
def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: cannot read the synthetic pair ({exc})") from exc


def _synthetic_spacing(data: dict[str, np.ndarray], default: Optional[float]) -> float:
    if "spacing_mm" in data:
        return float(np.asarray(data["spacing_mm"]).reshape(()))
    return float(default) if default is not None else CANONICAL_SPACING_MM


def load_synthetic(path: Path, spacing_mm: Optional[float] = None) -> list[EvalItem]:
    files = sorted(Path(path).glob("*.npz"))
    if not files:
        raise AnnotationError(f"{path}: no .npz synthetic pairs (write them with `mcgenref synth --out DIR`)")
    default = spacing_mm
    manifest = Path(path) / "synth.json"
    if default is None and manifest.is_file():
        try:
            default = float(json.loads(manifest.read_text())["spacing_mm"])
        except (ValueError, KeyError, TypeError):
            default = None
    items = []
    for f in files:
        def truth(shape: Optional[tuple[int, int]], f: Path = f) -> Truth:
            data = _load_npz(f)
            if "mask" not in data:
                raise AnnotationError(f"{f}: no 'mask' array")
            mask = np.asarray(data["mask"]) > 0
            return Truth(tuple(mask.shape), mask=mask, normal=not bool(mask.any()))

        def canonical(cfg: CanonicalConfig, f: Path = f) -> Any:
            from mcgenref_fast.canonical import CanonicalImage

            data = _load_npz(f)
            if "image" not in data:
                raise AnnotationError(f"{f}: no 'image' array")
            image = np.ascontiguousarray(data["image"], np.float32)
            if image.ndim != 2:
                raise AnnotationError(f"{f}: 'image' must be 2-D, got {image.shape}")
            sp = _synthetic_spacing(data, default)
            if abs(sp - cfg.spacing_mm) > 1e-9:
                raise ConfigError(f"{f}: synthetic pair at {sp} mm/px, but the canonical spacing is {cfg.spacing_mm}")
            return CanonicalImage(image=image, breast_mask=np.ones(image.shape, bool), spacing_mm=sp, flipped_lr=False,
                                  input_shape=(int(image.shape[0]), int(image.shape[1])), input_spacing_mm=sp,
                                  lo=0.0, hi=1.0)

        items.append(EvalItem(f.stem, f, default, "synthetic", None, None, truth, canonical))
    return items


# --------------------------------------------------------------------------------------------------
# INbreast
# --------------------------------------------------------------------------------------------------
def _roi_labels(rois: Sequence[Any], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """int32 label image (one label per ROI, rasterised like `annotations.rasterise_rois`) and the point marks."""
    from mcgenref_fast.annotations import rasterise_rois

    labels = np.zeros(shape, np.int32)
    points = []
    h, w = shape
    for k, roi in enumerate(rois, start=1):
        pts = np.asarray(roi.points_rc_px, np.float64)
        if roi.kind == "point" or len(pts) == 1:
            points.append(pts[0])
        r0 = max(0, int(np.floor(pts[:, 0].min())) - 1)
        c0 = max(0, int(np.floor(pts[:, 1].min())) - 1)
        r1 = min(h, int(np.ceil(pts[:, 0].max())) + 2)
        c1 = min(w, int(np.ceil(pts[:, 1].max())) + 2)
        if r1 <= r0 or c1 <= c0:
            continue  # entirely outside the image
        local = type(roi)(roi.name, roi.kind, tuple((r - r0, c - c0) for r, c in roi.points_rc_px), roi.roi_type, roi.index)
        m = rasterise_rois([local], (r1 - r0, c1 - c0))
        labels[r0:r1, c0:c1][m] = k
    return labels, np.asarray(points, np.float64).reshape(-1, 2)


def _inbreast_clusters(rois: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    centres, radii = [], []
    for roi in rois:
        c = np.asarray(roi.centroid_rc_px, np.float64)
        pts = np.asarray(roi.points_rc_px, np.float64)
        centres.append(c)
        radii.append(float(np.hypot(*(pts - c).T).max()) if len(pts) > 1 else 0.0)
    return np.asarray(centres, np.float64).reshape(-1, 2), np.asarray(radii, np.float64)


def inbreast_case_id(dicom: Path) -> str:
    return Path(dicom).name.split("_")[0].split(".")[0]


def load_inbreast(path: Path, spacing_mm: Optional[float] = None) -> list[EvalItem]:
    from mcgenref_fast.annotations import read_inbreast_xml

    path = Path(path)
    dicom_dir = path / "AllDICOMs" if (path / "AllDICOMs").is_dir() else path
    xml_dir = path / "AllXML" if (path / "AllXML").is_dir() else path
    files = sorted(p for p in dicom_dir.iterdir() if p.is_file() and p.suffix.lower() == ".dcm") if dicom_dir.is_dir() else []
    if not files:
        raise AnnotationError(f"{path}: no DICOMs (expected PATH/AllDICOMs/*.dcm and PATH/AllXML/<case id>.xml)")
    items = []
    for f in files:
        case = inbreast_case_id(f)
        xml = xml_dir / f"{case}.xml"

        def truth(shape: Optional[tuple[int, int]], f: Path = f, xml: Path = xml) -> Truth:
            shape = tuple(shape) if shape is not None else image_shape(f, spacing_mm)
            if not xml.is_file():
                return Truth(shape, mask=np.zeros(shape, bool), mc_labels=np.zeros(shape, np.int32),
                             points_rc_px=np.zeros((0, 2)), cluster_centres_rc_px=np.zeros((0, 2)),
                             cluster_radii_px=np.zeros(0), normal=True)
            ann = read_inbreast_xml(xml)
            labels, points = _roi_labels(ann.calcifications, shape)
            centres, radii = _inbreast_clusters(ann.clusters)
            return Truth(shape, mask=labels > 0, mc_labels=labels, points_rc_px=points, cluster_centres_rc_px=centres,
                         cluster_radii_px=radii, normal=not (ann.calcifications or ann.clusters))

        items.append(EvalItem(case if sum(inbreast_case_id(g) == case for g in files) == 1 else f.stem,
                              f, spacing_mm, "inbreast", None, None, truth))
    return items


# --------------------------------------------------------------------------------------------------
# mini-MIAS
# --------------------------------------------------------------------------------------------------
def load_mias(path: Path, spacing_mm: Optional[float] = None) -> list[EvalItem]:
    from mcgenref_fast.annotations import read_mias_calcifications, read_mias_normals

    path = Path(path)
    spacing = MIAS_SPACING_MM if spacing_mm is None else float(spacing_mm)
    image_dir = path / "images" if (path / "images").is_dir() else path
    calc_csv, normal_csv = path / "calcifications.csv", path / "normals.csv"
    if not calc_csv.is_file() and not normal_csv.is_file():
        raise AnnotationError(f"{path}: neither calcifications.csv nor normals.csv found")
    clusters = read_mias_calcifications(calc_csv) if calc_csv.is_file() else ()
    normals = read_mias_normals(normal_csv) if normal_csv.is_file() else ()
    by_image: dict[str, list[Any]] = {}
    for cl in clusters:
        by_image.setdefault(cl.image, []).append(cl)
    names = list(by_image) + [n.image for n in normals if n.image not in by_image]
    items = []
    for name in names:
        f = _find_image(image_dir, name)
        if f is None:
            raise AnnotationError(f"{image_dir}: no image file for {name!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
        cls = by_image.get(name, [])
        breast = _find_image(path / "breast", name) if (path / "breast").is_dir() else None

        def truth(shape: Optional[tuple[int, int]], f: Path = f, cls: list = cls) -> Truth:
            shape = tuple(shape) if shape is not None else image_shape(f, spacing)
            centres = np.asarray([c.centre_rc_px for c in cls], np.float64).reshape(-1, 2)
            radii = np.asarray([c.radius_px for c in cls], np.float64)
            return Truth(shape, cluster_centres_rc_px=centres, cluster_radii_px=radii, normal=not cls)

        items.append(EvalItem(name, f, spacing, "mias", None, breast, truth))
    return items


# --------------------------------------------------------------------------------------------------
# semi-real (full-field injection)
# --------------------------------------------------------------------------------------------------
def _semireal_truth_from_record(record: dict, mask_path: Path, spacing: float, shape: Optional[tuple[int, int]],
                                min_cluster_mcs: int) -> Truth:
    mask = read_bool_png(mask_path)
    if shape is not None and tuple(shape) != mask.shape:
        raise AnnotationError(f"{mask_path}: mask shape {mask.shape} differs from the image's {tuple(shape)}")
    h, w = mask.shape
    keep_c, keep_r, ign_c, ign_r = [], [], [], []
    for cl in record.get("clusters", []):
        site = np.asarray(cl["site_input_px"], np.float64)
        radius_px = float(cl.get("radius_mm", 0.0)) / spacing
        inside = 0 <= site[0] <= h - 1 and 0 <= site[1] <= w - 1 and cl.get("in_image", True)
        if inside and int(cl.get("n_mcs", 0)) >= min_cluster_mcs:
            keep_c.append(site)
            keep_r.append(radius_px)
        else:
            ign_c.append(site)
            ign_r.append(radius_px)
    return Truth(mask.shape, mask=mask, cluster_centres_rc_px=np.asarray(keep_c, np.float64).reshape(-1, 2),
                 cluster_radii_px=np.asarray(keep_r, np.float64),
                 ignore_centres_rc_px=np.asarray(ign_c, np.float64).reshape(-1, 2),
                 ignore_radii_px=np.asarray(ign_r, np.float64), normal=not bool(mask.any()) and not keep_c)


def load_semireal(path: Path, spacing_mm: Optional[float] = None, min_cluster_mcs: int = MIN_CLUSTER_MCS) -> list[EvalItem]:
    path = Path(path)
    records = sorted(path.rglob("injected.json"))
    items = []
    for rec_path in records:
        folder = rec_path.parent
        image, mask = folder / "image.png", folder / "mask.png"
        if not image.is_file() or not mask.is_file():
            raise AnnotationError(f"{folder}: injected.json without image.png and mask.png")
        try:
            record = json.loads(rec_path.read_text())
        except (OSError, ValueError) as exc:
            raise AnnotationError(f"{rec_path}: not readable JSON ({exc})") from exc
        spacing = record.get("spacing_mm", spacing_mm)
        if spacing is None:
            raise ConfigError(f"{rec_path}: no spacing_mm; pass --spacing")
        spacing = float(spacing)
        breast = folder / "breast.png"
        rel = folder.relative_to(path).as_posix()
        item_id = rel if rel != "." else folder.name

        def truth(shape: Optional[tuple[int, int]], record: dict = record, mask: Path = mask, spacing: float = spacing) -> Truth:
            return _semireal_truth_from_record(record, mask, spacing, shape, min_cluster_mcs)

        items.append(EvalItem(item_id, image, spacing, "semireal", record.get("split"),
                              breast if breast.is_file() else None, truth))
    if items:
        return items
    # fallback: NAME.png + NAME_mask.png at the given spacing
    pairs = []
    for mask in sorted(path.rglob("*_mask.png")):
        image = mask.with_name(mask.name[: -len("_mask.png")] + ".png")
        if image.is_file():
            pairs.append((image, mask))
    if not pairs:
        raise AnnotationError(f"{path}: no semi-real images (folders with injected.json + image.png + mask.png, "
                              "or NAME.png with NAME_mask.png)")
    if spacing_mm is None:
        raise ConfigError(f"{path}: these images carry no spacing; pass --spacing")
    for image, mask in pairs:
        breast = image.with_name(image.stem + "_breast.png")

        def truth(shape: Optional[tuple[int, int]], mask: Path = mask) -> Truth:
            m = read_bool_png(mask)
            if shape is not None and tuple(shape) != m.shape:
                raise AnnotationError(f"{mask}: mask shape {m.shape} differs from the image's {tuple(shape)}")
            return Truth(m.shape, mask=m, normal=not bool(m.any()))

        items.append(EvalItem(image.relative_to(path).with_suffix("").as_posix(), image, float(spacing_mm), "semireal",
                              None, breast if breast.is_file() else None, truth))
    return items


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------
def load_dataset(kind: str, path: str | Path, spacing_mm: Optional[float] = None, splits: Optional[str | Path] = None,
                 split: Optional[str] = "dev", limit: Optional[int] = None) -> list[EvalItem]:
    """The items of a dataset of `kind` at `path`, filtered by split, at most `limit` of them.

    `splits`: a splits.csv; for `mias` one is looked for in PATH and up to two folders above it when not
    given. `split`: the split to keep (default 'dev'; None or 'all' keeps every item). Without a splits.csv
    (not given, not found) nothing is filtered.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: dataset folder not found")
    if spacing_mm is not None and not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise ConfigError(f"spacing must be a positive number of mm, got {spacing_mm}")
    if kind == "synthetic":
        items = load_synthetic(path, spacing_mm)
    elif kind == "inbreast":
        items = load_inbreast(path, spacing_mm)
    elif kind == "mias":
        items = load_mias(path, spacing_mm)
        if splits is None:
            splits = find_splits(path)
    elif kind == "semireal":
        items = load_semireal(path, spacing_mm)
    else:
        raise ConfigError(f"unknown dataset kind {kind!r} (one of {', '.join(DATASET_KINDS)})")
    table = read_splits(splits) if splits is not None else None
    items = filter_split(items, table, split)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{path}: item ids are not unique")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        items = items[:limit]
    return items

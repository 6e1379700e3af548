"""SPEC §6 findings: MCs (8-connected mask components), large components, single-linkage clusters.

Works in canonical space (pixel coordinates `(row, col)`; mm = px * spacing_mm). Every per-component
quantity is computed with vectorised numpy over the mask's pixels sorted by label, so a full mammogram
with thousands of components takes a fraction of a second.

Choices the SPEC leaves open:
- Cluster links are measured between the **nearest pixels** (pixel centres) of two MCs, not their
  centroids: candidates come from a KD-tree on centroids (a pair can only link when
  `d_centroid - r_i - r_j <= link`, r = farthest pixel from the centroid), pairs certainly linked are
  accepted from representative pixels, and only the rest are checked exactly on boundary pixels.
- Cluster extent = largest distance between two member pixels (mm); cluster centroid = unweighted mean
  of its member MCs' centroids; radius = largest distance from that centroid to a member pixel (mm).
- Contrast = mean image over the component minus the median of the ring of pixels at distance
  (RING_INNER_PX, RING_OUTER_PX] from it that belong to no component (NaN → None when the ring is empty).
- Bounding boxes are inclusive pixel-centre coordinates `(row_min, col_min, row_max, col_max)`; in the
  input grid they are the min/max of the mapped corners (a flip swaps corners).
- Regional clusters count for flagging like any other cluster.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, cKDTree
from scipy.spatial.distance import cdist, pdist

from mcgenref_fast.config import FindingsConfig, config_to_dict

RING_INNER_PX: float = 2.0  # contrast background ring: pixels farther than this from the MC ...
RING_OUTER_PX: float = 4.0  # ... and at most this far (px, canonical grid)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_DIST_EPS_PX = 1e-9  # inclusive distance comparisons despite float rounding
_BRUTE_DIAMETER_MAX_POINTS = 2000  # above this, the diameter goes through the convex hull
_RING_CHUNK = 65536  # boundary pixels per vectorised batch when building contrast rings

ToInput = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Components as sorted pixel lists (shared with metrics_mc)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComponentPixels:
    """Pixels of labelled components, sorted by label (labels 1..n).

    `rows`, `cols`: int64 pixel coordinates; component `k` (1-based) owns `[starts[k-1], starts[k])`;
    `boundary[i]`: pixel i has a 4-neighbour outside its component (or the image), which is where the
    nearest and the farthest pixel to any other point lie.
    """

    labels: np.ndarray
    n: int
    rows: np.ndarray
    cols: np.ndarray
    starts: np.ndarray
    boundary: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def pixel_labels(self) -> np.ndarray:
        """1-based label of each listed pixel."""
        return np.repeat(np.arange(1, self.n + 1), self.counts)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: `(labels int32 (H, W), n)`."""
    labels, n = ndi.label(np.asarray(mask, dtype=bool), structure=EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(n)


def component_pixels(labels: np.ndarray, n: Optional[int] = None) -> ComponentPixels:
    """Sorted pixel lists of a label image (labels 0 = background, 1..n components; gaps allowed)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    n = int(labels.max(initial=0)) if n is None else int(n)
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(np.int64)
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    width = labels.shape[1]
    rows, cols = np.divmod(idx, width)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    pr, pc = rows + 1, cols + 1
    boundary = np.zeros(idx.size, dtype=bool)
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        boundary |= padded[pr + dr, pc + dc] != lab
    return ComponentPixels(labels, n, rows.astype(np.int64), cols.astype(np.int64), starts, boundary)


def _segment_reduce(values: np.ndarray, starts: np.ndarray, ufunc: np.ufunc, empty: float) -> np.ndarray:
    """`ufunc.reduceat` over the segments `[starts[k], starts[k+1])`, `empty` for empty segments."""
    n = starts.size - 1
    out = np.full(n, empty, dtype=np.float64)
    nonempty = starts[1:] > starts[:-1]
    if values.size and nonempty.any():
        out[nonempty] = ufunc.reduceat(values.astype(np.float64, copy=False), starts[:-1][nonempty])
    return out


# --------------------------------------------------------------------------------------------------
# Public dataclasses
# --------------------------------------------------------------------------------------------------
Point = tuple[float, float]
Box = tuple[float, float, float, float]


def _pt(p: Optional[np.ndarray]) -> Optional[list[float]]:
    return None if p is None else [float(p[0]), float(p[1])]


@dataclass(frozen=True)
class MC:
    """One mask component. Coordinates `(row, col)`; `id` is its 8-connected label (raster order)."""

    id: int
    centroid_px: Point
    centroid_mm: Point
    centroid_input_px: Optional[Point]
    area_px: int
    area_mm2: float
    diameter_mm: float
    score: float
    contrast: Optional[float]
    bbox_px: tuple[int, int, int, int]
    large: bool
    cluster_id: Optional[int] = None
    at_outline: bool = False  # centroid within `FindingsConfig.outline_margin_mm` of the breast outline

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "centroid_canonical_px": _pt(self.centroid_px),
            "centroid_mm": _pt(self.centroid_mm),
            "centroid_input_px": _pt(self.centroid_input_px),
            "area_px": self.area_px,
            "area_mm2": self.area_mm2,
            "equivalent_diameter_mm": self.diameter_mm,
            "score": self.score,
            "contrast": self.contrast,
            "bbox_canonical_px": list(self.bbox_px),
            "large": self.large,
            "at_outline": self.at_outline,
            "cluster_id": self.cluster_id,
        }


@dataclass(frozen=True)
class Cluster:
    """A single-linkage group of MCs (SPEC §6); `mc_ids` refer to `MC.id`."""

    id: int
    mc_ids: tuple[int, ...]
    centroid_px: Point
    centroid_mm: Point
    centroid_input_px: Optional[Point]
    radius_mm: float
    extent_mm: float
    score: float
    regional: bool
    bbox_px: tuple[int, int, int, int]
    bbox_input_px: Optional[Box]

    @property
    def n_mcs(self) -> int:
        return len(self.mc_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "n_mcs": self.n_mcs,
            "mc_ids": list(self.mc_ids),
            "centroid_canonical_px": _pt(self.centroid_px),
            "centroid_mm": _pt(self.centroid_mm),
            "centroid_input_px": _pt(self.centroid_input_px),
            "radius_mm": self.radius_mm,
            "extent_mm": self.extent_mm,
            "score": self.score,
            "regional": self.regional,
            "bbox_canonical_px": list(self.bbox_px),
            "bbox_input_px": None if self.bbox_input_px is None else [float(v) for v in self.bbox_input_px],
        }


@dataclass(frozen=True)
class Findings:
    """All findings of one image: MCs (diameter ≤ large_diameter_mm), large components, clusters."""

    spacing_mm: float
    image_shape: tuple[int, int]
    mcs: tuple[MC, ...]
    large: tuple[MC, ...]
    clusters: tuple[Cluster, ...]
    flagged: bool
    cfg: FindingsConfig = field(default_factory=FindingsConfig)

    @property
    def max_cluster_score(self) -> float:
        """Highest cluster score (0 when there is no cluster): the image-level score."""
        return max((c.score for c in self.clusters), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "canonical_spacing_mm": self.spacing_mm,
            "canonical_shape_px": list(self.image_shape),
            "flagged": self.flagged,
            "max_cluster_score": self.max_cluster_score,
            "n_mcs": len(self.mcs),
            "n_large": len(self.large),
            "n_clusters": len(self.clusters),
            "settings": config_to_dict(self.cfg),
            "clusters": [c.to_dict() for c in self.clusters],
            "mcs": [m.to_dict() for m in self.mcs],
            "large": [m.to_dict() for m in self.large],
        }


# --------------------------------------------------------------------------------------------------
# Per-component statistics
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stats:
    area_px: np.ndarray
    centroid: np.ndarray  # (n, 2) px
    score: np.ndarray
    rmax_px: np.ndarray  # farthest pixel centre from the centroid
    rep: np.ndarray  # (n, 2) pixel nearest the centroid (a real pixel of the component)
    bbox: np.ndarray  # (n, 4) inclusive
    contrast: np.ndarray  # NaN where unknown


def _component_stats(cp: ComponentPixels, prob: np.ndarray, image: Optional[np.ndarray]) -> _Stats:
    counts = cp.counts.astype(np.float64)
    lab = cp.pixel_labels - 1
    rows = cp.rows.astype(np.float64)
    cols = cp.cols.astype(np.float64)
    centroid = np.stack([np.bincount(lab, rows, cp.n) / counts, np.bincount(lab, cols, cp.n) / counts], axis=1)
    score = _segment_reduce(prob[cp.rows, cp.cols], cp.starts, np.maximum, np.nan)
    d = np.hypot(rows - centroid[lab, 0], cols - centroid[lab, 1])
    rmax = _segment_reduce(d, cp.starts, np.maximum, 0.0)
    # representative pixel: the first pixel attaining the minimum distance to the centroid
    dmin = _segment_reduce(d, cp.starts, np.minimum, 0.0)
    is_min = np.flatnonzero(d <= dmin[lab])
    first = is_min[np.unique(lab[is_min], return_index=True)[1]]
    rep = np.stack([cp.rows[first], cp.cols[first]], axis=1)
    bbox = np.stack(
        [
            _segment_reduce(rows, cp.starts, np.minimum, 0),
            _segment_reduce(cols, cp.starts, np.minimum, 0),
            _segment_reduce(rows, cp.starts, np.maximum, 0),
            _segment_reduce(cols, cp.starts, np.maximum, 0),
        ],
        axis=1,
    ).astype(np.int64)
    contrast = np.full(cp.n, np.nan)
    if image is not None and cp.n:
        inside = np.bincount(lab, image[cp.rows, cp.cols].astype(np.float64), cp.n) / counts
        contrast = inside - _ring_medians(cp, image)
    return _Stats(cp.counts.astype(np.int64), centroid, score, rmax, rep, bbox, contrast)


def _ring_offsets(radius_px: float) -> np.ndarray:
    r = int(math.floor(radius_px))
    dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dr**2 + dc**2 <= radius_px**2 + _DIST_EPS_PX
    return np.stack([dr[keep], dc[keep]], axis=1)


def _ring_medians(cp: ComponentPixels, image: np.ndarray) -> np.ndarray:
    """Median image value over each component's ring (RING_INNER_PX, RING_OUTER_PX], NaN when empty.

    Ring pixels are generated from boundary pixels only (the nearest pixel of a component to an outside
    pixel is a boundary pixel): `{q: d ≤ outer} \\ {q: d ≤ inner}`, excluding every component's pixels.
    """
    h, w = image.shape
    b = np.flatnonzero(cp.boundary)
    src_r, src_c, src_l = cp.rows[b], cp.cols[b], cp.pixel_labels[b].astype(np.int64)

    def keys(radius: float) -> np.ndarray:
        """Unique `label·H·W + pixel` of the non-MC pixels within `radius` of each component."""
        off = _ring_offsets(radius)
        out = []
        for s in range(0, b.size, _RING_CHUNK):  # bounded memory for pathological masks
            rr = (src_r[s : s + _RING_CHUNK, None] + off[None, :, 0]).ravel()
            cc = (src_c[s : s + _RING_CHUNK, None] + off[None, :, 1]).ravel()
            ll = np.repeat(src_l[s : s + _RING_CHUNK], off.shape[0])
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rr, cc, ll = rr[ok], cc[ok], ll[ok]
            ok = cp.labels[rr, cc] == 0
            out.append(np.unique(ll[ok] * (h * w) + rr[ok] * w + cc[ok]))
        return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)

    ring = np.setdiff1d(keys(RING_OUTER_PX), keys(RING_INNER_PX), assume_unique=True)
    ring_lab, pix = np.divmod(ring, h * w)
    vals = image.ravel()[pix].astype(np.float64)
    order = np.lexsort((vals, ring_lab))
    ring_lab, vals = ring_lab[order], vals[order]
    counts = np.bincount(ring_lab, minlength=cp.n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)])
    med = np.full(cp.n, np.nan)
    has = counts > 0
    lo = starts[:-1][has] + (counts[has] - 1) // 2
    hi = starts[:-1][has] + counts[has] // 2
    med[has] = 0.5 * (vals[lo] + vals[hi])
    return med


# --------------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------------
def _boundary_points(cp: ComponentPixels, k: int) -> np.ndarray:
    """Boundary pixel centres (m, 2) of component k (0-based)."""
    s, e = cp.starts[k], cp.starts[k + 1]
    sel = cp.boundary[s:e]
    return np.stack([cp.rows[s:e][sel], cp.cols[s:e][sel]], axis=1).astype(np.float64)


def _single_linkage_groups(cp: ComponentPixels, st: _Stats, members: np.ndarray, link_px: float) -> np.ndarray:
    """Group ids (0..g-1) of `members` (0-based component indices) linked by nearest pixels ≤ link_px."""
    m = members.size
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    c = st.centroid[members]
    r = st.rmax_px[members]
    tree = cKDTree(c)
    # From i, radius link + 2 r_i finds every j with r_j ≤ r_i and d ≤ link + r_i + r_j.
    hits = tree.query_ball_point(c, link_px + 2.0 * r + _DIST_EPS_PX, return_sorted=False)
    lens = np.fromiter((len(h) for h in hits), dtype=np.int64, count=m)
    ii = np.repeat(np.arange(m), lens)
    jj = np.fromiter((j for h in hits for j in h), dtype=np.int64, count=int(lens.sum()))
    keep = ii != jj
    pairs = np.unique(np.stack([np.minimum(ii[keep], jj[keep]), np.maximum(ii[keep], jj[keep])], axis=1), axis=0)
    ii, jj = pairs[:, 0], pairs[:, 1]
    dc = np.hypot(*(c[ii] - c[jj]).T)
    keep = dc - r[ii] - r[jj] <= link_px + _DIST_EPS_PX
    ii, jj = ii[keep], jj[keep]
    rep = st.rep[members].astype(np.float64)
    sure = np.hypot(*(rep[ii] - rep[jj]).T) <= link_px + _DIST_EPS_PX
    links_i, links_j = [ii[sure]], [jj[sure]]
    amb_i, amb_j = ii[~sure], jj[~sure]
    if amb_i.size:
        _, grp = _components(m, links_i[0], links_j[0])
        todo = grp[amb_i] != grp[amb_j]
        ok_i, ok_j = [], []
        cache: dict[int, np.ndarray] = {}

        def points(k: int) -> np.ndarray:
            if k not in cache:
                cache[k] = _boundary_points(cp, int(members[k]))
            return cache[k]

        for a, b in zip(amb_i[todo].tolist(), amb_j[todo].tolist()):
            if cdist(points(a), points(b)).min() <= link_px + _DIST_EPS_PX:
                ok_i.append(a)
                ok_j.append(b)
        links_i.append(np.asarray(ok_i, dtype=np.int64))
        links_j.append(np.asarray(ok_j, dtype=np.int64))
    _, grp = _components(m, np.concatenate(links_i), np.concatenate(links_j))
    return grp


def _components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[int, np.ndarray]:
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    g, lab = connected_components(graph, directed=False)
    return int(g), lab.astype(np.int64)


def _diameter(points: np.ndarray) -> float:
    """Largest distance between two points (px); 0 for fewer than two."""
    if points.shape[0] < 2:
        return 0.0
    if points.shape[0] > _BRUTE_DIAMETER_MAX_POINTS:
        points = points[ConvexHull(points, qhull_options="QJ").vertices]
    return float(pdist(points).max())


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------
def _map_points(to_input: Optional[ToInput], pts: np.ndarray) -> Optional[np.ndarray]:
    if to_input is None:
        return None
    out = np.asarray(to_input(np.asarray(pts, dtype=np.float64).reshape(-1, 2)), dtype=np.float64)
    if out.shape != (pts.shape[0], 2):
        raise ValueError(f"to_input must map (n, 2) to (n, 2), got {out.shape} for n={pts.shape[0]}")
    return out


def _input_box(to_input: Optional[ToInput], box: np.ndarray) -> Optional[Box]:
    if to_input is None:
        return None
    r0, c0, r1, c1 = (float(v) for v in box)
    q = _map_points(to_input, np.array([[r0, c0], [r0, c1], [r1, c0], [r1, c1]]))
    assert q is not None
    lo, hi = q.min(axis=0), q.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def extract_findings(
    prob: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float,
    image: Optional[np.ndarray] = None,
    to_input: Optional[ToInput] = None,
    cfg: FindingsConfig = FindingsConfig(),
    breast: Optional[np.ndarray] = None,
) -> Findings:
    """MCs, large components and clusters of a canonical mask (SPEC §6).

    prob: (H, W) probability map (score = its max over a component); mask: (H, W) bool;
    spacing_mm: canonical pixel pitch; image: canonical image for contrast (optional);
    to_input: maps canonical `(n, 2)` (row, col) px to input px (e.g. `CanonicalImage.points_to_input`);
    breast: (H, W) bool breast mask — with it, MCs within `cfg.outline_margin_mm` of its outline (or of the
    image edge) are marked `at_outline` and kept out of clusters; without it no MC is.
    """
    prob = np.asarray(prob)
    mask = np.asarray(mask, dtype=bool)
    if prob.ndim != 2 or prob.shape != mask.shape:
        raise ValueError(f"prob and mask must be 2-D of one shape, got {prob.shape} and {mask.shape}")
    if image is not None and np.shape(image) != mask.shape:
        raise ValueError(f"image shape {np.shape(image)} differs from mask shape {mask.shape}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    if breast is not None and np.shape(breast) != mask.shape:
        raise ValueError(f"breast mask shape {np.shape(breast)} differs from mask shape {mask.shape}")
    labels, n = label_components(mask)
    cp = component_pixels(labels, n)
    st = _component_stats(cp, prob, None if image is None else np.asarray(image))
    area_mm2 = st.area_px * spacing_mm**2
    diameter_mm = 2.0 * np.sqrt(area_mm2 / math.pi)
    is_large = diameter_mm > cfg.large_diameter_mm
    cent_in = _map_points(to_input, st.centroid) if n else None

    at_outline = _near_outline(st.centroid, breast, spacing_mm, cfg.outline_margin_mm)
    small = np.flatnonzero(~is_large)
    clusterable = small[~at_outline[small]]
    grp = _single_linkage_groups(cp, st, clusterable, cfg.cluster_link_mm / spacing_mm)
    cluster_of = np.full(n, -1, dtype=np.int64)
    clusters: list[Cluster] = []
    if clusterable.size:
        sizes = np.bincount(grp)
        groups = [np.sort(clusterable[grp == g]) for g in np.flatnonzero(sizes >= cfg.cluster_min_mcs)]
        groups.sort(key=lambda g: int(g[0]))  # by their first MC in raster order
        for cid, mem in enumerate(groups, start=1):
            cluster_of[mem] = cid
            clusters.append(_make_cluster(cid, mem, cp, st, spacing_mm, to_input, cfg))

    def make_mc(k: int) -> MC:
        return MC(
            id=int(k) + 1,
            centroid_px=(float(st.centroid[k, 0]), float(st.centroid[k, 1])),
            centroid_mm=(float(st.centroid[k, 0] * spacing_mm), float(st.centroid[k, 1] * spacing_mm)),
            centroid_input_px=None if cent_in is None else (float(cent_in[k, 0]), float(cent_in[k, 1])),
            area_px=int(st.area_px[k]),
            area_mm2=float(area_mm2[k]),
            diameter_mm=float(diameter_mm[k]),
            score=float(st.score[k]),
            contrast=None if not np.isfinite(st.contrast[k]) else float(st.contrast[k]),
            bbox_px=tuple(int(v) for v in st.bbox[k]),  # type: ignore[arg-type]
            large=bool(is_large[k]),
            cluster_id=None if cluster_of[k] < 0 else int(cluster_of[k]),
            at_outline=bool(at_outline[k]),
        )

    mcs = tuple(make_mc(k) for k in small)
    large = tuple(make_mc(k) for k in np.flatnonzero(is_large))
    flagged = any(c.score >= cfg.threshold for c in clusters)
    return Findings(float(spacing_mm), (int(mask.shape[0]), int(mask.shape[1])), mcs, large, tuple(clusters),
                    bool(flagged), cfg)


def outline_distance_px(points_px: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distance (px, between pixel centres) from each integer point `(row, col)` to the nearest
    pixel outside the breast mask or outside the image — what `distance_transform_edt` of the mask padded
    with one False ring gives there, without the whole-image transform: the nearest outside pixel always has
    a 4-neighbour inside (a step from it toward the point lands closer, hence inside), so a KD-tree over those
    outline pixels plus the distance to the ring beyond the image edge is exact. 0 for a point outside."""
    breast = np.asarray(breast, dtype=bool)
    h, w = breast.shape
    pts = np.asarray(points_px, dtype=np.int64).reshape(-1, 2)
    r, c = pts[:, 0], pts[:, 1]
    edge = np.minimum(np.minimum(r + 1, h - r), np.minimum(c + 1, w - c)).astype(np.float64)
    outside = ~breast
    touches = np.zeros_like(outside)
    touches[1:, :] |= breast[:-1, :]
    touches[:-1, :] |= breast[1:, :]
    touches[:, 1:] |= breast[:, :-1]
    touches[:, :-1] |= breast[:, 1:]
    rim = np.argwhere(outside & touches)
    dist = edge
    if len(rim):
        nearest, _ = cKDTree(rim).query(pts, k=1)
        dist = np.minimum(edge, nearest)
    return np.where(breast[r, c], dist, 0.0)


def _near_outline(centroids_px: np.ndarray, breast: Optional[np.ndarray], spacing_mm: float,
                  margin_mm: float) -> np.ndarray:
    """(n,) bool: the centroid's pixel lies within `margin_mm` of the breast outline, i.e. of a pixel outside
    the breast mask or outside the image (Euclidean distance between pixel centres, mm). The image edge counts
    on every side, the chest-wall side included: a film scan's edge is its brightest artefact. All False
    without a breast mask or with a zero margin."""
    n = centroids_px.shape[0]
    if breast is None or not margin_mm > 0 or n == 0:
        return np.zeros(n, dtype=bool)
    h, w = np.shape(breast)
    r = np.clip(np.rint(centroids_px[:, 0]).astype(np.int64), 0, h - 1)
    c = np.clip(np.rint(centroids_px[:, 1]).astype(np.int64), 0, w - 1)
    dist_px = outline_distance_px(np.stack([r, c], axis=1), breast)
    return dist_px * spacing_mm <= margin_mm + _DIST_EPS_PX * spacing_mm


def _make_cluster(cid: int, mem: np.ndarray, cp: ComponentPixels, st: _Stats, spacing_mm: float,
                  to_input: Optional[ToInput], cfg: FindingsConfig) -> Cluster:
    centroid = st.centroid[mem].mean(axis=0)
    pts = np.concatenate([_boundary_points(cp, int(k)) for k in mem], axis=0)
    radius_px = float(np.hypot(*(pts - centroid).T).max())
    extent_mm = _diameter(pts) * spacing_mm
    top = np.sort(st.score[mem])[::-1][: cfg.cluster_score_top_k]
    box = np.concatenate([st.bbox[mem, :2].min(axis=0), st.bbox[mem, 2:].max(axis=0)])
    cin = _map_points(to_input, centroid[None, :])
    return Cluster(
        id=cid,
        mc_ids=tuple(int(k) + 1 for k in mem),
        centroid_px=(float(centroid[0]), float(centroid[1])),
        centroid_mm=(float(centroid[0] * spacing_mm), float(centroid[1] * spacing_mm)),
        centroid_input_px=None if cin is None else (float(cin[0, 0]), float(cin[0, 1])),
        radius_mm=radius_px * spacing_mm,
        extent_mm=float(extent_mm),
        score=float(top.mean()),
        regional=bool(extent_mm > cfg.regional_extent_mm),
        bbox_px=tuple(int(v) for v in box),  # type: ignore[arg-type]
        bbox_input_px=_input_box(to_input, box),
    )


def extract_findings_canonical(prob: np.ndarray, mask: np.ndarray, canonical: Any,
                               cfg: FindingsConfig = FindingsConfig()) -> Findings:
    """`extract_findings` for a `CanonicalImage` (uses its spacing_mm, image and points_to_input)."""
    return extract_findings(prob, mask, canonical.spacing_mm, image=canonical.image,
                            to_input=canonical.points_to_input, cfg=cfg,
                            breast=getattr(canonical, "breast_mask", None))

"""SPEC §6 findings: hand-made cases with known answers, brute-force cross-checks, speed."""
from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.sparse.csgraph import connected_components

from mcgenref_fast.config import FindingsConfig
from mcgenref_fast.findings import (RING_INNER_PX, RING_OUTER_PX, component_pixels, extract_findings,
                                    extract_findings_canonical, label_components)

H = 0.07  # canonical spacing, mm/px


def _chain(shape: tuple[int, int], n: int, step_px: int, row: int = 50, col0: int = 20, size: int = 2) -> np.ndarray:
    """`n` square MCs of side `size` px on one row, `step_px` apart (top-left corners)."""
    m = np.zeros(shape, dtype=bool)
    for i in range(n):
        c = col0 + i * step_px
        m[row : row + size, c : c + size] = True
    return m


def test_empty_mask_has_no_findings() -> None:
    z = np.zeros((64, 80), dtype=np.float32)
    f = extract_findings(z, z > 0, H, image=z, to_input=lambda p: p)
    assert f.mcs == () and f.large == () and f.clusters == () and not f.flagged
    d = json.loads(json.dumps(f.to_dict()))
    assert d["n_mcs"] == 0 and d["max_cluster_score"] == 0.0 and d["canonical_spacing_mm"] == H


def test_single_mc_geometry_score_and_input_mapping() -> None:
    shape = (40, 50)
    prob = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[10:13, 20:23] = True
    prob[10:13, 20:23] = 0.6
    prob[11, 22] = 0.9
    flip = lambda p: np.stack([p[:, 0] * 2.0, (shape[1] - 1 - p[:, 1]) * 2.0], axis=1)  # noqa: E731
    f = extract_findings(prob, mask, H, to_input=flip)
    assert len(f.mcs) == 1 and not f.large
    mc = f.mcs[0]
    assert mc.id == 1 and mc.area_px == 9
    assert mc.centroid_px == pytest.approx((11.0, 21.0))
    assert mc.centroid_mm == pytest.approx((11.0 * H, 21.0 * H))
    assert mc.centroid_input_px == pytest.approx((22.0, 56.0))
    assert mc.area_mm2 == pytest.approx(9 * H * H)
    assert mc.diameter_mm == pytest.approx(2 * math.sqrt(9 * H * H / math.pi))
    assert mc.score == pytest.approx(0.9)
    assert mc.bbox_px == (10, 20, 12, 22)
    assert mc.contrast is None  # no image given
    assert mc.cluster_id is None


def test_large_component_is_reported_and_kept_out_of_clusters() -> None:
    shape = (200, 400)
    mask = _chain(shape, 5, 40)  # a valid cluster of five 2x2 MCs, 2.8 mm apart
    mask[120:160, 100:140] = True  # 40x40 px = 7.84 mm^2 -> diameter 3.16 mm > 2 mm
    prob = mask.astype(np.float32)
    f = extract_findings(prob, mask, H)
    assert len(f.large) == 1 and f.large[0].large and f.large[0].diameter_mm > 2.0
    assert len(f.mcs) == 5 and len(f.clusters) == 1
    assert f.large[0].id not in f.clusters[0].mc_ids
    # a large component inside the cluster's reach does not join it or bridge it
    f2 = extract_findings(prob, mask, H, cfg=FindingsConfig(cluster_min_mcs=6))
    assert f2.clusters == ()


def test_cluster_needs_min_members_and_links() -> None:
    shape = (100, 600)
    step_in = int(4.0 / H)  # 57 px: nearest pixels 55 px = 3.85 mm apart
    step_out = int(6.0 / H)  # 85 px: 83 px = 5.8 mm
    for n, step, expected in ((5, step_in, 1), (4, step_in, 0), (5, step_out, 0)):
        m = _chain(shape, n, step)
        f = extract_findings(m.astype(np.float32), m, H)
        assert len(f.clusters) == expected, (n, step)
        assert f.flagged == bool(expected)


def test_links_use_nearest_pixels_with_inclusive_boundary() -> None:
    spacing = 0.1  # link 5 mm = 50 px exactly
    shape = (40, 800)
    for gap, linked in ((50, True), (51, False)):
        m = np.zeros(shape, dtype=bool)
        for i in range(5):  # bars 11 px long: centroids 60/61 px apart, nearest pixels `gap` px apart
            c0 = 5 + i * (10 + gap)
            m[20, c0 : c0 + 11] = True
        f = extract_findings(m.astype(np.float32), m, spacing)
        assert (len(f.clusters) == 1) is linked, gap
        if linked:
            assert f.clusters[0].n_mcs == 5
            # extent = farthest member pixels, radius = farthest member pixel from the centroid
            span_px = 4 * (10 + gap) + 10  # first to last pixel centre
            assert f.clusters[0].extent_mm == pytest.approx(span_px * spacing)
            assert f.clusters[0].radius_mm == pytest.approx(span_px / 2 * spacing)


def test_regional_cluster_is_labelled_not_dropped() -> None:
    shape = (60, 700)
    step = int(4.5 / H)  # 64 px
    m = _chain(shape, 6, step)  # extent ~(5*64 + 1) px = 22.5 mm > 20 mm
    f = extract_findings(m.astype(np.float32), m, H)
    assert len(f.clusters) == 1
    c = f.clusters[0]
    assert c.regional and c.extent_mm == pytest.approx(math.hypot(5 * step + 1, 1) * H)
    assert f.flagged  # regional clusters flag like any other
    m5 = _chain(shape, 5, step)  # extent 18 mm
    assert not extract_findings(m5.astype(np.float32), m5, H).clusters[0].regional


def test_cluster_score_is_mean_of_top_k_and_flag_threshold_inclusive() -> None:
    shape = (60, 600)
    m = _chain(shape, 7, 50)
    lab, n = label_components(m)
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], dtype=np.float32)  # by label
    prob = scores[lab].astype(np.float32)
    prob[~m] = 0.0
    f = extract_findings(prob, m, H)
    c = f.clusters[0]
    assert c.score == pytest.approx(np.mean([0.3, 0.4, 0.5, 0.6, 0.7]))
    assert f.flagged  # 0.5 >= 0.5
    assert not extract_findings(prob, m, H, cfg=FindingsConfig(threshold=0.51)).flagged
    assert extract_findings(prob, m, H, cfg=FindingsConfig(cluster_score_top_k=2)).clusters[0].score == pytest.approx(0.65)
    assert all(mc.cluster_id == 1 for mc in f.mcs) and c.mc_ids == tuple(range(1, 8))
    assert c.bbox_px == (50, 20, 51, 20 + 6 * 50 + 1)


def test_contrast_is_mean_inside_minus_ring_median_excluding_other_mcs() -> None:
    shape = (40, 40)
    image = np.full(shape, 0.2, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[18:21, 18:21] = True
    image[18:21, 18:21] = 1.0
    image[15, 19] = 5.0  # a ring pixel (distance 3): one bright outlier barely moves the median
    mask[23, 20] = True  # another MC in the ring (distance 3): excluded from the ring
    image[23, 20] = 9.0
    f = extract_findings(image, mask, H, image=image)
    big = next(m for m in f.mcs if m.area_px == 9)
    assert big.contrast == pytest.approx(0.8)
    small = next(m for m in f.mcs if m.area_px == 1)
    assert small.contrast == pytest.approx(9.0 - 0.2)


def _brute_ring_median(labels: np.ndarray, k: int, image: np.ndarray) -> float:
    d = ndi.distance_transform_edt(labels != k)
    ring = (d > RING_INNER_PX) & (d <= RING_OUTER_PX) & (labels == 0)
    return float(np.median(image[ring])) if ring.any() else math.nan


def _brute_groups(labels: np.ndarray, n: int, link_px: float) -> np.ndarray:
    pts = [np.argwhere(labels == k + 1) for k in range(n)]
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            dmin = np.sqrt(((pts[i][:, None, :] - pts[j][None, :, :]) ** 2).sum(-1)).min()
            adj[i, j] = adj[j, i] = dmin <= link_px + 1e-9
    return connected_components(adj, directed=False)[1]


def test_clusters_and_contrast_match_brute_force_on_random_masks() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        shape = (90, 110)
        mask = rng.random(shape) > 0.985
        # elongated blobs so centroid and nearest-pixel links differ
        mask |= ndi.binary_dilation(rng.random(shape) > 0.997, structure=np.ones((1, 7)))
        image = rng.random(shape).astype(np.float32)
        spacing = 0.8  # link 5 mm = 6.25 px: many separate groups
        cfg = FindingsConfig(cluster_min_mcs=2, large_diameter_mm=100.0)
        f = extract_findings(image, mask, spacing, image=image, cfg=cfg)
        labels, n = label_components(mask)
        groups = _brute_groups(labels, n, cfg.cluster_link_mm / spacing)
        got = {mc.id: mc.cluster_id for mc in f.mcs}
        for k in range(n):
            same = np.flatnonzero(groups == groups[k])
            if same.size >= 2:
                assert got[k + 1] is not None
                assert {got[j + 1] for j in same} == {got[k + 1]}
            else:
                assert got[k + 1] is None
        for mc in f.mcs[:40]:
            want = float(image[labels == mc.id].mean()) - _brute_ring_median(labels, mc.id, image)
            if math.isnan(want):
                assert mc.contrast is None
            else:
                assert mc.contrast == pytest.approx(want, abs=1e-6)


def test_component_pixels_boundary_flags() -> None:
    m = np.zeros((7, 7), dtype=bool)
    m[1:6, 1:6] = True
    cp = component_pixels(*label_components(m))
    interior = {(r, c) for r in range(2, 5) for c in range(2, 5)}
    for r, c, b in zip(cp.rows, cp.cols, cp.boundary):
        assert b == ((int(r), int(c)) not in interior)


def test_to_dict_is_json_ready_with_units_in_keys() -> None:
    m = _chain((60, 400), 5, 40)
    f = extract_findings(m.astype(np.float32), m, H, image=m.astype(np.float32), to_input=lambda p: p + 1.0)
    d = json.loads(json.dumps(f.to_dict()))
    c = d["clusters"][0]
    assert {"centroid_mm", "centroid_input_px", "centroid_canonical_px", "radius_mm", "extent_mm",
            "bbox_input_px", "bbox_canonical_px"} <= set(c)
    assert c["bbox_input_px"] == [51.0, 21.0, 52.0, 21.0 + 4 * 40 + 1]
    mc = d["mcs"][0]
    assert {"area_mm2", "equivalent_diameter_mm", "centroid_input_px", "score", "contrast"} <= set(mc)
    assert d["settings"]["cluster_link_mm"] == 5.0


def test_input_bbox_under_a_flip_is_ordered() -> None:
    w = 400
    m = _chain((60, w), 5, 40)
    flip = lambda p: np.stack([p[:, 0], w - 1 - p[:, 1]], axis=1)  # noqa: E731
    c = extract_findings(m.astype(np.float32), m, H, to_input=flip).clusters[0]
    r0, c0, r1, c1 = c.bbox_input_px
    assert r0 <= r1 and c0 <= c1
    assert (c0, c1) == (w - 1 - c.bbox_px[3], w - 1 - c.bbox_px[1])


def test_canonical_wrapper_and_input_validation() -> None:
    m = _chain((60, 400), 5, 40)
    canon = SimpleNamespace(spacing_mm=H, image=m.astype(np.float32), points_to_input=lambda p: p * 3.0)
    f = extract_findings_canonical(m.astype(np.float32), m, canon)
    assert f.mcs[0].centroid_input_px == pytest.approx((3 * 50.5, 3 * 20.5))
    with pytest.raises(ValueError):
        extract_findings(np.zeros((3, 3)), np.zeros((3, 4), bool), H)
    with pytest.raises(ValueError):
        extract_findings(np.zeros((3, 3)), np.zeros((3, 3), bool), 0.0)


def test_full_mammogram_with_thousands_of_components_is_fast() -> None:
    rng = np.random.default_rng(0)
    shape = (3328, 2560)
    prob = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    centres = rng.integers(8, np.array(shape) - 8, size=(3000, 2))
    for r, c in centres:
        s = int(rng.integers(1, 4))
        mask[r : r + s, c : c + s] = True
        prob[r : r + s, c : c + s] = 0.5 + 0.5 * rng.random()
    image = rng.random(shape, dtype=np.float32)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    breast = (rr - shape[0] / 2) ** 2 / (shape[0] / 2) ** 2 + cc ** 2 / shape[1] ** 2 < 1  # a half ellipse
    t = time.perf_counter()
    f = extract_findings(prob, mask, H, image=image, to_input=lambda p: p, breast=breast)
    elapsed = time.perf_counter() - t
    assert len(f.mcs) + len(f.large) == label_components(mask)[1]
    assert any(mc.at_outline for mc in f.mcs) and not all(mc.at_outline for mc in f.mcs)
    assert elapsed < 3.0, f"extract_findings took {elapsed:.2f} s"


# --------------------------------------------------------------------------------------------------
# Outline rule: MCs near the skin line or the image edge stay out of clusters
# --------------------------------------------------------------------------------------------------
def _outline_case() -> np.ndarray:
    """A breast filling rows ≥ 40 of a 200×400 image."""
    breast = np.zeros((200, 400), dtype=bool)
    breast[40:, :] = True
    return breast


@pytest.mark.parametrize("row, near", [(41, True), (66, True), (67, False), (120, False)])
def test_mcs_within_the_outline_margin_are_kept_out_of_clusters(row: int, near: bool) -> None:
    breast = _outline_case()
    m = _chain(breast.shape, 6, 10, row=row, col0=100)  # centroid row = row + 0.5
    f = extract_findings(m.astype(np.float32), m, H, breast=breast)  # default margin 2 mm = 28.6 px
    # centroid row + 0.5 rounds half to even (66.5 → 66, 67.5 → 68); its distance to row 39 (outside the
    # breast) is 27 px = 1.89 mm (≤ 2 mm) for row 66 and 29 px = 2.03 mm for row 67
    assert [mc.at_outline for mc in f.mcs] == [near] * 6
    assert len(f.clusters) == (0 if near else 1)
    assert f.flagged is (not near)
    assert all(d["at_outline"] is near for d in f.to_dict()["mcs"])


def test_outline_rule_counts_the_image_edge_and_can_be_turned_off() -> None:
    breast = np.ones((200, 400), dtype=bool)
    m = _chain(breast.shape, 6, 10, row=5, col0=100)  # 0.4 mm from the top edge of the image
    assert extract_findings(m.astype(np.float32), m, H, breast=breast).clusters == ()
    off = extract_findings(m.astype(np.float32), m, H, breast=breast, cfg=FindingsConfig(outline_margin_mm=0.0))
    assert len(off.clusters) == 1 and not any(mc.at_outline for mc in off.mcs)
    no_breast = extract_findings(m.astype(np.float32), m, H)  # no breast mask: no outline, old behaviour
    assert len(no_breast.clusters) == 1


def test_outline_mcs_neither_join_nor_bridge_clusters() -> None:
    breast = np.zeros((300, 400), dtype=bool)
    breast[:, 50:] = True  # outside: columns 0-49
    off = FindingsConfig(outline_margin_mm=0.0)
    m = _chain(breast.shape, 5, 20, row=150, col0=100)
    m[150:152, 55:57] = True  # 0.49 mm from the outline, 44 px (3.1 mm) from the chain: links when allowed
    assert len(extract_findings(m.astype(np.float32), m, H, breast=breast, cfg=off).clusters[0].mc_ids) == 6
    f = extract_findings(m.astype(np.float32), m, H, breast=breast)
    assert len(f.clusters) == 1 and len(f.clusters[0].mc_ids) == 5
    assert [mc.at_outline for mc in f.mcs] == [True] + [False] * 5
    # three MCs above and two below, 79 px (5.5 mm) apart: only the outline MC between them links them
    bridge = _chain(breast.shape, 3, 10, row=110, col0=90) | _chain(breast.shape, 2, 10, row=190, col0=90)
    bridge[150:152, 55:57] = True
    assert len(extract_findings(bridge.astype(np.float32), bridge, H, breast=breast, cfg=off).clusters) == 1
    assert extract_findings(bridge.astype(np.float32), bridge, H, breast=breast).clusters == ()


def test_outline_distance_equals_the_distance_transform() -> None:
    """The KD-tree distance to the outline is the padded mask's Euclidean distance transform, exactly."""
    from mcgenref_fast.findings import outline_distance_px

    rng = np.random.default_rng(5)
    for trial in range(24):
        h, w = (int(v) for v in rng.integers(3, 60, 2))
        breast = ndi.binary_opening(rng.random((h, w)) < 0.75) if trial % 2 else rng.random((h, w)) < 0.5
        if trial % 6 == 0:
            breast[:] = True  # no outline inside the image: the image edge alone
        edt = ndi.distance_transform_edt(np.pad(breast, 1))[1:-1, 1:-1]
        pts = np.argwhere(np.ones((h, w), bool))
        np.testing.assert_allclose(outline_distance_px(pts, breast), edt[pts[:, 0], pts[:, 1]], atol=1e-9)


def test_breast_mask_of_another_shape_is_refused() -> None:
    m = np.zeros((20, 20), dtype=bool)
    with pytest.raises(ValueError, match="breast mask shape"):
        extract_findings(m.astype(np.float32), m, H, breast=np.ones((20, 21), dtype=bool))

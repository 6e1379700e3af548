"""Synthetic MC image formation (SPEC §2) and seed maps (§3): masks, sizes in mm, backgrounds, contrast,
full-field injection, the `mcgenref synth` command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from mcgenref_fast.synth import (MC, SynthConfig, inject_clusters, input_image_with_mcs, input_to_canonical_points,
                                 make_pair, procedural_background, psd_slope, rasterise, seed_map)
from mcgenref_fast.synth.background import RealNegativeSampler, powerlaw_noise, train_split_backgrounds
from mcgenref_fast.synth.formation import FormationParams, exact_mask, mc_signal
from mcgenref_fast.synth.fullfield import choose_sites, signal_to_input
from mcgenref_fast.synth.mc import mc_footprint, sample_mc, _bbox
from mcgenref_fast.synth.seeds import choose_seed_points, gaussian_dots

CFG = SynthConfig()
EIGHT = np.ones((3, 3), bool)


def _own_pixels(mc: MC, shape: tuple[int, int], spacing_mm: float) -> np.ndarray:
    """bool (H, W): pixels holding any subsample of `mc`."""
    r0, r1, c0, c1 = _bbox(mc, shape, spacing_mm)
    inside, _ = mc_footprint(mc, r0, r1, c0, c1, spacing_mm, CFG.supersample)
    own = np.zeros(shape, bool)
    s = CFG.supersample
    own[r0:r1, c0:c1] = inside.reshape(r1 - r0, s, c1 - c0, s).any(axis=(1, 3))
    return own


def test_config_holds_spec_defaults() -> None:
    c = SynthConfig()
    assert c.beta_psd == (2.5, 3.5) and c.n_mcs == (3, 30) and c.p_negative == 0.25
    assert c.cluster_radius_mm == (1.0, 6.0) and c.diameter_median_mm == 0.35 and c.diameter_sigma_log == 0.5
    assert c.diameter_clip_mm == (0.1, 1.5) and c.ellipse_max_aspect == 2.0 and c.supersample == 4
    assert c.psf_sigma_mm == (0.03, 0.08) and c.contrast_c0 == (0.15, 1.5) and c.noise_sigma == (0.0, 0.02)
    assert c.density_attenuation == 0.5 and c.local_mean_window_mm == 2.0 and c.mask_min_coverage == 0.5
    assert c.seed_sigma_px == 1.0 and c.seed_fraction == (0.3, 1.0) and c.spacing_mm == 0.07
    with pytest.raises(ValueError):
        SynthConfig(n_mcs=(5, 3))
    with pytest.raises(ValueError):
        SynthConfig(p_negative=1.5)


# ------------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("spacing_mm", [0.07, 0.1])
def test_masks_exact_every_mc_has_a_pixel(spacing_mm: float) -> None:
    patch = 96
    seen_negative = seen_positive = 0
    for s in range(40):
        pair = make_pair(np.random.default_rng(s), CFG, patch, spacing_mm)
        assert pair.mask.shape == (patch, patch) and pair.mask.dtype == bool
        assert pair.image.shape == (patch, patch) and pair.image.dtype == np.float32
        assert np.isfinite(pair.image).all() and pair.image.min() >= 0.0
        if not pair.mcs:
            seen_negative += 1
            assert not pair.mask.any(), "a negative patch must have an empty mask"
            continue
        seen_positive += 1
        assert len(pair.centres_px) == len(pair.diameters_mm) == len(pair.mcs)
        assert ((pair.centres_px >= 0) & (pair.centres_px <= patch - 1)).all()
        for mc in pair.mcs:
            assert (pair.mask & _own_pixels(mc, pair.mask.shape, spacing_mm)).any(), mc
        union = np.zeros_like(pair.mask)
        for mc in pair.mcs:
            union |= _own_pixels(mc, pair.mask.shape, spacing_mm)
        assert not (pair.mask & ~union).any(), "mask pixels outside every MC footprint"
    assert seen_negative > 0 and seen_positive > 0


def test_mask_is_half_coverage_plus_one_pixel_guarantee() -> None:
    shape, sp = (40, 40), 0.1
    tiny = MC((10.5, 10.5), 0.1, 0.0, 1.0)            # 0.1 mm on a pixel corner: coverage < 50 % everywhere
    big = MC((25.0, 25.0), 1.2, 0.4, 1.6)
    r = rasterise([tiny, big], shape, sp, CFG.supersample)
    m = exact_mask(r, CFG)
    assert r.best_cov[0] < 0.5 and m[tuple(r.best_px[0])]
    assert m.sum() == (r.coverage >= 0.5).sum() + 1
    # the big MC's mask area is its area in px within a perimeter's worth of rounding
    area_px = math.pi * (0.5 * 1.2 / sp) ** 2
    lab, _ = ndi.label(m, EIGHT)
    assert abs((lab == lab[25, 25]).sum() - area_px) < 0.5 * math.pi * 1.2 / sp


def test_mc_at_patch_edge_stays_inside() -> None:
    shape = (32, 32)
    mcs = [MC((0.0, 0.0), 1.5, 0.3, 2.0), MC((31.0, 16.0), 1.0, 0.0, 1.0)]
    r = rasterise(mcs, shape, 0.07, CFG.supersample)
    m = exact_mask(r, CFG)
    assert m.shape == shape and m[0, 0] and m[31, 16]


def test_bounding_box_holds_the_whole_mc() -> None:
    """Rasterising only in the bounding box loses no subsample (checked against a box 3 px larger)."""
    from mcgenref_fast.synth.mc import sample_cluster

    rng = np.random.default_rng(1)
    for sp in (0.07, 0.1):
        for mc in [m for _ in range(20) for m in sample_cluster(rng, CFG, (128, 128), sp).mcs]:
            r0, r1, c0, c1 = _bbox(mc, (128, 128), sp)
            big = (max(0, r0 - 3), min(128, r1 + 3), max(0, c0 - 3), min(128, c1 + 3))
            assert mc_footprint(mc, *big, sp, 4)[0].sum() == mc_footprint(mc, r0, r1, c0, c1, sp, 4)[0].sum()


# ------------------------------------------------------------------------------------------- sizes (mm)
@pytest.mark.parametrize("spacing_mm", [0.07, 0.1])
def test_equivalent_diameters_hold_in_mm(spacing_mm: float) -> None:
    """Isolated MCs (ellipses and star-convex blobs): measured mask equivalent diameter ≈ sampled d."""
    rng = np.random.default_rng(7)
    pitch = int(math.ceil(2.5 / spacing_mm))  # 2.5 mm apart: never touching
    k = 10
    shape = (k * pitch, k * pitch)
    mcs = [sample_mc(rng, CFG, ((i + 0.5) * pitch + rng.uniform(-0.5, 0.5), (j + 0.5) * pitch + rng.uniform(-0.5, 0.5)))
           for i in range(k) for j in range(k)]
    assert any(mc.irregular for mc in mcs) and any(not mc.irregular for mc in mcs)
    r = rasterise(mcs, shape, spacing_mm, CFG.supersample)
    m = exact_mask(r, CFG)
    lab, n = ndi.label(m, EIGHT)
    assert n == len(mcs)
    areas = ndi.sum(m, lab, np.arange(1, n + 1))
    ids = lab[r.best_px[:, 0], r.best_px[:, 1]]
    assert len(set(ids.tolist())) == n and ids.min() >= 1
    d = np.array([mc.diameter_mm for mc in mcs])
    measured = np.sqrt(4.0 * areas[ids - 1] / np.pi) * spacing_mm
    err = measured - d
    assert np.abs(err).max() <= 0.8 * spacing_mm, np.abs(err).max()     # sub-pixel for every MC
    assert abs(np.median(err / d)) < 0.02                                  # unbiased
    big = d >= 6 * spacing_mm                                               # ≥ 6 px across: within 8 %
    assert big.sum() >= 5 and np.abs(err[big] / d[big]).max() < 0.08


def test_sampled_sizes_follow_spec() -> None:
    from mcgenref_fast.synth.mc import sample_diameter_mm

    d = sample_diameter_mm(np.random.default_rng(0), CFG, 20000)
    assert d.min() >= 0.1 and d.max() <= 1.5
    assert abs(np.median(d) - 0.35) < 0.01
    mcs = [sample_mc(np.random.default_rng(i), CFG, (0.0, 0.0)) for i in range(300)]
    assert all(mc.aspect <= CFG.ellipse_max_aspect for mc in mcs)
    assert 0.35 < np.mean([mc.irregular for mc in mcs]) < 0.65


def test_cluster_geometry_and_min_gap() -> None:
    from mcgenref_fast.synth.mc import sample_cluster

    for s in range(30):
        cl = sample_cluster(np.random.default_rng(s), CFG, (400, 400), 0.07, (200.0, 200.0))
        assert CFG.cluster_radius_mm[0] <= cl.radius_mm <= CFG.cluster_radius_mm[1]
        assert 1 <= len(cl.mcs) <= CFG.n_mcs[1]
        c = np.array([m.centre_px for m in cl.mcs])
        r = np.array([m.diameter_mm / 2 for m in cl.mcs])
        # inside the cluster's ellipse (major semi-axis = radius)
        assert (np.hypot(*(c - 200.0).T) * 0.07 <= cl.radius_mm + 1e-9).all()
        d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1)) * 0.07
        need = CFG.mc_min_gap_ratio * (r[:, None] + r[None])
        off = ~np.eye(len(c), dtype=bool)
        assert (d[off] >= need[off] - 1e-9).all()


# ----------------------------------------------------------------------------------------- determinism
def test_make_pair_deterministic_by_seed() -> None:
    a = make_pair(np.random.default_rng(123), CFG, 128)
    b = make_pair(np.random.default_rng(123), CFG, 128)
    c = make_pair(np.random.default_rng(124), CFG, 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.centres_px, b.centres_px)
    assert not np.array_equal(a.image, c.image)


# ----------------------------------------------------------------------------------------- backgrounds
@pytest.mark.parametrize("beta", [2.5, 3.0, 3.5])
def test_procedural_background_psd_slope(beta: float) -> None:
    cfg = dataclasses.replace(CFG, beta_psd=(beta, beta), background_mean=(0.5, 0.5))
    rng = np.random.default_rng(int(beta * 10))
    slopes = [psd_slope(procedural_background(rng, (256, 256), 0.07, cfg)) for _ in range(6)]
    assert abs(float(np.mean(slopes)) - beta) <= 0.2, slopes
    # the anatomical component alone, periodic: no window needed
    slopes = [psd_slope(powerlaw_noise(rng, (256, 256), beta), hann=False) for _ in range(6)]
    assert abs(float(np.mean(slopes)) - beta) <= 0.2, slopes


def test_procedural_background_ranges() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        b = procedural_background(rng, (128, 160), 0.07, CFG)
        assert b.shape == (128, 160) and b.dtype == np.float32 and b.min() >= 0.0
        assert CFG.background_mean[0] - 0.1 < b.mean() < CFG.background_mean[1] + 0.1


# -------------------------------------------------------------------------------------------- contrast
def test_contrast_lower_over_dense_tissue() -> None:
    sp, shape = 0.07, (120, 240)
    bg = np.full(shape, 0.1, np.float32)
    bg[:, 120:] = 0.9                                  # fatty left half, dense right half
    mcs = [MC((60.0, 50.0), 0.5), MC((60.0, 190.0), 0.5)]
    r = rasterise(mcs, shape, sp, CFG.supersample)
    params = FormationParams(psf_sigma_mm=0.05, c0=0.8, noise_sigma=0.0)
    sig = mc_signal(bg, r.thickness_mm, params, sp, CFG)
    fatty, dense = sig[:, :120].max(), sig[:, 120:].max()
    expected = (1 - CFG.density_attenuation * 0.9) / (1 - CFG.density_attenuation * 0.1)
    assert dense < fatty
    assert dense / fatty == pytest.approx(expected, rel=1e-4)
    # the peak is c0 * (1 - 0.5 L) * blurred thickness (< d)
    assert fatty < 0.8 * 0.95 * 0.5 and fatty > 0.3 * 0.8 * 0.95 * 0.5


def test_local_mean_is_clipped() -> None:
    shape = (64, 64)
    bg = np.full(shape, 1.8, np.float32)               # brighter than the 99.8 % percentile
    r = rasterise([MC((32.0, 32.0), 0.5)], shape, 0.07, CFG.supersample)
    sig = mc_signal(bg, r.thickness_mm, FormationParams(0.05, 1.0, 0.0), 0.07, CFG)
    bg1 = np.full(shape, 1.0, np.float32)
    assert np.allclose(sig, mc_signal(bg1, r.thickness_mm, FormationParams(0.05, 1.0, 0.0), 0.07, CFG))


def test_noise_is_signal_dependent() -> None:
    from mcgenref_fast.synth.formation import add_noise

    x0 = np.concatenate([np.full((200, 100), 0.04, np.float32), np.full((200, 100), 0.81, np.float32)], axis=1)
    x = add_noise(x0, 0.02, np.random.default_rng(0))
    s_lo, s_hi = (x - x0)[:, :100].std(), (x - x0)[:, 100:].std()
    assert s_lo == pytest.approx(0.02 * 0.2, rel=0.1) and s_hi == pytest.approx(0.02 * 0.9, rel=0.1)


# ------------------------------------------------------------------------------------------- seed maps
def test_seed_map_peaks_at_chosen_centres() -> None:
    cfg = dataclasses.replace(CFG, spurious_seed_mean=0.0)
    centres = np.array([[10.2, 12.7], [30.0, 40.0], [50.6, 8.4], [20.0, 55.0], [44.0, 44.0]])
    for s in range(20):
        rng = np.random.default_rng(s)
        pts = choose_seed_points(centres, (64, 64), np.random.default_rng(s), cfg)
        smap = seed_map(centres, (64, 64), rng, cfg)
        assert smap.dtype == np.float32 and smap.max() == 1.0 and smap.min() >= 0.0
        ones = np.argwhere(smap == 1.0)
        assert {tuple(p) for p in ones} == {tuple(p) for p in pts}
        assert {tuple(p) for p in ones} <= {tuple(p) for p in np.rint(centres).astype(int)}
        assert math.ceil(0.3 * len(centres)) - 1 <= len(ones) <= len(centres)
    dots = gaussian_dots(np.array([[5, 5], [5, 7]]), (12, 12))
    assert dots[5, 5] == 1.0 and dots[5, 7] == 1.0
    assert dots[5, 6] == pytest.approx(math.exp(-0.5)) and dots[6, 5] == pytest.approx(math.exp(-0.5))


def test_seed_map_spurious_and_empty() -> None:
    cfg = dataclasses.replace(CFG, spurious_seed_mean=3.0)
    counts = [int((seed_map(np.zeros((0, 2)), (64, 64), np.random.default_rng(s), cfg) == 1.0).sum()) for s in range(30)]
    assert max(counts) > 0
    cfg0 = dataclasses.replace(CFG, spurious_seed_mean=0.0)
    assert not seed_map(np.zeros((0, 2)), (64, 64), np.random.default_rng(0), cfg0).any()


# -------------------------------------------------------------------------------------- full field
class FakeCanonical:
    """Stand-in for canonical.CanonicalImage: an input at 0.1 mm, upsampled to 0.07 mm and flipped L-R."""

    def __init__(self, input_image: np.ndarray, input_spacing_mm: float = 0.1, flipped: bool = True) -> None:
        from skimage.transform import resize

        self.input_shape = input_image.shape
        self.input_spacing_mm, self.spacing_mm, self.flipped_lr = input_spacing_mm, 0.07, flipped
        self.f = input_spacing_mm / self.spacing_mm
        shape = tuple(int(round(n * self.f)) for n in input_image.shape)
        img = resize(input_image, shape, order=1, preserve_range=True).astype(np.float32)
        self.lo, self.hi = 100.0, 1100.0
        self.image = np.maximum(0, (img - self.lo) / (self.hi - self.lo)).astype(np.float32)
        self.image = self.image[:, ::-1].copy() if flipped else self.image
        self.breast_mask = self.image > 0.05

    def points_to_input(self, rc: np.ndarray) -> np.ndarray:
        rc = np.asarray(rc, np.float64).reshape(-1, 2)
        out = (rc + 0.5) / self.f - 0.5
        if self.flipped_lr:
            out[:, 1] = (self.input_shape[1] - 1) - out[:, 1]
        return out

    def _canon_to_input_index(self) -> tuple[np.ndarray, np.ndarray]:
        rr, cc = np.mgrid[0:self.image.shape[0], 0:self.image.shape[1]]
        p = np.rint(self.points_to_input(np.stack([rr.ravel(), cc.ravel()], 1))).astype(np.int64)
        p[:, 0] = np.clip(p[:, 0], 0, self.input_shape[0] - 1)
        p[:, 1] = np.clip(p[:, 1], 0, self.input_shape[1] - 1)
        return p[:, 0] * self.input_shape[1] + p[:, 1], rr

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        flat, _ = self._canon_to_input_index()
        out = np.zeros(self.input_shape[0] * self.input_shape[1], bool)
        out[flat[np.asarray(mask).ravel()]] = True
        return out.reshape(self.input_shape)

    def prob_to_input(self, prob: np.ndarray) -> np.ndarray:
        flat, _ = self._canon_to_input_index()
        n = self.input_shape[0] * self.input_shape[1]
        s = np.bincount(flat, np.asarray(prob, np.float64).ravel(), n)
        c = np.bincount(flat, None, n)
        return (s / np.maximum(c, 1)).reshape(self.input_shape).astype(np.float32)


def _fake_input(shape: tuple[int, int] = (300, 260)) -> np.ndarray:
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    breast = (rr - shape[0] / 2) ** 2 / (0.45 * shape[0]) ** 2 + (cc - shape[1]) ** 2 / (0.9 * shape[1]) ** 2 < 1
    return np.where(breast, 600.0 + 0.5 * cc, 0.0).astype(np.float32)   # chest wall on the right


def _check_alignment(can, inj, input_image: np.ndarray) -> None:
    assert inj.mask_input.shape == tuple(input_image.shape)
    added = input_image_with_mcs(input_image, can, inj) - input_image
    assert added.min() >= -1e-3
    lab, n = ndi.label(inj.mask_input, EIGHT)
    assert n >= 1
    for cl in inj.clusters:
        for mc, cin in zip(cl.mcs, cl.mc_centres_input_px):
            r, c = np.rint(cin).astype(int)
            win = (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2))
            assert inj.mask_input[win].any(), (mc, cin)          # the mask sits on the MC, in the input grid
            assert added[win].max() > 0                            # and so does the added intensity
    # the intensity was added where the mask is: most of it inside the (dilated) input mask
    near = ndi.binary_dilation(inj.mask_input, EIGHT, iterations=2)
    assert added[near].sum() > 0.9 * added.sum()


def test_full_field_injection_aligns_with_input_grid_fake() -> None:
    img = _fake_input()
    can = FakeCanonical(img)
    sites_in = np.array([[150.0, 200.0], [90.0, 150.0]])
    rng = np.random.default_rng(5)
    inj = inject_clusters(can, sites_in, rng, CFG, sites_in="input")
    got = np.array([cl.site_input_px for cl in inj.clusters])
    assert np.allclose(got, sites_in, atol=1e-6)
    assert np.allclose(can.points_to_input(input_to_canonical_points(can, sites_in)), sites_in)
    assert all(len(cl.mcs) >= CFG.n_mcs[0] for cl in inj.clusters)
    for cl in inj.clusters:   # every MC centre lies in the breast
        for mc in cl.mcs:
            assert can.breast_mask[int(round(mc.centre_px[0])), int(round(mc.centre_px[1]))]
    _check_alignment(can, inj, img)
    d = inj.to_dict()
    assert d["n_mcs"] == sum(len(c.mcs) for c in inj.clusters)
    json.dumps(d, default=float)


def test_choose_sites_inside_breast() -> None:
    can = FakeCanonical(_fake_input((500, 400)))
    sites = choose_sites(can, 3, np.random.default_rng(0), CFG)
    assert len(sites) >= 1
    dist = ndi.distance_transform_edt(can.breast_mask)
    assert all(dist[int(r), int(c)] >= CFG.cluster_radius_mm[1] / 0.07 for r, c in sites)


def test_full_field_injection_with_real_canonical(tmp_path: Path) -> None:
    canonical = pytest.importorskip("mcgenref_fast.canonical")
    io_mod = pytest.importorskip("mcgenref_fast.io")
    if not hasattr(io_mod, "read_mammogram") or not hasattr(canonical, "to_canonical"):
        pytest.skip("io.read_mammogram / canonical.to_canonical not available yet")
    from PIL import Image

    img = _fake_input((400, 330))
    noise = np.random.default_rng(0).normal(0, 5, img.shape)
    png = tmp_path / "ff.png"
    Image.fromarray(np.clip(img + noise * (img > 0), 0, 65535).astype(np.uint16)).save(png)
    mammo = io_mod.read_mammogram(png, spacing_mm=0.1)
    can = canonical.to_canonical(mammo)
    sites = choose_sites(can, 2, np.random.default_rng(1), CFG)
    assert len(sites) >= 1
    inj = inject_clusters(can, sites, np.random.default_rng(2), CFG)
    _check_alignment(can, inj, mammo.image)
    # canonical sites map to the input and back
    pin = can.points_to_input(sites)
    assert np.allclose(input_to_canonical_points(can, pin), sites, atol=1e-6)
    assert signal_to_input(can, inj.signal).shape == mammo.image.shape


# ---------------------------------------------------------------------------------- real negatives
def _disc_canonical(shape: tuple[int, int] = (400, 300)):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    breast = (rr - 200) ** 2 + cc ** 2 < 280 ** 2
    rng = np.random.default_rng(0)
    image = np.where(breast, 0.4 + 0.05 * rng.standard_normal(shape), 0.0).astype(np.float32)
    return type("Can", (), {"image": image, "breast_mask": breast})()


def test_real_negative_sampler_patches_inside_breast() -> None:
    can = _disc_canonical()
    sampler = RealNegativeSampler.from_canonical([can])
    rng = np.random.default_rng(0)
    for _ in range(20):
        patch = sampler.sample(rng, 64)
        assert patch.shape == (64, 64) and patch.dtype == np.float32
        assert patch.min() > 0.05, "a patch reached outside the breast"
    p1 = sampler.sample(np.random.default_rng(9), 64, spacing_mm=0.1)   # 92 canonical px resampled to 64
    assert p1.shape == (64, 64) and p1.min() > 0.05
    import pickle

    clone = pickle.loads(pickle.dumps(sampler))
    assert np.array_equal(clone.sample(np.random.default_rng(4), 64), sampler.sample(np.random.default_rng(4), 64))


def test_train_split_backgrounds_only_train(shared_data: Path) -> None:
    rows = train_split_backgrounds(shared_data)
    import csv

    with (shared_data / "splits.csv").open() as fh:
        split = {shared_data / r["path"]: r["split"] for r in csv.DictReader(fh)}
    assert rows and all(split[p] == "train" for p, _ in rows)
    assert all(p.is_file() and s > 0 for p, s in rows)
    assert not any("BCC_2" in p.name or "22580192" in p.name for p, _ in rows)


@pytest.mark.data
def test_real_negative_sampler_on_train_ffdm(shared_data: Path) -> None:
    pytest.importorskip("mcgenref_fast.canonical")
    io_mod = pytest.importorskip("mcgenref_fast.io")
    if not hasattr(io_mod, "read_mammogram"):
        pytest.skip("io.read_mammogram not available yet")
    rows = [r for r in train_split_backgrounds(shared_data) if r[0].name.startswith("BCC_1_L")]
    sampler = RealNegativeSampler(rows)
    pair = make_pair(np.random.default_rng(0), CFG, 128, 0.07, sampler.sample(np.random.default_rng(1), 128))
    assert pair.image.shape == (128, 128) and np.isfinite(pair.image).all()
    assert 0.0 < float(np.median(pair.background)) < 1.5


# -------------------------------------------------------------------------------------------- command
def test_synth_command_writes_pairs_and_preview(tmp_path: Path) -> None:
    from mcgenref_fast.commands import synth as cmd
    from mcgenref_fast.synth import SyntheticPairDataset

    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--out", str(tmp_path / "o"), "-n", "3", "--patch", "48", "--seed", "4"])
    assert args.func(args) == 0
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["pair_000000.npz", "pair_000001.npz", "pair_000002.npz", "preview.png", "synth.json"]
    ds = SyntheticPairDataset(3, 4, 48)
    for i in range(3):
        z = np.load(tmp_path / "o" / f"pair_{i:06d}.npz")
        pair, seeds = ds.pair(i)
        assert np.array_equal(z["image"], pair.image) and np.array_equal(z["mask"].astype(bool), pair.mask)
        assert np.array_equal(z["seeds"], seeds)
    from PIL import Image

    with Image.open(tmp_path / "o" / "preview.png") as im:
        assert im.size[0] > 48 * 3


def _run_full_field_command(tmp_path: Path) -> None:
    from PIL import Image

    from mcgenref_fast.commands import synth as cmd

    img = _fake_input((420, 340))
    img = img + np.random.default_rng(0).normal(0, 5, img.shape) * (img > 0)
    src = np.clip(img, 0, 65535).astype(np.uint16)
    png = tmp_path / "in.png"
    Image.fromarray(src).save(png)
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--full-field", str(png), "--spacing", "0.1", "--out", str(tmp_path / "ff"),
                              "--sites", "2", "--seed", "3"])
    assert args.func(args) == 0
    out = np.asarray(Image.open(tmp_path / "ff" / "image.png")).astype(np.int64)
    mask = np.asarray(Image.open(tmp_path / "ff" / "mask.png")) > 0
    rec = json.loads((tmp_path / "ff" / "injected.json").read_text())
    assert out.shape == src.shape and mask.shape == src.shape
    assert rec["n_clusters"] >= 1 and rec["n_mcs"] >= 1 and rec["mask_pixels_input"] == int(mask.sum())
    added = out - src.astype(np.int64)
    assert added.min() >= -1 and added[mask].mean() > 0
    for cl in rec["clusters"]:
        for mc in cl["mcs"]:
            r, c = np.rint(mc["centre_input_px"]).astype(int)
            assert mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any()
    assert (tmp_path / "ff" / "preview.png").is_file()


def test_synth_command_full_field_with_stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's own logic, with FakeCanonical standing in for io + canonical."""
    import sys
    import types

    from PIL import Image

    def read_mammogram(path, spacing_mm=None):
        meta = types.SimpleNamespace(spacing_mm=spacing_mm, spacing_source="user")
        return types.SimpleNamespace(image=np.asarray(Image.open(path)).astype(np.float32), meta=meta)

    def to_canonical(m):
        return FakeCanonical(m.image, m.meta.spacing_mm)

    monkeypatch.setitem(sys.modules, "mcgenref_fast.io", types.SimpleNamespace(read_mammogram=read_mammogram))
    monkeypatch.setitem(sys.modules, "mcgenref_fast.canonical", types.SimpleNamespace(to_canonical=to_canonical))
    _run_full_field_command(tmp_path)


def test_synth_command_full_field(tmp_path: Path) -> None:
    pytest.importorskip("mcgenref_fast.canonical")
    io_mod = pytest.importorskip("mcgenref_fast.io")
    if not hasattr(io_mod, "read_mammogram"):
        pytest.skip("io.read_mammogram not available yet")
    _run_full_field_command(tmp_path)


# --------------------------------------------------------------------------------------------------
# MCs on film: the MC layer sampled on the source's own grid (SynthConfig.match_source_sampling)
# --------------------------------------------------------------------------------------------------
def test_source_grid_keeps_a_flat_layer_and_blurs_a_speck() -> None:
    from mcgenref_fast.synth.pair import sample_on_source_grid

    b = np.full((128, 128), 0.3, np.float32)
    flat = sample_on_source_grid(b + 0.1, b, 0.07, 0.2)  # a constant layer passes unchanged
    np.testing.assert_allclose(flat, b + 0.1, atol=1e-5)
    speck = b.copy()
    speck[60:62, 60:62] += 0.4  # 0.14 mm speck
    film = sample_on_source_grid(speck, b, 0.07, 0.2)
    layer = film - b
    assert layer.max() < 0.25  # spread over a 0.2 mm pixel: lower peak ...
    assert (layer > 0.02).sum() > 4  # ... wider footprint
    assert abs(layer.sum() - 4 * 0.4) < 0.05 * 4 * 0.4  # the speck's integral is kept (area average, cubic back)
    assert film.min() >= 0.0 and film.dtype == np.float32


def test_make_pair_samples_mcs_on_a_film_grid_only_when_coarser() -> None:
    cfg = SynthConfig(p_negative=0.0)
    b = (0.4 + 0.02 * powerlaw_noise(np.random.default_rng(1), (96, 96), 3.0)).astype(np.float32)
    plain = make_pair(np.random.default_rng(7), cfg, 96, background=b)
    ffdm = make_pair(np.random.default_rng(7), cfg, 96, background=b, source_spacing_mm=0.08)  # < 1.25 × 0.07
    film = make_pair(np.random.default_rng(7), cfg, 96, background=b, source_spacing_mm=0.2)
    assert np.array_equal(plain.image, ffdm.image)
    assert np.array_equal(plain.mask, film.mask) and np.array_equal(plain.background, film.background)
    hp = lambda x: np.abs(np.diff(x - b, axis=1)).mean()  # pixel-to-pixel roughness of the MC layer
    assert hp(film.image) < 0.6 * hp(plain.image)


def test_dataset_uses_the_source_pitch_of_real_backgrounds() -> None:
    from mcgenref_fast.synth.dataset import draw_item

    can = _disc_canonical()
    can.input_spacing_mm = 0.2
    base = SynthConfig(p_real_background=1.0, p_negative=0.0)
    on = dataclasses.replace(base, match_source_sampling=True)
    sampler = RealNegativeSampler.from_canonical([can])
    patch, pitch = sampler.sample_with_source(np.random.default_rng(3), 64)
    assert pitch == 0.2 and np.array_equal(patch, sampler.sample(np.random.default_rng(3), 64))
    a, seeds_a = draw_item(5, 0, 64, base, sampler)
    c, seeds_c = draw_item(5, 0, 64, on, sampler)
    assert np.array_equal(a.mask, c.mask) and np.array_equal(seeds_a, seeds_c)  # same draws
    assert not np.array_equal(a.image, c.image)
    assert RealNegativeSampler.from_canonical([_disc_canonical()]).sample_with_source(
        np.random.default_rng(3), 64)[1] is None  # pitch unknown: nothing to match

"""Canonical form (SPEC §1): resampling, flip, normalisation, and the geometric way back."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from dicom_factory import breast_phantom
from mcgenref_fast.canonical import (
    CanonicalImage,
    area_weights,
    canonical_shape,
    resample,
    to_canonical,
)
from mcgenref_fast.config import CanonicalConfig
from mcgenref_fast.io import Mammogram, MammogramMeta

EIGHT = np.ones((3, 3), bool)


def _mammo(image: np.ndarray, spacing_mm: float, chest_wall: str = "left") -> Mammogram:
    image = np.asarray(image, np.float32)
    meta = MammogramMeta(path="synthetic", file_format="png", shape=image.shape, spacing_mm=spacing_mm, spacing_source="user",
                         chest_wall_side=chest_wall, flips=("lr",) if chest_wall == "right" else ())
    return Mammogram(image=image, meta=meta)


def _canonical_stub(input_shape: tuple[int, int], shape: tuple[int, int], flipped: bool) -> CanonicalImage:
    """A CanonicalImage of a given geometry (pixels irrelevant) for the inverse-mapping tests."""
    return CanonicalImage(image=np.zeros(shape, np.float32), breast_mask=np.zeros(shape, bool), spacing_mm=0.07,
                          flipped_lr=flipped, input_shape=input_shape, input_spacing_mm=0.07 * shape[0] / input_shape[0],
                          lo=0.0, hi=1.0)


# ------------------------------------------------------------------------------------------ resampling
def test_canonical_shape_follows_spacing() -> None:
    assert canonical_shape((1000, 700), 0.07, 0.07) == (1000, 700)
    assert canonical_shape((1000, 700), 0.1, 0.07) == (1429, 1000)
    assert canonical_shape((1024, 1024), 0.2, 0.07) == (2926, 2926)
    assert canonical_shape((4432, 2864), 0.05, 0.07) == (3166, 2046)


@pytest.mark.parametrize("n_in, n_out", [(10, 5), (100, 71), (7, 3), (50, 49), (4432, 3166)])
def test_area_weights_are_exact_overlaps(n_in: int, n_out: int) -> None:
    w = area_weights(n_in, n_out).toarray().astype(np.float64)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-6)  # averages
    assert np.allclose(w.sum(axis=0), n_out / n_in, atol=1e-6)  # every input pixel counted exactly once in total
    assert (w >= 0).all()


def test_integer_factor_down_is_block_mean() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((60, 40)).astype(np.float32)
    out = resample(img, (30, 20))
    assert np.allclose(out, img.reshape(30, 2, 20, 2).mean(axis=(1, 3)), atol=1e-6)


def test_fractional_down_conserves_mass_and_constants() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((101, 77)).astype(np.float32)
    out = resample(img, (71, 54))
    assert out.sum() * (101 / 71) * (77 / 54) == pytest.approx(img.sum(), rel=1e-5)
    assert np.allclose(resample(np.full((101, 77), 3.5, np.float32), (71, 54)), 3.5, atol=1e-5)


def test_bicubic_up_keeps_constants_and_ramps() -> None:
    assert np.allclose(resample(np.full((20, 30), 2.0, np.float32), (57, 86)), 2.0, atol=1e-5)
    ramp = np.tile(np.arange(30, dtype=np.float32), (20, 1))
    up = resample(ramp, (40, 60))
    # bicubic reproduces a linear ramp away from the borders, at aligned pixel centres
    centres = (np.arange(60) + 0.5) * 30 / 60 - 0.5
    assert np.allclose(up[10, 6:-6], centres[6:-6], atol=1e-4)


# ------------------------------------------------------------------------------------- to_canonical
def test_flip_puts_chest_wall_left() -> None:
    right = breast_phantom(chest_wall="right", seed=2)
    c = to_canonical(_mammo(right, 0.07, "right"))
    assert c.flipped_lr and np.allclose(c.image, to_canonical(_mammo(right[:, ::-1], 0.07, "left")).image)
    left_half, right_half = c.breast_mask[:, : c.shape[1] // 2].sum(), c.breast_mask[:, c.shape[1] // 2 :].sum()
    assert left_half > 2 * right_half
    assert not to_canonical(_mammo(breast_phantom(seed=2), 0.07)).flipped_lr


def test_normalisation_uses_breast_percentiles_without_upper_clip() -> None:
    img = breast_phantom(seed=3, label=False).astype(np.float32)
    img[120, 40] = 20000.0  # a bright calcification-like pixel inside the breast
    c = to_canonical(_mammo(img, 0.07))
    vals = img[c.breast_mask]
    lo, hi = np.percentile(vals, [0.5, 99.8])
    assert (c.lo, c.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert np.allclose(c.image, np.maximum(0, (img - lo) / (hi - lo)), atol=1e-5)
    assert c.image.min() == 0.0 and c.image.max() > 5  # no upper clip
    assert c.image.dtype == np.float32 and c.breast_mask.dtype == bool


def test_spacing_and_metadata_recorded() -> None:
    img = breast_phantom((300, 200), seed=4)
    c = to_canonical(_mammo(img, 0.1))
    assert c.shape == canonical_shape((300, 200), 0.1, 0.07) == (429, 286)
    assert (c.spacing_mm, c.input_spacing_mm, c.input_shape) == (0.07, 0.1, (300, 200))
    c2 = to_canonical(_mammo(img, 0.1), CanonicalConfig(spacing_mm=0.1))
    assert c2.shape == (300, 200)


def test_fast_on_a_full_field_image() -> None:
    """SPEC: a 2560 x 3328 image at 0.07 mm goes to canonical form well under a second."""
    rng = np.random.default_rng(0)
    big = np.kron(breast_phantom((416, 320), seed=5, label=False), np.ones((8, 8), np.uint16)).astype(np.float32)
    big += rng.normal(0, 5, big.shape).astype(np.float32)
    m = _mammo(big, 0.07)
    to_canonical(m)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    to_canonical(m)
    elapsed = time.perf_counter() - t0
    assert big.shape == (3328, 2560) and elapsed < 2.0, f"{elapsed:.2f} s"  # ~0.2 s alone; slack for a busy CI box


# -------------------------------------------------------------------------------- the way back (inverse)
@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("input_shape, shape", [((90, 70), (63, 49)), ((100, 80), (50, 40)), ((63, 49), (90, 70)), ((40, 30), (120, 90)), ((55, 45), (55, 45))])
def test_mask_to_input_keeps_every_single_pixel_component(input_shape, shape, flipped: bool) -> None:
    can = _canonical_stub(input_shape, shape, flipped)
    rng = np.random.default_rng(sum(shape))
    mask = np.zeros(shape, bool)
    # isolated single pixels two apart (8-connected components of one pixel), including corners
    cand = np.argwhere(np.ones(shape, bool))[:: 7]
    for r, c in cand[rng.permutation(len(cand))[:40]]:
        if not mask[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3].any():
            mask[r, c] = True
    mask[0, 0] = mask[-1, -1] = True
    out = can.mask_to_input(mask)
    assert out.shape == input_shape and out.dtype == bool
    _, n_can = ndi.label(mask, EIGHT)
    _, n_in = ndi.label(out, EIGHT)
    if input_shape[0] >= shape[0]:
        assert n_in == n_can  # enlarging: components neither lost nor merged
    else:
        assert 1 <= n_in <= n_can
    # each canonical pixel lands where points_to_input says
    for r, c in np.argwhere(mask):
        ri, ci = can.points_to_input(np.array([[r, c]]))[0]
        rr, cc = int(np.clip(np.floor(ri + 0.5), 0, input_shape[0] - 1)), int(np.clip(np.floor(ci + 0.5), 0, input_shape[1] - 1))
        assert out[max(rr - 1, 0) : rr + 2, max(cc - 1, 0) : cc + 2].any()


def test_mask_to_input_nearest_up_and_any_pixel_down_exact() -> None:
    up = _canonical_stub((6, 4), (3, 2), False)  # input twice finer
    m = np.array([[1, 0], [0, 0], [0, 1]], bool)
    assert np.array_equal(up.mask_to_input(m), np.kron(m, np.ones((2, 2), bool)))
    down = _canonical_stub((3, 2), (6, 4), True)  # input twice coarser, flipped
    m = np.zeros((6, 4), bool)
    m[5, 0] = True  # canonical bottom-left = input bottom-right
    expected = np.zeros((3, 2), bool)
    expected[2, 1] = True
    assert np.array_equal(down.mask_to_input(m), expected)


@pytest.mark.parametrize("input_shape, shape", [((90, 70), (63, 49)), ((40, 30), (120, 90))])
def test_thresholding_commutes_with_prob_to_input(input_shape, shape) -> None:
    can = _canonical_stub(input_shape, shape, True)
    prob = np.random.default_rng(3).random(shape).astype(np.float32)
    out = can.prob_to_input(prob)
    assert out.dtype == np.float32 and out.shape == input_shape
    for t in (0.5, 0.9, 0.99):
        assert np.array_equal(out >= t, can.mask_to_input(prob >= t))


def test_points_round_trip_and_pixel_centres() -> None:
    can = _canonical_stub((100, 80), (143, 114), True)
    pts = np.array([[0.0, 0.0], [142.0, 113.0], [50.3, 20.7]])
    back = can.points_to_canonical(can.points_to_input(pts))
    assert np.allclose(back, pts)
    # centre of the image maps to the centre; flipped: canonical col 0 is the input's last column side
    assert np.allclose(can.points_to_input(np.array([[71.0, 56.5]])), [[49.5, 39.5]], atol=1e-9)
    assert can.points_to_input(np.array([[0.0, 0.0]]))[0, 1] > 79


def test_inverse_rejects_wrong_shape() -> None:
    can = _canonical_stub((10, 10), (14, 14), False)
    with pytest.raises(ValueError, match="canonical shape"):
        can.mask_to_input(np.zeros((10, 10), bool))


# ------------------------------------------------------------------------------------------- real data
@pytest.mark.data
def test_inbreast_to_canonical_with_its_annotation(shared_data: Path) -> None:
    from mcgenref_fast.annotations import read_inbreast_xml, rasterise_rois
    from mcgenref_fast.io import read_mammogram

    m = read_mammogram(shared_data / "inbreast" / "22580192_5530d5782fc89dd7_MG_R_CC_ANON.png", spacing_mm=0.07)
    c = to_canonical(m)
    assert c.shape == (3328, 2560) and c.flipped_lr
    assert 0.2 < c.breast_mask.mean() < 0.8
    mass = read_inbreast_xml(shared_data / "inbreast" / "22580192.xml").masses[0]
    centre_can = c.points_to_canonical(np.array([mass.centroid_rc_px]))[0]
    assert c.breast_mask[int(round(centre_can[0])), int(round(centre_can[1]))]  # the mass lies in the breast
    assert c.image[c.breast_mask].mean() > 5 * c.image[~c.breast_mask].mean() + 0.1
    # annotation mask -> canonical (flip) -> back to the input is the identity at equal spacing
    ann = rasterise_rois([mass], m.image.shape)
    assert np.array_equal(c.mask_to_input(ann[:, ::-1]), ann)

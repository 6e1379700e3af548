"""Breast mask (SPEC §1): threshold + largest component + holes filled; labels touching no tissue out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from dicom_factory import breast_phantom
from mcgenref_fast.breast_mask import breast_mask, chest_wall_side, chest_wall_side_of_image

EIGHT = np.ones((3, 3), bool)


def _phantom_truth(shape: tuple[int, int], chest_wall: str) -> np.ndarray:
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    dist = cc if chest_wall == "left" else (w - 1) - cc
    return ((rr - h / 2) / (0.42 * h)) ** 2 + (dist / (0.62 * w)) ** 2 < 1.0


@pytest.mark.parametrize("shape", [(240, 180), (1300, 1000)])
@pytest.mark.parametrize("wall", ["left", "right"])
def test_phantom_mask_matches_breast_and_excludes_label(shape: tuple[int, int], wall: str) -> None:
    img = breast_phantom(shape, chest_wall=wall, seed=1)
    mask = breast_mask(img)
    truth = _phantom_truth(shape, wall)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.97, iou
    label = img >= 4000
    assert label.any() and not (mask & label).any()  # the burned-in label is outside
    assert ndi.label(mask, EIGHT)[1] == 1
    assert not (ndi.binary_fill_holes(mask) & ~mask).any()


def test_holes_are_filled() -> None:
    img = breast_phantom((300, 220), seed=2, label=False)
    img[130:160, 40:70] = 30  # a dark region (e.g. a fatty lobule reading as background) inside the breast
    mask = breast_mask(img)
    assert mask[130:160, 40:70].all()


def test_only_the_largest_component_is_kept() -> None:
    img = breast_phantom((300, 220), seed=3, label=False)
    img[250:290, 180:215] = 1800  # a detached bright object (marker), not touching the breast
    mask = breast_mask(img)
    assert not mask[250:290, 180:215].any()


def test_invariant_to_scale_and_offset() -> None:
    img = breast_phantom((260, 200), seed=4).astype(np.float32)
    assert np.array_equal(breast_mask(img), breast_mask(3.0 * img + 1000.0))


def test_constant_image_gives_empty_mask() -> None:
    assert not breast_mask(np.full((50, 40), 7.0, np.float32)).any()


def test_nan_pixels_tolerated() -> None:
    img = breast_phantom((200, 150), seed=5).astype(np.float32)
    img[5, 5] = np.nan
    assert breast_mask(img).sum() > 0.2 * img.size


def test_chest_wall_side() -> None:
    assert chest_wall_side_of_image(breast_phantom(chest_wall="left")) == "left"
    assert chest_wall_side_of_image(breast_phantom(chest_wall="right")) == "right"
    sym = np.zeros((50, 50), bool)
    sym[10:40, 10:40] = True
    assert chest_wall_side(sym) is None and chest_wall_side(np.zeros((5, 5), bool)) is None


@pytest.mark.data
@pytest.mark.parametrize("name", ["BCC_1_L_CC.png", "BCC_2_R_CC.png"])
def test_ffdm_backgrounds_label_outside_and_chest_wall(shared_data: Path, name: str) -> None:
    img = np.array(Image.open(shared_data / "ffdm_backgrounds" / name)).astype(np.float32)
    mask = breast_mask(img)
    assert ndi.label(mask, EIGHT)[1] == 1 and 0.1 < mask.mean() < 0.7
    assert chest_wall_side(mask) == ("left" if "_L_" in name else "right")
    # the burned-in view label: bright pixels far (> 20 px) from the mask exist and were left out
    far = ~ndi.binary_dilation(mask, iterations=20)
    label = (img > np.median(img[mask])) & far
    assert label.sum() > 500
    # the mask reaches the chest-wall edge of the image over most of the breast's height
    edge = mask[:, 0] if "_L_" in name else mask[:, -1]
    assert edge.sum() > 0.5 * mask.any(axis=1).sum()


@pytest.mark.data
def test_mias_masks_one_component(shared_data: Path) -> None:
    for name in ("mdb003.png", "mdb006.png", "mdb209.png"):
        img = np.array(Image.open(shared_data / "mias" / "images" / name)).astype(np.float32)
        mask = breast_mask(img)
        assert ndi.label(mask, EIGHT)[1] == 1 and 0.1 < mask.mean() < 0.8, name
        assert img[mask].mean() > 3 * img[~mask].mean(), name

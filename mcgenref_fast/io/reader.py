"""`read_mammogram`: one entry point for DICOM, PNG, TIFF and PGM, chosen by the file's content.

The format is sniffed from the first bytes (a misnamed file is still read correctly, and a file that is
neither is refused before any parser runs); the pixels are then checked (non-empty, finite, not
constant), and the laterality / chest-wall side is settled against the image itself (SPEC §1).
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path

import numpy as np

from mcgenref_fast.breast_mask import chest_wall_side_of_image
from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io.dicom import read_dicom
from mcgenref_fast.io.meta import FileFormat, Mammogram, MammogramMeta
from mcgenref_fast.io.raster import read_raster

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NETPBM_MAGICS = (b"P2", b"P5", b"P3", b"P6")
_SANE_SPACING_MM = (0.02, 0.5)  # outside this, warn: likely µm or a typo


def sniff_format(path: str | Path) -> tuple[FileFormat, bool]:
    """(format, dicom_without_preamble) from the file's first bytes, not its name."""
    path = Path(path)
    if not path.exists():
        raise MammogramReadError(path, "no such file")
    if not path.is_file():
        raise MammogramReadError(path, "not a regular file (a directory?)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise MammogramReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise MammogramReadError(path, "empty file (0 bytes)")
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom", False
    if head.startswith(_PNG_MAGIC):
        return "png", False
    if head[:4] in _TIFF_MAGICS:
        return "tiff", False
    if head[:2] in _NETPBM_MAGICS and len(head) > 2 and head[2:3].isspace():
        return "pgm", False
    # A DICOM data set without the 128-byte preamble starts with a little-endian group 0002 or 0008 tag.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00":
        return "dicom", True
    raise MammogramReadError(path, "neither DICOM nor a PNG/TIFF/PGM image (unrecognised file content)")


def check_user_spacing(spacing_mm: float | None, path: Path) -> float | None:
    """A user spacing must be a positive finite number of mm; an implausible one is warned about."""
    if spacing_mm is None:
        return None
    try:
        value = float(spacing_mm)
    except (TypeError, ValueError) as exc:
        raise SpacingError(path, f"spacing {spacing_mm!r} is not a number of mm") from exc
    if not math.isfinite(value) or value <= 0:
        raise SpacingError(path, f"spacing {spacing_mm!r} mm must be a positive number")
    lo, hi = _SANE_SPACING_MM
    if not lo <= value <= hi:
        warnings.warn(f"{path}: spacing {value} mm is outside the usual {lo}-{hi} mm of mammograms (mm, not µm?)", stacklevel=3)
    return value


def check_pixels(image: np.ndarray, path: Path) -> None:
    """Refuse images that cannot be a mammogram: empty, non-finite values, or a single value."""
    if image.size == 0 or 0 in image.shape:
        raise MammogramReadError(path, f"zero-sized image {image.shape}")
    finite = np.isfinite(image)
    if not finite.all():
        raise MammogramReadError(path, f"{int(image.size - finite.sum())} NaN or infinite pixel values")
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise MammogramReadError(path, f"constant image (every pixel is {lo:g}): nothing to read")


def resolve_laterality(image: np.ndarray, meta: MammogramMeta) -> MammogramMeta:
    """Settle laterality and chest-wall side: the tag when it agrees with the pixels, else the pixels.

    Convention: an 'L' image holds the chest wall on the left of the array, an 'R' image on the right;
    the chest-wall side is the half of the image with more breast tissue.
    """
    pixel_side = chest_wall_side_of_image(image)
    tagged = meta.laterality
    laterality, source, side = tagged, meta.laterality_source, None
    if tagged in ("L", "R"):
        tag_side = "left" if tagged == "L" else "right"
        if pixel_side is None or pixel_side == tag_side:
            side = tag_side
        else:
            warnings.warn(
                f"{meta.path}: {meta.laterality_source} says {tagged} but the chest wall is on the image's {pixel_side}: using the pixels",
                stacklevel=3,
            )
            laterality, source, side = ("L" if pixel_side == "left" else "R"), "pixels", pixel_side
    elif pixel_side is not None:
        laterality, source, side = ("L" if pixel_side == "left" else "R"), "pixels", pixel_side
    else:
        warnings.warn(f"{meta.path}: laterality unknown (no tag, and the image does not show the chest-wall side): assuming chest wall left", stacklevel=3)
        laterality, source, side = None, None, "left"
    return dataclasses.replace(
        meta,
        laterality=laterality,
        laterality_source=source,
        chest_wall_side=side,
        flips=("lr",) if side == "right" else (),
    )


def read_mammogram(path: str | os.PathLike[str], spacing_mm: float | None = None, allow_for_processing: bool = False) -> Mammogram:
    """Read a mammogram (DICOM MG, or PNG/TIFF/PGM with `spacing_mm`) as dense-bright float32 (SPEC §1).

    `spacing_mm` given by the user overrides the file's spacing (source 'user'). Raises
    MammogramReadError / SpacingError whose message names the file and the problem.
    """
    path = Path(path)
    user_spacing = check_user_spacing(spacing_mm, path)
    file_format, no_preamble = sniff_format(path)
    if file_format == "dicom":
        image, meta = read_dicom(path, user_spacing, allow_for_processing, force=no_preamble)
    else:
        image, meta = read_raster(path, file_format, user_spacing)
    check_pixels(image, path)
    meta = resolve_laterality(image, meta)
    return Mammogram(image=np.ascontiguousarray(image, dtype=np.float32), meta=meta)

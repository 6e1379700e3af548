"""PNG / TIFF / PGM mammograms (Pillow): greyscale pixels as float32, spacing supplied by the user.

Rasters carry no trustworthy pixel spacing, so `spacing_mm` is required (SpacingError otherwise). The
size is checked from the header before any pixel is decoded; 16-bit files keep all 16 bits.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io.meta import MAX_PIXELS, FileFormat, MammogramMeta

_BITS_BY_MODE = {"L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _pgm_bits(path: Path) -> int | None:
    """Bits implied by a PGM header's maxval ('P5\\n W H\\n MAXVAL'), or None when unreadable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    head = re.sub(rb"#[^\n]*\n", b" ", head)
    fields = head[2:].split(maxsplit=3)
    try:
        return max(1, int(fields[2]).bit_length())
    except (IndexError, ValueError):
        return None


def _to_grey(image: Image.Image, path: Path) -> np.ndarray:
    """One greyscale channel as a numpy array (colour with unequal channels is refused)."""
    mode = image.mode
    if mode == "1":
        raise MammogramReadError(path, "1-bit (bilevel) image: not a mammogram")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    arr = np.array(image)
    if mode in ("LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        channels = arr[..., : (1 if mode == "LA" else 3)]
        if mode in ("RGB", "RGBA") and not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
            raise MammogramReadError(path, f"colour image (mode {mode}): a mammogram must be greyscale")
        if mode not in ("LA", "RGB", "RGBA"):
            raise MammogramReadError(path, f"unsupported image mode {mode}: a mammogram must be greyscale")
        arr = channels[..., 0]
    if arr.ndim != 2:
        raise MammogramReadError(path, f"unsupported image mode {mode} (decoded shape {arr.shape})")
    return arr


def read_raster(path: Path, file_format: FileFormat, spacing_mm: float | None) -> tuple[np.ndarray, MammogramMeta]:
    """Read a PNG/TIFF/PGM mammogram as float32 (values as stored); `spacing_mm` is required."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise MammogramReadError(path, f"image too large (limit {MAX_PIXELS / 1e6:.0f} megapixels): {exc}") from exc
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise MammogramReadError(path, f"not a readable {file_format.upper()} image ({exc})") from exc
    except OSError as exc:
        raise MammogramReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise MammogramReadError(path, f"zero-sized image ({width}x{height})")
        if width * height > MAX_PIXELS:
            raise MammogramReadError(path, f"image too large: {height}x{width} = {width * height / 1e6:.1f} megapixels (limit {MAX_PIXELS / 1e6:.0f})")
        if getattr(image, "n_frames", 1) > 1:
            raise MammogramReadError(path, f"multi-page image ({image.n_frames} pages): only single images are supported")
        if spacing_mm is None:
            raise SpacingError(path, f"{file_format.upper()} files carry no pixel spacing", "pass --spacing MM / spacing_mm=")
        mode = image.mode
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                arr = _to_grey(image, path)
        except MammogramReadError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise MammogramReadError(path, f"pixel data could not be decoded ({type(exc).__name__}: {exc})") from exc
    bits = _pgm_bits(path) if file_format == "pgm" and mode in ("I", "I;16", "I;16B") else _BITS_BY_MODE.get(mode)
    meta = MammogramMeta(
        path=str(path),
        file_format=file_format,
        shape=(int(arr.shape[0]), int(arr.shape[1])),
        spacing_mm=float(spacing_mm),
        spacing_source="user",
        photometric="MONOCHROME2",
        bits_stored=bits,
    )
    return arr.astype(np.float32), meta

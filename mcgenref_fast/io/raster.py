"""PNG / TIFF / PGM mammograms (Pillow): greyscale pixels as float32, spacing supplied by the user.

Rasters carry no trustworthy pixel spacing, so `spacing_mm` is required (SpacingError otherwise). The
size is checked from the header before any pixel is decoded; 16-bit files keep all 16 bits.

Pillow has no colour mode deeper than 8 bits: it silently reduces 16-bit-per-sample RGB (TIFF, PNG, PPM)
to 8 bits, and it cannot open float64 / float16 / complex TIFFs at all. Such TIFFs are read by tifffile
(a scikit-image dependency) at full depth; >8-bit colour PNG / PPM are refused, never truncated.
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
# Pillow modes with at most 8 bits per sample: a file declaring more bits decoded into one lost bits.
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_PNG_IHDR_BITS_OFFSET = 24  # 8-byte signature, 4-byte length, 'IHDR', width, height, then bit depth
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_PHOTOMETRIC_NAMES = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 4: "MASK", 5: "SEPARATED (CMYK)", 6: "YCBCR", 8: "CIELAB"}


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


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR (colour type 0 grey, 2 RGB, 3 palette, 4 grey + alpha,
    6 RGBA), or None when the header cannot be read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PNG_IHDR_BITS_OFFSET + 2)
    except OSError:
        return None
    return (head[_PNG_IHDR_BITS_OFFSET], head[_PNG_IHDR_BITS_OFFSET + 1]) if len(head) > _PNG_IHDR_BITS_OFFSET + 1 else None


def _declared_bits(image: Image.Image, path: Path, file_format: FileFormat) -> int | None:
    """Bits per sample the file itself declares (TIFF tag, PNG IHDR, PGM/PPM maxval), or None."""
    if file_format == "tiff":
        value = getattr(image, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE)
        values = value if isinstance(value, tuple) else (value,)
        ints = [int(v) for v in values if isinstance(v, int)]
        return max(ints) if ints else None
    if file_format == "png":
        ihdr = _png_ihdr(path)
        return None if ihdr is None else ihdr[0]
    return _pgm_bits(path)


def _check_header(path: Path, file_format: FileFormat, width: int, height: int, n_pages: int,
                  spacing_mm: float | None) -> None:
    """What the header alone decides, before any pixel is decoded (both the Pillow and the tifffile path):
    size, page count, and the spacing rasters never carry."""
    if width <= 0 or height <= 0:
        raise MammogramReadError(path, f"zero-sized image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise MammogramReadError(path, f"image too large: {height}x{width} = {width * height / 1e6:.1f} megapixels (limit {MAX_PIXELS / 1e6:.0f})")
    if n_pages > 1:
        raise MammogramReadError(path, f"multi-page image ({n_pages} pages): only single images are supported")
    if spacing_mm is None:
        raise SpacingError(path, f"{file_format.upper()} files carry no pixel spacing", "pass --spacing MM / spacing_mm=")


def _raster_meta(path: Path, file_format: FileFormat, arr: np.ndarray, spacing_mm: float, bits: int | None) -> MammogramMeta:
    """Meta of a raster read: the user's spacing, dense-bright as stored (MONOCHROME2)."""
    return MammogramMeta(
        path=str(path),
        file_format=file_format,
        shape=(int(arr.shape[0]), int(arr.shape[1])),
        spacing_mm=float(spacing_mm),
        spacing_source="user",
        photometric="MONOCHROME2",
        bits_stored=bits,
    )


def _tiff_grey(data: np.ndarray, axes: str, photometric: int, bits: int, path: Path) -> np.ndarray:
    """One greyscale (Y, X) plane from a tifffile page array; colour with unequal channels is refused."""
    if "S" in axes:
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    extra = [a for a, n in zip(axes, data.shape) if a not in "YXS" and n != 1]
    if extra:
        raise MammogramReadError(path, f"TIFF image with axes {axes} (shape {data.shape}): only single 2-D images are supported")
    data = data.reshape([n for a, n in zip(axes, data.shape) if a in "YXS"])
    samples = data.shape[-1] if data.ndim == 3 else 1
    name = _TIFF_PHOTOMETRIC_NAMES.get(int(photometric), str(photometric))
    if photometric == 2:  # RGB (+ extra samples): greyscale only when R = G = B
        if samples < 3:
            raise MammogramReadError(path, f"RGB TIFF with {samples} samples per pixel: not a valid image")
        if not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
            raise MammogramReadError(path, f"colour image (RGB, {bits} bits per sample): a mammogram must be greyscale")
        return data[..., 0]
    if photometric in (0, 1):  # greyscale (+ extra samples such as alpha): the first sample
        grey = data[..., 0] if data.ndim == 3 else data
        if photometric == 0:  # MINISWHITE: 0 is white; dense must be bright
            if grey.dtype.kind != "u":
                raise MammogramReadError(path, f"MINISWHITE TIFF with {grey.dtype} samples is not supported", "save the image as MINISBLACK greyscale")
            grey = np.asarray((1 << bits) - 1 if bits < 64 else np.iinfo(grey.dtype).max, dtype=grey.dtype) - grey
        return grey
    raise MammogramReadError(path, f"unsupported TIFF photometric interpretation {name} ({bits} bits per sample): a mammogram must be greyscale")


def _read_tiff_tifffile(path: Path, spacing_mm: float | None, why: str) -> tuple[np.ndarray, MammogramMeta]:
    """Read a TIFF that Pillow cannot read faithfully (`why` says so), at full depth, with tifffile.

    Same checks, in the same order, as the Pillow path: size and pages from the header, spacing, then
    the pixels. Floats become float32 (values beyond float32's range are refused); complex is refused.
    """
    try:
        import tifffile
    except ImportError:
        raise MammogramReadError(path, f"TIFF image that Pillow cannot read faithfully ({why}), and tifffile is not installed", "pip install tifffile, or save the image as 16-bit greyscale") from None
    try:
        with tifffile.TiffFile(path) as tif:
            n_pages = len(tif.pages)
            page = tif.pages[0]
            axes, shape, dtype = str(page.axes), tuple(int(n) for n in page.shape), page.dtype
            photometric, bits, compression = int(page.photometric), int(page.bitspersample), page.compression
            height = shape[axes.index("Y")] if "Y" in axes else 0
            width = shape[axes.index("X")] if "X" in axes else 0
            _check_header(path, "tiff", width, height, n_pages, spacing_mm)
            if dtype is None or dtype.kind not in "uif":
                kind = "complex" if dtype is not None and dtype.kind == "c" else f"SampleFormat {int(page.sampleformat)}"
                raise MammogramReadError(
                    path, f"{kind} TIFF samples ({bits} bits per sample) are not supported: a mammogram has real values",
                    "save the image as 16-bit integer or 32-bit float greyscale")
            try:
                data = page.asarray()
            except Exception as exc:  # noqa: BLE001 - any codec failure on untrusted data becomes one clear error
                hint = "pip install imagecodecs, or save the image uncompressed" if "imagecodecs" in str(exc) else ""
                raise MammogramReadError(path, f"pixel data could not be decoded ({getattr(compression, 'name', compression)}: {type(exc).__name__}: {exc})", hint) from exc
    except MammogramReadError:
        raise
    except OSError as exc:
        raise MammogramReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # noqa: BLE001 - tifffile parses untrusted headers: any failure is "unreadable"
        raise MammogramReadError(path, f"not a readable TIFF image ({why}; tifffile: {type(exc).__name__}: {exc})") from exc
    grey = _tiff_grey(np.asarray(data), axes, photometric, bits, path)
    if grey.dtype.kind == "f" and grey.dtype.itemsize > 4:
        finite = grey[np.isfinite(grey)]
        limit = float(np.finfo(np.float32).max)
        if finite.size and float(np.abs(finite).max()) > limit:
            raise MammogramReadError(path, f"float{8 * grey.dtype.itemsize} values up to {float(np.abs(finite).max()):.3g} exceed the float32 range", "rescale the image before saving it")
    arr = grey.astype(np.float32)
    return arr, _raster_meta(path, "tiff", arr, float(spacing_mm), bits)


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
        if file_format == "tiff":  # e.g. float64, float16 or complex samples: Pillow has no mode for them
            return _read_tiff_tifffile(path, spacing_mm, f"Pillow: {exc}")
        raise MammogramReadError(path, f"not a readable {file_format.upper()} image ({exc})") from exc
    except OSError as exc:
        raise MammogramReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    full_depth_tiff = ""
    with image:
        width, height = image.size
        _check_header(path, file_format, width, height, getattr(image, "n_frames", 1), spacing_mm)
        mode = image.mode
        declared = _declared_bits(image, path, file_format)
        if mode in _EIGHT_BIT_MODES and declared is not None and declared > 8:
            if file_format != "tiff":
                ihdr = _png_ihdr(path) if file_format == "png" else None
                png_type = None if ihdr is None else ihdr[1]
                kind = "grey + alpha" if mode == "LA" or png_type == 4 else "colour"
                label = "PPM" if file_format == "pgm" else file_format.upper()
                raise MammogramReadError(
                    path, f"{declared}-bit {kind} {label} image: it can only be read as 8-bit {mode}, losing the low bits",
                    "save the image as 16-bit greyscale (PNG, TIFF or PGM)")
            full_depth_tiff = f"Pillow would read its {declared}-bit samples as 8-bit {mode}"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    image.load()
                    arr = _to_grey(image, path)
            except MammogramReadError:
                raise
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise MammogramReadError(path, f"pixel data could not be decoded ({type(exc).__name__}: {exc})") from exc
    if full_depth_tiff:  # read again, at full depth, once Pillow has closed the file
        return _read_tiff_tifffile(path, spacing_mm, full_depth_tiff)
    bits = _pgm_bits(path) if file_format == "pgm" and mode in ("I", "I;16", "I;16B") else _BITS_BY_MODE.get(mode)
    return arr.astype(np.float32), _raster_meta(path, file_format, arr, float(spacing_mm), bits)

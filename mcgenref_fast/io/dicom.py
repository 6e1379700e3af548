"""DICOM mammograms (pydicom 3): header checks, pixel decoding, Modality LUT, dense-bright float32.

Every check that needs only the header runs before any pixel is decoded (modality, frames, size,
decoder availability, intent, spacing), so a wrong file fails fast and with a message saying what to do.
Laterality from the pixels is resolved later, in `reader`; this module reports the tags as found.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io.meta import MAX_PIXELS, MammogramMeta

ACCEPTED_MODALITIES = ("MG",)
WARNED_MODALITIES = ("DX",)  # digital radiography: accepted, but the user is told
SOP_CLASS_MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SOP_CLASS_DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SOP_CLASSES_TOMO = {
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Raised to stop the program, never by a decoder: these pass through the decode guard untouched. Every
# other BaseException is a decoder failure: Rust plugins (pylibjpeg-rle) panic on corrupt data with
# `pyo3_runtime.PanicException`, which derives from BaseException, not Exception.
_NOT_DECODER_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit)

# Which pip package decodes which transfer-syntax family (named in the "no decoder" error).
_DECODER_PACKAGES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.1.2.4.50", "pylibjpeg + pylibjpeg-libjpeg (or pillow)"),  # JPEG baseline
    ("1.2.840.10008.1.2.4.51", "pylibjpeg + pylibjpeg-libjpeg (or pillow)"),  # JPEG extended
    ("1.2.840.10008.1.2.4.57", "pylibjpeg + pylibjpeg-libjpeg"),  # JPEG lossless
    ("1.2.840.10008.1.2.4.70", "pylibjpeg + pylibjpeg-libjpeg"),  # JPEG lossless SV1
    ("1.2.840.10008.1.2.4.80", "pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)"),  # JPEG-LS lossless
    ("1.2.840.10008.1.2.4.81", "pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)"),  # JPEG-LS near-lossless
    ("1.2.840.10008.1.2.4.90", "pylibjpeg + pylibjpeg-openjpeg"),  # JPEG 2000 lossless
    ("1.2.840.10008.1.2.4.91", "pylibjpeg + pylibjpeg-openjpeg"),  # JPEG 2000
    ("1.2.840.10008.1.2.4.201", "pylibjpeg + pylibjpeg-openjpeg"),  # HTJ2K lossless
    ("1.2.840.10008.1.2.4.202", "pylibjpeg + pylibjpeg-openjpeg"),  # HTJ2K lossless RPCL
    ("1.2.840.10008.1.2.4.203", "pylibjpeg + pylibjpeg-openjpeg"),  # HTJ2K
    ("1.2.840.10008.1.2.5", "pylibjpeg + pylibjpeg-rle"),  # RLE lossless
)


def decoder_package(transfer_syntax_uid: str) -> str | None:
    """The pip package(s) that decode a transfer syntax, or None when no known plugin does."""
    return dict(_DECODER_PACKAGES).get(str(transfer_syntax_uid))


def read_dataset(path: Path, force: bool = False) -> Dataset:
    """Parse a DICOM file (pixel data deferred: nothing large is loaded before the header checks)."""
    try:
        ds = pydicom.dcmread(path, defer_size="1 MB", force=force)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise MammogramReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise MammogramReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if len(ds) == 0:
        raise MammogramReadError(path, "DICOM file holds no data elements after its header (truncated?)")
    _infer_transfer_syntax(ds)
    return ds


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A data set without file meta (no preamble) gets the transfer syntax its encoding implies."""
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) is not None:
        return
    implicit_vr, little_endian = getattr(ds, "original_encoding", (None, None))
    if implicit_vr is None:
        return
    if implicit_vr:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = uid


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _first_float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (MultiValue, list, tuple)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def check_modality(ds: Dataset, path: Path) -> str:
    """MG passes; DX passes with a warning; anything else (or nothing) is refused."""
    modality = _str(ds, "Modality")
    if modality in ACCEPTED_MODALITIES:
        return modality
    if modality in WARNED_MODALITIES:
        warnings.warn(f"{path}: Modality {modality} (digital radiography), not MG: read as a mammogram anyway", stacklevel=3)
        return modality
    shown = modality or "missing"
    raise MammogramReadError(path, f"Modality {shown} is not a mammogram (MG expected; DX accepted with a warning)")


def check_pixel_header(ds: Dataset, path: Path) -> tuple[int, int]:
    """Pixel data present, one frame, one sample, non-zero and at most MAX_PIXELS: (rows, columns)."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise MammogramReadError(path, "DICOM file has no pixel data (no (7FE0,0010) Pixel Data element)")
    sop = _str(ds, "SOPClassUID")
    if sop in SOP_CLASSES_TOMO:
        raise MammogramReadError(path, f"{SOP_CLASSES_TOMO[sop]}: tomosynthesis / projection series are not supported (single 2-D mammograms only)")
    frames = ds.get("NumberOfFrames")
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        raise MammogramReadError(path, f"multi-frame image ({n_frames} frames, e.g. tomosynthesis): only single-frame mammograms are supported")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise MammogramReadError(path, f"{samples} samples per pixel ({_str(ds, 'PhotometricInterpretation')}): a mammogram must be greyscale")
    photometric = (_str(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MammogramReadError(path, f"photometric interpretation {photometric}: a mammogram must be MONOCHROME1 or MONOCHROME2")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise MammogramReadError(path, f"zero-sized image (Rows={rows}, Columns={cols})")
    if rows * cols > MAX_PIXELS:
        raise MammogramReadError(path, f"image too large: {rows}x{cols} = {rows * cols / 1e6:.2f} megapixels (limit {MAX_PIXELS / 1e6:.0f})")
    return rows, cols


def check_decoder(ds: Dataset, path: Path) -> str:
    """The transfer syntax has an installed decoder; otherwise say which package to install."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise MammogramReadError(path, "no Transfer Syntax UID in the file meta information: pixel data cannot be interpreted")
    name = getattr(ts, "name", str(ts))
    if "PixelData" not in ds:  # float pixel data is never compressed
        return name
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        package = decoder_package(ts)
        hint = f"install {package}" if package else "no pydicom plugin decodes it: convert the file to an uncompressed transfer syntax first (e.g. `gdcmconv --raw` or `dcmdjpeg`)"
        raise MammogramReadError(path, f"no pixel-data decoder for transfer syntax {name} ({ts})", hint) from None
    if not decoder.is_available:
        package = decoder_package(ts) or ", ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
        raise MammogramReadError(path, f"no installed decoder for transfer syntax {name} ({ts})", f"install {package}")
    return name


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """Stored pixel values (H, W) of a single-frame greyscale dataset, decoded by pydicom's plugins.

    Raises MammogramReadError for a missing decoder (naming the plugin to install), multi-frame or
    colour data, and any decoding failure. No LUT or inversion is applied here.
    """
    path = Path(path)
    check_pixel_header(ds, path)
    check_decoder(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except _NOT_DECODER_FAILURES:
        raise
    except BaseException as exc:  # noqa: BLE001 - any plugin failure (even a Rust panic) becomes one clear error
        ts = getattr(ds.file_meta, "TransferSyntaxUID", "?")
        raise MammogramReadError(
            path,
            f"pixel data could not be decoded ({getattr(ts, 'name', ts)}: {type(exc).__name__}: {exc})",
            "the pixel data look corrupt or truncated: export the image again from the archive",
        ) from exc
    if arr.ndim != 2:
        raise MammogramReadError(path, f"decoded pixel data has shape {arr.shape}, expected one 2-D frame")
    return arr


def presentation_intent(ds: Dataset) -> str | None:
    """'FOR PRESENTATION' / 'FOR PROCESSING' from PresentationIntentType, or from the SOP class."""
    intent = _str(ds, "PresentationIntentType")
    if intent:
        return intent.upper()
    if _str(ds, "SOPClassUID") in (SOP_CLASS_MG_FOR_PROCESSING, SOP_CLASS_DX_FOR_PROCESSING):
        return "FOR PROCESSING"
    return None


def _isotropic(values: Any, keyword: str, path: Path) -> float:
    """One spacing (mm) from a (row, column) spacing tag; SpacingError (no hint) when it is unusable.

    The caller adds the hint: whether `--spacing` can stand in depends on whether the user gave one.
    """
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise SpacingError(path, f"{keyword} {values!r} is not numeric") from exc
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise SpacingError(path, f"{keyword} {values!r} is not a pair of positive numbers")
    row_mm, col_mm = vals
    if abs(row_mm - col_mm) > 0.01 * max(row_mm, col_mm):
        raise SpacingError(path, f"anisotropic {keyword} {row_mm} x {col_mm} mm is not supported")
    return 0.5 * (row_mm + col_mm)


def _file_spacing(ds: Dataset, path: Path, magnification: float | None) -> tuple[float, str] | None:
    """(spacing_mm, source) from the tags in SPEC §1 order, None when neither tag is present.

    Raises SpacingError (no hint) when the tag that applies is present but unusable (zero, negative,
    non-numeric, anisotropic): the next tag is not tried, since a broken PixelSpacing says nothing about
    whether ImagerPixelSpacing describes the stored grid.
    """
    if ds.get("PixelSpacing"):
        return _isotropic(ds.PixelSpacing, "PixelSpacing", path), "PixelSpacing"
    if ds.get("ImagerPixelSpacing"):
        imager_mm = _isotropic(ds.ImagerPixelSpacing, "ImagerPixelSpacing", path)
        if magnification is not None:
            return imager_mm / magnification, "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        return imager_mm, "ImagerPixelSpacing"
    return None


def dicom_spacing(ds: Dataset, path: Path, user_spacing_mm: float | None) -> tuple[float, str, float | None]:
    """(spacing_mm, source, magnification) per SPEC §1; the user's explicit value wins over the file.

    A spacing tag that is present but unusable is an error only when the user gave no spacing; with one,
    the user's value is used (source 'user') and a warning says what was wrong with the tag.
    """
    magnification = _first_float(ds, "EstimatedRadiographicMagnificationFactor")
    if magnification is not None and not (np.isfinite(magnification) and magnification > 0):
        magnification = None
    try:
        file_spacing = _file_spacing(ds, path, magnification)
    except SpacingError as exc:
        if user_spacing_mm is None:
            raise SpacingError(path, exc.problem, "pass --spacing MM / spacing_mm= with the true pixel spacing to use it instead") from exc
        warnings.warn(f"{path}: {exc.problem}: using --spacing {user_spacing_mm:g} mm instead", stacklevel=3)
        return float(user_spacing_mm), "user", magnification
    if user_spacing_mm is not None:
        if file_spacing and abs(file_spacing[0] - user_spacing_mm) > 0.05 * file_spacing[0]:
            warnings.warn(f"{path}: --spacing {user_spacing_mm} mm overrides {file_spacing[1]} ({file_spacing[0]:.4g} mm)", stacklevel=3)
        return float(user_spacing_mm), "user", magnification
    if file_spacing is None:
        raise SpacingError(path, "no pixel spacing (no PixelSpacing or ImagerPixelSpacing tag)", "pass --spacing MM / spacing_mm=")
    return file_spacing[0], file_spacing[1], magnification


def to_dense_bright(stored: np.ndarray, ds: Dataset, for_processing: bool) -> np.ndarray:
    """Modality LUT / rescale, then dense = bright: MONOCHROME1 inverted, or `-log` for raw data.

    FOR PROCESSING data are detector signal: linear (`PixelIntensityRelationship` LIN, the default)
    becomes `-log(signal / max signal)`; already logarithmic (LOG) data are only oriented by
    `PixelIntensityRelationshipSign` (+1: higher value = more X-rays = less dense).
    """
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if for_processing:
        relationship = (_str(ds, "PixelIntensityRelationship") or "LIN").upper()
        sign = _first_float(ds, "PixelIntensityRelationshipSign") or 1.0
        if relationship == "LOG":
            out = -values if sign > 0 else values
            out = out - out.min()
        else:
            signal = values if sign > 0 else values.max() + values.min() - values
            signal = signal - min(float(signal.min()), 0.0)
            peak = float(signal.max())
            floor = max(peak * 1e-6, np.finfo(np.float32).tiny)
            out = -np.log(np.clip(signal, floor, None) / max(peak, floor))
        return out.astype(np.float32)
    if (_str(ds, "PhotometricInterpretation") or "").upper() == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values.astype(np.float32)


def read_dicom(path: Path, spacing_mm: float | None, allow_for_processing: bool, force: bool = False) -> tuple[np.ndarray, MammogramMeta]:
    """Read a DICOM mammogram: dense-bright float32 image and its meta (laterality as tagged)."""
    ds = read_dataset(path, force=force)
    modality = check_modality(ds, path)
    rows, cols = check_pixel_header(ds, path)
    ts_name = check_decoder(ds, path)
    intent = presentation_intent(ds)
    for_processing = intent == "FOR PROCESSING"
    if for_processing and not allow_for_processing:
        raise MammogramReadError(
            path,
            "FOR PROCESSING image (raw detector data, not meant for reading)",
            "use the FOR PRESENTATION image, or pass --allow-for-processing / allow_for_processing=True to apply -log of the normalised signal",
        )
    spacing, source, magnification = dicom_spacing(ds, path, spacing_mm)
    stored = decode_pixels(ds, path)
    if stored.shape != (rows, cols):
        raise MammogramReadError(path, f"decoded pixel data {stored.shape} does not match Rows x Columns {rows}x{cols}")
    image = to_dense_bright(stored, ds, for_processing)
    image_lat = (_str(ds, "ImageLaterality") or "").upper()
    series_lat = (_str(ds, "Laterality") or "").upper()
    if image_lat in ("L", "R"):
        laterality, lat_source = image_lat, "ImageLaterality"
    elif series_lat in ("L", "R"):
        laterality, lat_source = series_lat, "Laterality"
    else:
        laterality, lat_source = None, None
    bits = ds.get("BitsStored")
    meta = MammogramMeta(
        path=str(path),
        file_format="dicom",
        shape=(rows, cols),
        spacing_mm=float(spacing),
        spacing_source=source,  # type: ignore[arg-type]
        magnification=magnification,
        laterality=laterality,  # type: ignore[arg-type]
        laterality_source=lat_source,  # type: ignore[arg-type]
        view=_str(ds, "ViewPosition"),
        modality=modality,
        photometric=_str(ds, "PhotometricInterpretation"),
        presentation_intent=intent,
        voi_center=_first_float(ds, "WindowCenter"),
        voi_width=_first_float(ds, "WindowWidth"),
        voi_function=_str(ds, "VOILUTFunction") or ("LUT" if ds.get("VOILUTSequence") else None),
        bits_stored=int(bits) if bits not in (None, "") else None,
        sop_instance_uid=_str(ds, "SOPInstanceUID"),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        series_instance_uid=_str(ds, "SeriesInstanceUID"),
        laterality_tag=image_lat or series_lat or None,
        transfer_syntax=ts_name,
    )
    return image, meta

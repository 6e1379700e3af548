"""Test helpers: synthetic breast phantoms and small DICOM files built with pydicom (written to tmp_path).

The phantoms have a known chest-wall side (a half-ellipse of textured tissue against one image edge)
and a burned-in label (a bright block) in the far corner that touches no tissue. Every DICOM carries
fake patient identifiers so tests can check they never leak.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

FAKE_PATIENT_NAME = "Secretname^Jane"
FAKE_PATIENT_ID = "PID-7351-SECRET"
FAKE_ACCESSION = "ACC-99887766"
FAKE_INSTITUTION = "Hospital Of Secrets"
FAKE_BIRTH_DATE = "19480317"


def breast_phantom(
    shape: tuple[int, int] = (240, 180),
    chest_wall: str = "left",
    seed: int = 0,
    background: float = 40.0,
    tissue: float = 1800.0,
    label: bool = True,
) -> np.ndarray:
    """uint16 dense-bright phantom: textured half-ellipse breast at the chest-wall edge, label far away."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    dist_from_wall = cc if chest_wall == "left" else (w - 1) - cc
    inside = ((rr - h / 2) / (0.42 * h)) ** 2 + (dist_from_wall / (0.62 * w)) ** 2 < 1.0
    texture = rng.normal(0.0, 1.0, shape)
    for _ in range(2):  # cheap low-pass: average with shifted copies
        texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1) + np.roll(texture, (1, 1), (0, 1))) / 4
    img = np.full(shape, background) + rng.normal(0.0, 3.0, shape)
    img[inside] = tissue * (0.75 + 0.25 * np.clip(1 - dist_from_wall[inside] / (0.62 * w), 0, 1)) + 300.0 * texture[inside]
    if label:  # burned-in marker in the top corner opposite the chest wall, touching no tissue
        r0, c0 = 4, (w - 4 - w // 8) if chest_wall == "left" else 4
        img[r0 : r0 + h // 12, c0 : c0 + w // 8] = 4000.0
    return np.clip(img, 0, 65535).astype(np.uint16)


def make_dataset(
    pixels: np.ndarray | None,
    *,
    modality: str | None = "MG",
    sop_class: str = MG_FOR_PRESENTATION,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    pixel_spacing: Sequence[float] | None = None,
    imager_pixel_spacing: Sequence[float] | None = None,
    magnification: float | None = None,
    image_laterality: str | None = None,
    laterality: str | None = None,
    view: str | None = "CC",
    intent: str | None = "FOR PRESENTATION",
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    rows_cols: tuple[int, int] | None = None,
    n_frames: int | None = None,
    extra: dict[str, Any] | None = None,
) -> FileDataset:
    """An uncompressed (explicit VR little endian) FileDataset; `pixels` uint16 (H, W) or (F, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.AccessionNumber = FAKE_ACCESSION
    ds.InstitutionName = FAKE_INSTITUTION
    if modality is not None:
        ds.Modality = modality
    if intent is not None:
        ds.PresentationIntentType = intent
    if view is not None:
        ds.ViewPosition = view
    if image_laterality is not None:
        ds.ImageLaterality = image_laterality
    if laterality is not None:
        ds.Laterality = laterality
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [f"{v:g}" for v in imager_pixel_spacing]
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = f"{magnification:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "US"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels is not None:
        arr = np.ascontiguousarray(pixels, dtype=np.uint16)
        ds.Rows, ds.Columns = (int(arr.shape[-2]), int(arr.shape[-1])) if arr.ndim >= 2 else (0, 0)
        if arr.ndim == 3 or n_frames is not None:
            ds.NumberOfFrames = n_frames if n_frames is not None else int(arr.shape[0])
        ds.PixelData = arr.tobytes()
    if rows_cols is not None:
        ds.Rows, ds.Columns = rows_cols
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def write_dicom(path: Path, ds: FileDataset, compress: str | None = None) -> Path:
    """Write `ds` to `path`, optionally compressed with pydicom's encoders (`compress` = a transfer syntax UID)."""
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicom(path: Path, pixels: np.ndarray | None, compress: str | None = None, **kwargs: Any) -> Path:
    """`make_dataset(pixels, **kwargs)` written to `path` (see there for the keywords)."""
    return write_dicom(path, make_dataset(pixels, **kwargs), compress)


def write_with_transfer_syntax(path: Path, ds: FileDataset, transfer_syntax_uid: str) -> Path:
    """Write `ds` encoded as explicit VR little endian but labelled with another (e.g. private) syntax."""
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


def as_mg_copy(ds: Dataset, path: Path, modality: str = "MG") -> Path:
    """Save a copy of a (non-MG) dataset relabelled as `modality`, keeping its pixel data and syntax."""
    ds.Modality = modality
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_jpeg_lossless_sv1(arr: np.ndarray, precision: int = 16) -> bytes:
    """Minimal JPEG lossless encoder (ITU T.81 process 14, predictor 1 = left) for one greyscale frame.

    pydicom has no JPEG-lossless encoder; this one lets the tests build the transfer syntax most
    mammography archives use. One Huffman table with 5-bit codes for the 17 difference categories.
    """
    x = np.asarray(arr, dtype=np.int64)
    h, w = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = ((x - pred + 32768) % 65536) - 32768  # modulo 2^16, as T.81 H.1.2.1
    out = bytearray()
    acc, n_bits = 0, 0

    def put(value: int, length: int) -> None:
        nonlocal acc, n_bits
        acc = (acc << length) | (value & ((1 << length) - 1))
        n_bits += length
        while n_bits >= 8:
            n_bits -= 8
            byte = (acc >> n_bits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << n_bits) - 1 if n_bits else 0

    for d in diff.ravel().tolist():
        size = 16 if d == -32768 else abs(d).bit_length()
        put(size, 5)  # canonical code of category `size` (all 17 codes are 5 bits long)
        if 0 < size < 16:
            put(d if d > 0 else d + (1 << size) - 1, size)
    if n_bits:
        put((1 << (8 - n_bits)) - 1, 8 - n_bits)  # pad with ones
    bits = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + b"\x00" + bits + bytes(range(17))
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + b"\x01\x01\x00" + b"\x01\x00\x00"
    return b"\xff\xd8" + sof + dht + sos + bytes(out) + b"\xff\xd9"


def make_jpeg_lossless_dicom(path: Path, pixels: np.ndarray, **kwargs: Any) -> Path:
    """An MG DICOM whose pixel data are JPEG lossless SV1 (1.2.840.10008.1.2.4.70) encoded."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = make_dataset(pixels, **kwargs)
    ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(pixels, int(ds.BitsStored))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path, enforce_file_format=True)
    return path

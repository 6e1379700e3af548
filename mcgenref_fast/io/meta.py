"""What the reader found in a file: `MammogramMeta` (header facts) and `Mammogram` (pixels + meta).

Both are frozen: downstream stages derive new objects, they never edit what was read. The image stays
in the file's own grid and orientation (only the Modality LUT, MONOCHROME1 inversion or the opt-in
FOR PROCESSING `-log` are applied), so every output can be written back onto that grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FileFormat = Literal["dicom", "png", "tiff", "pgm"]
SpacingSource = Literal[
    "PixelSpacing",
    "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
    "ImagerPixelSpacing",
    "user",
]
LateralitySource = Literal["ImageLaterality", "Laterality", "pixels"]

#: Largest image the reader accepts (checked from the header, before any pixel is decoded).
MAX_PIXELS: int = 100_000_000


@dataclass(frozen=True)
class MammogramMeta:
    """Header facts of one mammogram (None where the file does not say; DICOM UIDs None for rasters).

    `flips` names the flips the canonical form applies to this image (('lr',) when the chest wall is on
    the image's right, else ()); `chest_wall_side` is the side of the *file's* image holding the chest
    wall. No patient-identifying value is ever stored here.
    """

    path: str
    file_format: FileFormat
    shape: tuple[int, int]
    spacing_mm: float
    spacing_source: SpacingSource
    magnification: float | None = None
    laterality: Literal["L", "R"] | None = None
    laterality_source: LateralitySource | None = None
    view: str | None = None
    modality: str | None = None
    photometric: str | None = None
    presentation_intent: str | None = None
    voi_center: float | None = None
    voi_width: float | None = None
    voi_function: str | None = None
    bits_stored: int | None = None
    flips: tuple[str, ...] = ()
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    chest_wall_side: Literal["left", "right"] | None = None
    laterality_tag: str | None = None
    transfer_syntax: str | None = None


@dataclass(frozen=True, eq=False)
class Mammogram:
    """A mammogram as read: `image` float32 (H, W), dense = bright, in the file's grid and orientation."""

    image: np.ndarray = field(repr=False)
    meta: MammogramMeta

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.float32:
            raise ValueError(f"Mammogram.image must be float32 (H, W), got {self.image.dtype} {self.image.shape}")

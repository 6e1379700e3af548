"""Reading mammograms: `read_mammogram(path, spacing_mm=None, allow_for_processing=False) -> Mammogram`."""
from __future__ import annotations

from mcgenref_fast.io.dicom import decode_pixels
from mcgenref_fast.io.meta import MAX_PIXELS, Mammogram, MammogramMeta
from mcgenref_fast.io.reader import read_mammogram, sniff_format

__all__ = ["MAX_PIXELS", "Mammogram", "MammogramMeta", "decode_pixels", "read_mammogram", "sniff_format"]

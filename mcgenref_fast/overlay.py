"""overlay.png: the mammogram as a reader would window it, with every MC outlined, clusters boxed and
scored, and a millimetre scale bar, so a person can check a result at a glance.

All geometry comes in the INPUT grid (the file's pixels); the picture may be downscaled so its longest
side is at most `max_side_px` (a 4000 x 3000 mammogram as a full-size PNG is too big to browse). MCs are
a few pixels wide, so the mask is mapped down with an any-pixel rule (every component keeps at least one
output pixel) and each is outlined by a ring drawn just OUTSIDE it, a few output pixels thick: the MC
itself stays visible inside its ring (one output pixel of gap), even a 1-pixel MC.

Windowing (SPEC §1: VOI only for display): the DICOM window centre/width and VOI LUT function (LINEAR,
LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2) when given — in the units of the image passed in — else the
0.5 % / 99.8 % percentiles of the breast (a triangle threshold when no breast mask is given). An
unknown function is windowed LINEAR, an unusable centre/width automatically (with a warning).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import write_png_atomic
from .errors import OutputError

MC_OUTLINE_RGB = (255, 0, 0)         # red: stands out on both dark fat and white dense tissue
OUTLINE_MC_RGB = (0, 170, 255)       # light blue: MCs at the breast outline, reported but not clustered
CLUSTER_BOX_RGB = (255, 255, 0)      # yellow, the usual CAD mark colour
SCALE_BAR_RGB = (255, 255, 255)
SCALE_BAR_BORDER_RGB = (0, 0, 0)
TEXT_BACKGROUND_RGB = (0, 0, 0)
_NICE_BAR_LENGTHS_MM = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1)
_AUTO_PERCENTILES = (0.5, 99.8)


@dataclass(frozen=True)
class VOIWindow:
    """A display window in the units of the image passed to `render_overlay` (DICOM VOI semantics)."""

    center: float
    width: float
    function: str = "LINEAR"   # 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID'


@dataclass(frozen=True)
class ClusterBox:
    """A cluster's bounding box in input pixels, inclusive on both ends, and its score."""

    row_min: float
    col_min: float
    row_max: float
    col_max: float
    score: float
    label: str = ""

    @classmethod
    def from_mapping(cls, cluster: Mapping[str, Any]) -> "ClusterBox":
        """From a findings cluster dict (`Findings.to_dict()['clusters'][i]`): `bbox_input_px` =
        [row_min, col_min, row_max, col_max] in the input grid, `score`, optional `regional`."""
        try:
            r0, c0, r1, c1 = (float(v) for v in cluster["bbox_input_px"])
            score = float(cluster["score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputError(
                f"cluster needs bbox_input_px [r0, c0, r1, c1] (input grid) and score, got {dict(cluster)!r}"
            ) from exc
        return cls(min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1), score,
                   "regional" if cluster.get("regional") else "")


@dataclass(frozen=True)
class OverlayGeometry:
    """Where things go in the output picture (all in output pixels)."""

    input_shape: tuple[int, int]
    output_shape: tuple[int, int]
    scale_rc: tuple[float, float]      # output px per input px along rows and columns
    outline_px: int                    # ring thickness around each MC
    font_px: int
    scale_bar_mm: float
    scale_bar_px: int                  # bar length along columns
    scale_bar_thickness_px: int
    scale_bar_origin_rc: tuple[int, int]   # top-left pixel of the white bar


def overlay_geometry(
    input_shape: tuple[int, int],
    spacing_mm: float,
    max_side_px: int | None = 2048,
    scale_bar_mm: float = 10.0,
    bar_on_right: bool = True,
) -> OverlayGeometry:
    """Output size, line widths and the scale bar's length and place for an input of `input_shape`.

    The bar is `scale_bar_mm` long unless that would exceed half the picture's width, in which case the
    longest 'nice' length (…, 10, 5, 2, 1 mm, …) that fits is used instead (its label says so).
    """
    h_in, w_in = (int(v) for v in input_shape)
    if spacing_mm <= 0 or not np.isfinite(spacing_mm):
        raise OutputError(f"overlay needs a positive pixel spacing, got {spacing_mm} mm")
    scale = 1.0 if max_side_px is None else min(1.0, float(max_side_px) / max(h_in, w_in))
    h_out, w_out = max(1, round(h_in * scale)), max(1, round(w_in * scale))
    sy, sx = h_out / h_in, w_out / w_in
    side = max(h_out, w_out)
    outline_px = max(2, round(side / 700))
    font_px = max(12, round(side / 64))
    bar_mm = float(scale_bar_mm)
    px_per_mm = sx / spacing_mm
    if bar_mm * px_per_mm > 0.5 * w_out:
        fitting = [v for v in _NICE_BAR_LENGTHS_MM if v * px_per_mm <= 0.5 * w_out]
        bar_mm = fitting[0] if fitting else _NICE_BAR_LENGTHS_MM[-1]
    bar_px = max(1, round(bar_mm * px_per_mm))
    thickness = max(2, round(side / 300))
    margin = max(4, round(side / 40))
    row = max(0, h_out - margin - thickness)
    col = max(0, w_out - margin - bar_px) if bar_on_right else min(margin, max(0, w_out - bar_px))
    return OverlayGeometry(
        input_shape=(h_in, w_in), output_shape=(h_out, w_out), scale_rc=(sy, sx), outline_px=outline_px,
        font_px=font_px, scale_bar_mm=bar_mm, scale_bar_px=bar_px, scale_bar_thickness_px=thickness,
        scale_bar_origin_rc=(row, col),
    )


def apply_voi(image: np.ndarray, voi: VOIWindow) -> np.ndarray:
    """DICOM VOI LUT (PS3.3 C.11.2.1.2) mapped to [0, 1] float32."""
    x = np.asarray(image, dtype=np.float64)
    c, w = float(voi.center), float(voi.width)
    function = (voi.function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-12)))
    elif function == "LINEAR_EXACT":
        out = (x - c) / max(w, 1e-12) + 0.5
    elif function == "LINEAR":
        out = (x - (c - 0.5)) / max(w - 1.0, 1e-12) + 0.5
    else:
        raise OutputError(f"unknown VOI LUT function {voi.function!r} (LINEAR, LINEAR_EXACT or SIGMOID)")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def resolve_voi(voi: VOIWindow | tuple[float, float, str | None] | None) -> VOIWindow | None:
    """The window to display with, or None for the automatic one; never fails on odd tag values.

    VOI only shapes the picture (SPEC §1), so a bad window must not cost the analysis its outputs:
    an unknown VOI LUT function is windowed LINEAR (the DICOM default), and a non-finite centre or a
    non-positive width falls back to the automatic window, each with a warning. A missing function,
    or 'LUT' (a VOI LUT Sequence, for which the window is the standard's alternative), is LINEAR.
    """
    if voi is None:
        return None
    if isinstance(voi, VOIWindow):
        center, width, function = voi.center, voi.width, voi.function
    else:
        center, width, function = voi[0], voi[1], voi[2]
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        center, width = float("nan"), float("nan")
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        warnings.warn(f"overlay: window centre {center} / width {width} is unusable: windowed automatically", stacklevel=3)
        return None
    name = str(function or "LINEAR").strip().upper() or "LINEAR"
    if name == "LUT":
        name = "LINEAR"
    elif name not in _VOI_FUNCTIONS:
        warnings.warn(f"overlay: unknown VOI LUT function {function!r} ({', '.join(_VOI_FUNCTIONS)} expected): windowed LINEAR", stacklevel=3)
        name = "LINEAR"
    return VOIWindow(center, width, name)


def auto_window(image: np.ndarray, breast_mask: np.ndarray | None = None) -> VOIWindow:
    """A LINEAR_EXACT window over the breast's 0.5 %..99.8 % percentiles.

    Without a breast mask, the breast is what lies above the triangle threshold: mammogram histograms are
    a tall background peak plus a long tissue tail, which the triangle method separates keeping the
    skin line (Otsu puts its threshold inside the tissue and blacks out the subcutaneous fat).
    """
    values = np.asarray(image, dtype=np.float32)
    if breast_mask is None:
        finite = values[np.isfinite(values)]
        breast = finite
        if finite.size and finite.max() > finite.min():
            from skimage.filters import threshold_triangle

            sample = finite[:: max(1, finite.size // 500_000)]
            breast = finite[finite > threshold_triangle(sample)]
    else:
        breast = values[np.asarray(breast_mask, dtype=bool) & np.isfinite(values)]
    if breast.size == 0:
        breast = values[np.isfinite(values)]
    if breast.size == 0:
        return VOIWindow(0.5, 1.0, "LINEAR_EXACT")
    lo, hi = np.percentile(breast, _AUTO_PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return VOIWindow(float((lo + hi) / 2), float(hi - lo), "LINEAR_EXACT")


def _resize_area(image: np.ndarray, output_shape: tuple[int, int]) -> np.ndarray:
    """Area-averaged (box) resize of a float image; identity when the shape already matches."""
    if tuple(image.shape) == tuple(output_shape):
        return image.astype(np.float32, copy=False)
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((output_shape[1], output_shape[0]), Image.Resampling.BOX), dtype=np.float32)


def _mask_any_down(mask: np.ndarray, geometry: OverlayGeometry) -> np.ndarray:
    """Map a boolean mask to the output grid: an output pixel is on when any input pixel in it is on."""
    h_out, w_out = geometry.output_shape
    sy, sx = geometry.scale_rc
    rows, cols = np.nonzero(mask)
    out = np.zeros((h_out, w_out), dtype=bool)
    out[np.minimum((rows * sy).astype(np.int64), h_out - 1), np.minimum((cols * sx).astype(np.int64), w_out - 1)] = True
    return out


def mc_outline(mask_out: np.ndarray, thickness_px: int, gap_px: int = 1) -> np.ndarray:
    """Ring `thickness_px` thick, `gap_px` outside every 8-connected component of `mask_out`.

    The gap keeps the MC and its immediate surround visible inside the ring (a filled mark would hide
    exactly what the reader wants to check). Square (chessboard) dilation, so it follows 8-connectivity.
    """
    from scipy.ndimage import maximum_filter

    source = mask_out.astype(np.uint8)
    outer = maximum_filter(source, size=2 * (gap_px + thickness_px) + 1, mode="constant") > 0
    inner = maximum_filter(source, size=2 * gap_px + 1, mode="constant") > 0 if gap_px > 0 else mask_out
    return outer & ~inner


def _font(size_px: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError, ImportError):   # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _label(draw: Any, xy: tuple[float, float], text: str, font: Any, rgb: tuple[int, int, int], below: bool) -> None:
    """Text on a black plate so it reads on any background; anchored above (or below) the point."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 8)
    height = bottom - top + 2 * pad
    y0 = y if below else y - height
    draw.rectangle((x, y0, x + right - left + 2 * pad, y0 + height), fill=TEXT_BACKGROUND_RGB)
    draw.text((x + pad - left, y0 + pad - top), text, font=font, fill=rgb)


def _draw_clusters(draw: Any, clusters: Sequence[ClusterBox], geometry: OverlayGeometry, font: Any) -> None:
    sy, sx = geometry.scale_rc
    h_out, w_out = geometry.output_shape
    pad = 3 * geometry.outline_px
    width = max(1, geometry.outline_px // 2 + 1)
    for box in clusters:
        x0 = max(0, box.col_min * sx - pad)
        y0 = max(0, box.row_min * sy - pad)
        x1 = min(w_out - 1, (box.col_max + 1) * sx + pad)
        y1 = min(h_out - 1, (box.row_max + 1) * sy + pad)
        draw.rectangle((x0, y0, x1, y1), outline=CLUSTER_BOX_RGB, width=width)
        text = f"{box.score:.2f}" + (f" {box.label}" if box.label else "")
        below = y0 < geometry.font_px * 1.5
        _label(draw, (x0, y1 + 1 if below else y0 - 1), text, font, CLUSTER_BOX_RGB, below)


def _draw_scale_bar(draw: Any, geometry: OverlayGeometry, font: Any) -> None:
    row, col = geometry.scale_bar_origin_rc
    length, thick = geometry.scale_bar_px, geometry.scale_bar_thickness_px
    draw.rectangle((col - 1, row - 1, col + length, row + thick), fill=SCALE_BAR_BORDER_RGB)
    draw.rectangle((col, row, col + length - 1, row + thick - 1), fill=SCALE_BAR_RGB)
    mm = geometry.scale_bar_mm
    text = f"{mm:g} mm"
    _label(draw, (col, row - 2), text, font, SCALE_BAR_RGB, below=False)


def render_overlay(
    image_input_grid: np.ndarray,
    mask_input_grid: np.ndarray,
    spacing_mm: float,
    clusters: Sequence[ClusterBox | Mapping[str, Any]] = (),
    voi: VOIWindow | tuple[float, float, str | None] | None = None,
    max_side_px: int | None = 2048,
    scale_bar_mm: float = 10.0,
    breast_mask_input_grid: np.ndarray | None = None,
    outline_mcs_input_grid: np.ndarray | None = None,
) -> np.ndarray:
    """The overlay picture as RGB uint8 (h, w, 3); (h, w) = input shape scaled so max side ≤ max_side_px.

    `image_input_grid` is the image as read (dense bright), `mask_input_grid` the MC mask in the same
    grid, `spacing_mm` its pixel spacing, `clusters` boxes in input pixels (ClusterBox or findings.json
    cluster dicts), `voi` a window (center, width, function) in the image's units or None for automatic (an
    unusable one falls back with a warning: `resolve_voi`);
    `outline_mcs_input_grid`: the part of the mask that belongs to MCs at the breast outline (findings'
    `at_outline`), outlined in light blue instead of red.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image_input_grid)
    mask = np.asarray(mask_input_grid, dtype=bool)
    if image.ndim != 2 or mask.shape != image.shape:
        raise OutputError(f"overlay needs a 2-D image and a mask of the same shape, got {image.shape} and {mask.shape}")
    geometry = overlay_geometry(image.shape, spacing_mm, max_side_px, scale_bar_mm)
    small = _resize_area(image, geometry.output_shape)
    window = resolve_voi(voi)
    if window is None:
        breast_small = None
        if breast_mask_input_grid is not None:
            if np.shape(breast_mask_input_grid) != image.shape:
                raise OutputError(
                    f"breast mask {np.shape(breast_mask_input_grid)} does not match the image {image.shape}")
            breast_small = _resize_area(np.asarray(breast_mask_input_grid, np.float32), geometry.output_shape) >= 0.5
        window = auto_window(small, breast_small)
    gray = np.rint(apply_voi(small, window) * 255).astype(np.uint8)
    # Scale bar in the emptier bottom corner (away from the chest wall).
    w_out = geometry.output_shape[1]
    bar_on_right = gray[:, w_out // 2:].mean() <= gray[:, : w_out // 2].mean() if w_out > 1 else True
    geometry = overlay_geometry(image.shape, spacing_mm, max_side_px, scale_bar_mm, bar_on_right)

    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgb[mc_outline(_mask_any_down(mask, geometry), geometry.outline_px)] = MC_OUTLINE_RGB
    if outline_mcs_input_grid is not None:
        at_outline = np.asarray(outline_mcs_input_grid, dtype=bool)
        if at_outline.shape != image.shape:
            raise OutputError(f"outline-MC mask {at_outline.shape} does not match the image {image.shape}")
        if at_outline.any():
            rgb[mc_outline(_mask_any_down(at_outline & mask, geometry), geometry.outline_px)] = OUTLINE_MC_RGB
    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    font = _font(geometry.font_px)
    boxes = [c if isinstance(c, ClusterBox) else ClusterBox.from_mapping(c) for c in clusters]
    _draw_clusters(draw, boxes, geometry, font)
    _draw_scale_bar(draw, geometry, font)
    return np.asarray(pil, dtype=np.uint8).copy()


def write_overlay(path: str | Path, image_input_grid: np.ndarray, mask_input_grid: np.ndarray, spacing_mm: float,
                  **kwargs: Any) -> Path:
    """Render (see `render_overlay`, same keyword arguments) and write overlay.png atomically."""
    try:
        rgb = render_overlay(image_input_grid, mask_input_grid, spacing_mm, **kwargs)
    except OutputError as exc:
        raise OutputError(f"{path}: {exc}") from exc
    return write_png_atomic(path, rgb)

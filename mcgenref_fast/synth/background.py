"""Backgrounds B for synthetic pairs (SPEC §2): procedural 1/f^beta anatomical noise plus a smooth density
field, or canonical patches of real negative mammograms taken inside the breast mask.

Procedural patches are generated in the Fourier domain with numpy/scipy FFTs (periodic, float32); the
density field is a low-order, non-periodic cosine expansion (separable, a few matrix products).
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.fft as sfft

from mcgenref_fast.config import CANONICAL_SPACING_MM
from mcgenref_fast.synth.config import SynthConfig

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".pgm", ".dcm", ".dicom")
REAL_ORIGIN_STRIDE_PX: int = 4   # candidate patch origins of a real image lie on this grid (canonical px)


@functools.lru_cache(maxsize=16)
def _log_radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """log |f| (cycles/px) on the rfft2 grid of `shape`; -inf at f = 0 (so f^-x -> 0 there)."""
    fy = sfft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    with np.errstate(divide="ignore"):
        logf = 0.5 * np.log(fy * fy + fx * fx)
    logf[0, 0] = np.inf  # exp(-x * inf) = 0: no DC term
    logf.setflags(write=False)
    return logf


def powerlaw_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian field with power spectrum ∝ 1/f^beta (periodic, float32 (H, W))."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = sfft.rfft2(white, workers=1)
    spec *= np.exp(np.float32(-0.5 * beta) * _log_radial_frequency(tuple(shape)))
    field = sfft.irfft2(spec, s=shape, workers=1).astype(np.float32, copy=False)
    std = float(field.std())
    return field / std if std > 0 else field


def density_field(rng: np.random.Generator, shape: tuple[int, int], spacing_mm: float,
                  cfg: SynthConfig) -> np.ndarray:
    """Zero-mean, unit-std smooth field: sum of `density_modes`² separable cosines with random phases and
    frequencies below 1 / (2 * density_scale_mm) (cycles/mm); non-periodic, float32 (H, W)."""
    m = cfg.density_modes
    f_max = 1.0 / (2.0 * cfg.density_scale_mm)

    def basis(n: int) -> np.ndarray:
        pos_mm = np.arange(n, dtype=np.float64) * spacing_mm
        freqs = rng.uniform(0.0, f_max, size=m)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=m)
        return np.cos(2.0 * np.pi * pos_mm[:, None] * freqs[None, :] + phases[None, :])

    by, bx = basis(shape[0]), basis(shape[1])
    coef = rng.standard_normal((m, m))
    field = (by @ coef @ bx.T).astype(np.float32)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 1e-6 else np.zeros(shape, np.float32)


@dataclass(frozen=True)
class BackgroundParams:
    """The random draws of one procedural background (canonical intensity units)."""

    beta: float
    mean: float
    anatomical_std: float
    density_std: float


def sample_background_params(rng: np.random.Generator, cfg: SynthConfig) -> BackgroundParams:
    return BackgroundParams(
        beta=float(rng.uniform(*cfg.beta_psd)),
        mean=float(rng.uniform(*cfg.background_mean)),
        anatomical_std=float(rng.uniform(*cfg.anatomical_std)),
        density_std=float(rng.uniform(*cfg.density_std)),
    )


def procedural_background(rng: np.random.Generator, shape: tuple[int, int], spacing_mm: float = CANONICAL_SPACING_MM,
                          cfg: SynthConfig = SynthConfig(), params: BackgroundParams | None = None) -> np.ndarray:
    """B = mean + anatomical_std * N_beta + density_std * D, clipped to >= 0 (float32 (H, W))."""
    p = params if params is not None else sample_background_params(rng, cfg)
    noise = powerlaw_noise(rng, shape, p.beta)
    dens = density_field(rng, shape, spacing_mm, cfg)
    b = noise
    b *= np.float32(p.anatomical_std)
    b += np.float32(p.density_std) * dens
    b += np.float32(p.mean)
    np.maximum(b, 0.0, out=b)
    return b


def radial_power_spectrum(image: np.ndarray, hann: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged periodogram of a patch: (frequency cycles/px, mean power), DC left out. A Hann
    window (default) keeps the edge discontinuity of a non-periodic patch from leaking ∝ 1/f² power."""
    img = np.asarray(image, np.float64)
    img = img - img.mean()
    if hann:
        img = img * np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    power = np.abs(np.fft.fft2(img)) ** 2
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    df = 1.0 / max(img.shape)
    bins = np.rint(f / df).astype(np.int64)
    counts = np.bincount(bins.ravel())
    sums = np.bincount(bins.ravel(), weights=power.ravel())
    keep = counts > 0
    freqs = np.arange(len(counts))[keep] * df
    mean_power = sums[keep] / counts[keep]
    return freqs[1:], mean_power[1:]


def psd_slope(image: np.ndarray, f_lo: float = 0.02, f_hi: float = 0.25, hann: bool = True) -> float:
    """Measured beta: minus the log-log slope of the radial power spectrum between f_lo and f_hi (cycles/px)."""
    f, p = radial_power_spectrum(image, hann)
    sel = (f >= f_lo) & (f <= f_hi) & (p > 0)
    slope, _ = np.polyfit(np.log(f[sel]), np.log(p[sel]), 1)
    return float(-slope)


# ----------------------------------------------------------------------------------------- real negatives

def list_images(folder: str | Path) -> list[Path]:
    """Image files (PNG, TIFF, PGM, DICOM) directly in or below `folder`, sorted."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def train_split_backgrounds(shared_data_dir: str | Path, split: str = "train") -> list[tuple[Path, float]]:
    """(path, spacing_mm) of the negatives in `split` of `shared_data_dir/splits.csv` (or of the csv itself
    when a file is given; paths are relative to its folder). Only `train` may feed the shipped weights;
    mini-MIAS calcification cases (mias/calcifications.csv) are left out even if listed."""
    given = Path(shared_data_dir)
    splits_csv = given if given.is_file() else given / "splits.csv"
    root = splits_csv.parent
    excluded: set[str] = set()
    calc_csv = root / "mias" / "calcifications.csv"
    if calc_csv.is_file():
        with calc_csv.open(newline="") as fh:
            excluded = {row["image"] for row in csv.DictReader(fh)}
    out: list[tuple[Path, float]] = []
    with splits_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = root / row["path"]
            if row["split"].strip() != split or path.stem in excluded:
                continue
            out.append((path, float(row["spacing_mm"])))
    return out


@dataclass(frozen=True)
class _LoadedNegative:
    image: np.ndarray        # canonical float32
    breast_mask: np.ndarray  # bool
    input_spacing_mm: float | None = None  # pixel pitch of the source file (None: unknown)


class RealNegativeSampler:
    """Random canonical patches of real negative mammograms, lying inside the breast mask.

    `sources`: (path, spacing_mm or None) pairs; images are read with `io.read_mammogram` and brought to
    canonical form with `canonical.to_canonical` on first use and cached (the cache is not pickled, so
    DataLoader workers load their own copy). Sampling uses only the rng passed in: deterministic.
    """

    def __init__(self, sources: Iterable[tuple[str | Path, float | None]], cfg: SynthConfig = SynthConfig()) -> None:
        self.sources: tuple[tuple[Path, float | None], ...] = tuple((Path(p), s) for p, s in sources)
        if not self.sources:
            raise ValueError("RealNegativeSampler needs at least one image")
        self.cfg = cfg
        self._preloaded: dict[int, _LoadedNegative] = {}   # given in memory: pickled with the sampler
        self._images: dict[int, _LoadedNegative] = {}      # read from files: not pickled
        self._origins: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, spacing_mm: float | None = None,
                    cfg: SynthConfig = SynthConfig()) -> "RealNegativeSampler":
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"{folder}: no PNG/TIFF/PGM/DICOM images found")
        return cls([(p, spacing_mm) for p in files], cfg)

    @classmethod
    def from_canonical(cls, images: Sequence[object], cfg: SynthConfig = SynthConfig()) -> "RealNegativeSampler":
        """From canonical images already in memory (objects with `image` and `breast_mask`, e.g.
        `CanonicalImage`s as `train.load_train_backgrounds` returns them)."""
        sampler = cls([(Path(f"<canonical {i}>"), None) for i in range(len(images))], cfg)
        for i, can in enumerate(images):
            spacing = getattr(can, "input_spacing_mm", None)
            sampler._preloaded[i] = _LoadedNegative(np.asarray(can.image, np.float32),
                                                    np.asarray(can.breast_mask, bool),
                                                    None if spacing is None else float(spacing))
        return sampler

    def __len__(self) -> int:
        return len(self.sources)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"], state["_origins"] = {}, {}
        return state

    def load(self, index: int) -> _LoadedNegative:
        """Canonical image and breast mask of source `index` (cached)."""
        if index in self._preloaded:
            return self._preloaded[index]
        if index not in self._images:
            from mcgenref_fast.canonical import to_canonical
            from mcgenref_fast.io import read_mammogram

            path, spacing = self.sources[index]
            can = to_canonical(read_mammogram(path, spacing_mm=spacing))
            if abs(can.spacing_mm - self.cfg.spacing_mm) > 1e-9:
                raise ValueError(f"{path}: canonical spacing {can.spacing_mm} != SynthConfig.spacing_mm")
            self._images[index] = _LoadedNegative(np.asarray(can.image, np.float32),
                                                  np.asarray(can.breast_mask, bool), float(can.input_spacing_mm))
        return self._images[index]

    def _valid_origins(self, index: int, size_px: int) -> np.ndarray:
        """(k, 2) top-left corners (stride REAL_ORIGIN_STRIDE_PX) of size_px windows inside the breast."""
        key = (index, size_px)
        if key not in self._origins:
            mask = self.load(index).breast_mask
            h, w = mask.shape
            if h < size_px or w < size_px:
                self._origins[key] = np.zeros((0, 2), np.int64)
                return self._origins[key]
            sat = np.zeros((h + 1, w + 1), np.int64)
            sat[1:, 1:] = mask.cumsum(0, dtype=np.int64).cumsum(1)
            ys = np.arange(0, h - size_px + 1, REAL_ORIGIN_STRIDE_PX)
            xs = np.arange(0, w - size_px + 1, REAL_ORIGIN_STRIDE_PX)
            y0, x0 = ys[:, None], xs[None, :]
            inside = sat[y0 + size_px, x0 + size_px] - sat[y0, x0 + size_px] - sat[y0 + size_px, x0] + sat[y0, x0]
            need = self.cfg.real_min_breast_fraction * size_px * size_px
            vy, vx = np.nonzero(inside >= need - 1e-9)
            self._origins[key] = np.stack([ys[vy], xs[vx]], axis=1)
        return self._origins[key]

    def sample(self, rng: np.random.Generator, patch_px: int,
               spacing_mm: float = CANONICAL_SPACING_MM) -> np.ndarray:
        """A (patch_px, patch_px) float32 patch at `spacing_mm` (resampled from canonical when it differs)."""
        return self.sample_with_source(rng, patch_px, spacing_mm)[0]

    def sample_with_source(self, rng: np.random.Generator, patch_px: int,
                           spacing_mm: float = CANONICAL_SPACING_MM) -> tuple[np.ndarray, float | None]:
        """`sample`'s patch and the pixel pitch (mm) of the file it came from (None when unknown); the same
        rng draws as `sample`."""
        h = self.cfg.spacing_mm
        size = int(round(patch_px * spacing_mm / h))
        order = rng.permutation(len(self.sources))
        for index in order:
            origins = self._valid_origins(int(index), size)
            if len(origins):
                y, x = origins[rng.integers(len(origins))]
                loaded = self.load(int(index))
                crop = loaded.image[y:y + size, x:x + size]
                patch = _resize(crop, patch_px) if size != patch_px else crop.astype(np.float32, copy=True)
                return patch, loaded.input_spacing_mm
        raise ValueError(f"no real negative holds a {size}x{size} canonical px patch inside its breast mask")


def _resize(patch: np.ndarray, size_px: int) -> np.ndarray:
    """Area-averaging (down) or linear (up) resize of a square patch to size_px² (float32)."""
    from skimage.transform import resize

    down = patch.shape[0] > size_px
    out = resize(patch, (size_px, size_px), order=1, mode="reflect", anti_aliasing=down, preserve_range=True)
    return out.astype(np.float32)


def as_sampler(backgrounds: "RealNegativeSampler | Sequence[object] | None",
               cfg: SynthConfig) -> RealNegativeSampler | None:
    """Accept a sampler, None, a list of (path, spacing_mm) pairs, a list of canonical images (objects with
    `image` and `breast_mask`), or a folder of images (spacing read from the files)."""
    if backgrounds is None or isinstance(backgrounds, RealNegativeSampler):
        return backgrounds
    if isinstance(backgrounds, (str, Path)):
        return RealNegativeSampler.from_folder(backgrounds, None, cfg)
    items = list(backgrounds)
    if items and all(hasattr(b, "image") and hasattr(b, "breast_mask") for b in items):
        return RealNegativeSampler.from_canonical(items, cfg)
    return RealNegativeSampler([(p, s) for p, s in items], cfg)

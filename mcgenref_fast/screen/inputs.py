"""What `mcgenref screen INPUT` screens: a folder (walked recursively), a file list, or a CSV manifest.

- Folder: every regular file whose name ends in a mammogram extension (.dcm .dicom .png .tif .tiff .pgm,
  any case), plus every other file whose content is DICOM (the 'DICM' marker after the 128-byte
  preamble: PACS exports often have no extension, or a UID as name, '1.2.840....45'). Hidden files and
  folders (name starting with '.'), `DICOMDIR` files, symlinked folders (loops) and anything that is not a
  regular file are skipped; so is the output folder when it lies inside the input folder. Sorted by path,
  so every run sees the same order.
- File list (`.txt`, `.lst`, `.list`): one path per line; blank lines and lines starting with '#' are
  skipped; a relative path is relative to the list file's folder; a listed folder is walked as above.
  A listed path that does not exist is kept: it becomes an error row, never silently dropped.
- CSV manifest (`.csv`): a header with a `path` column and an optional `spacing_mm` column (empty = none;
  the run's `--spacing` then applies); other columns are ignored; relative paths as for lists.
- Any other single file: that one image.

Each input is a `ScreenInput(path, spacing_mm)` with the path normalised as in index.csv (absolute,
symlinks resolved); an input named twice is kept once (the first one).
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mcgenref_fast.errors import ConfigError
from mcgenref_fast.output_layout import normalise_input_path

IMAGE_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".pgm"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
MANIFEST_EXTENSIONS = frozenset({".csv"})
SKIPPED_NAMES = frozenset({"dicomdir"})


@dataclass(frozen=True)
class ScreenInput:
    """One input of a screening run: normalised absolute path, and its own spacing (None: the run's)."""

    path: str
    spacing_mm: float | None = None


def has_dicom_preamble(path: str | Path) -> bool:
    """True when bytes 128..131 of the file are b'DICM' (a DICOM Part 10 file, whatever its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_candidate(entry: os.DirEntry[str]) -> bool:
    if _is_hidden(entry.name) or entry.name.casefold() in SKIPPED_NAMES:
        return False
    named_as_image = Path(entry.name).suffix.casefold() in IMAGE_EXTENSIONS
    try:
        if not entry.is_file(follow_symlinks=True):       # sockets, fifos, devices, folders, dangling links
            if named_as_image and not entry.is_dir(follow_symlinks=True):
                warnings.warn(f"{entry.path}: not a regular file (a dangling link, a pipe or a device); skipped",
                              stacklevel=3)
            return False
    except OSError as exc:
        if named_as_image:
            warnings.warn(f"{entry.path}: cannot be examined ({exc.strerror or exc}); skipped", stacklevel=3)
        return False
    if named_as_image:
        return True
    return has_dicom_preamble(entry.path)


def walk_folder(folder: str | Path, exclude: Iterable[str | Path] = ()) -> Iterator[str]:
    """Mammogram files under `folder` (recursive, sorted, see the module doc), as normalised paths."""
    excluded = {normalise_input_path(p) for p in exclude}
    stack = [normalise_input_path(folder)]
    found: list[str] = []
    while stack:
        current = stack.pop()
        if current in excluded:
            continue
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            warnings.warn(f"{current}: cannot list this folder ({exc.strerror or exc}); skipped", stacklevel=2)
            continue
        subdirs = []
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
            except OSError:
                continue
            if _is_candidate(entry):
                found.append(normalise_input_path(entry.path))
        stack.extend(reversed(subdirs))
    yield from sorted(found)


def _resolve_listed(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _parse_spacing(value: str | None, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        spacing = float(value)
    except ValueError:
        raise ConfigError(f"{where}: spacing_mm {value!r} is not a number") from None
    if not math.isfinite(spacing) or spacing <= 0:
        raise ConfigError(f"{where}: spacing_mm {value!r} must be a positive number of mm")
    return spacing


def read_file_list(list_path: str | Path, exclude: Iterable[str | Path] = ()) -> list[ScreenInput]:
    """Inputs named in a text file (one path per line; '#' comments; relative to the list's folder)."""
    list_path = Path(list_path)
    try:
        lines = list_path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{list_path}: cannot read the file list ({exc})") from exc
    base = list_path.resolve().parent
    items: list[ScreenInput] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        items.extend(_expand(_resolve_listed(text, base), None, exclude))
    return items


def read_manifest(csv_path: str | Path, exclude: Iterable[str | Path] = ()) -> list[ScreenInput]:
    """Inputs of a CSV manifest: column `path` (required), `spacing_mm` (optional, mm)."""
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "path" not in fields:
                raise ConfigError(f"{csv_path}: a manifest needs a 'path' column (found: {', '.join(fields) or 'no header'})")
            reader.fieldnames = fields
            items: list[ScreenInput] = []
            for line_no, row in enumerate(reader, start=2):
                text = (row.get("path") or "").strip()
                if not text:
                    continue
                spacing = _parse_spacing(row.get("spacing_mm"), f"{csv_path}, line {line_no}")
                items.extend(_expand(_resolve_listed(text, base), spacing, exclude))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{csv_path}: cannot read the manifest ({exc})") from exc
    return items


def _expand(path: Path, spacing_mm: float | None, exclude: Iterable[str | Path]) -> list[ScreenInput]:
    if path.is_dir():
        return [ScreenInput(p, spacing_mm) for p in walk_folder(path, exclude)]
    return [ScreenInput(normalise_input_path(path), spacing_mm)]


def dedupe(items: Iterable[ScreenInput]) -> list[ScreenInput]:
    """Keep the first occurrence of each path (a warning says how many repeats were dropped)."""
    seen: set[str] = set()
    out: list[ScreenInput] = []
    for item in items:
        if item.path in seen:
            continue
        seen.add(item.path)
        out.append(item)
    dropped = 0 if not isinstance(items, list) else len(items) - len(out)
    if dropped:
        warnings.warn(f"{dropped} input(s) named more than once: each is screened once", stacklevel=2)
    return out


def discover_inputs(source: str | Path, exclude: Iterable[str | Path] = ()) -> list[ScreenInput]:
    """The inputs `source` names (folder, list, manifest or one image); `exclude`: folders to skip (OUT)."""
    source = Path(source).expanduser()
    exclude = list(exclude)
    if source.is_dir():
        items = [ScreenInput(p) for p in walk_folder(source, exclude)]
    elif source.is_file():
        suffix = source.suffix.casefold()
        if suffix in MANIFEST_EXTENSIONS:
            items = read_manifest(source, exclude)
        elif suffix in LIST_EXTENSIONS:
            items = read_file_list(source, exclude)
        else:
            items = [ScreenInput(normalise_input_path(source))]
    else:
        raise ConfigError(f"{source}: no such file or folder (expected a folder, a .txt file list or a .csv manifest)")
    return dedupe(list(items))

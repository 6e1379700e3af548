"""Atomic file writes: a reader sees either the previous file or the complete new one, never a partial one.

Every output goes through `atomic_open`: the bytes are written to a hidden temporary file in the SAME
directory (so `os.replace` is a rename on one filesystem, atomic on POSIX and Windows), flushed and
fsync'ed, then renamed over the target; the directory is fsync'ed so the rename survives a crash. If
anything fails before the rename, the temporary file is removed and the previous version stays intact.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from .errors import McGenRefError, OutputError

_TMP_SUFFIX = ".tmp"


def _tmp_path_for(path: Path) -> Path:
    """Hidden, unique sibling of `path` (same directory → same filesystem → atomic rename)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in `directory` (best effort: not possible on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, text: bool = False, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on clean exit it atomically replaces `path`.

    The parent directory is created when missing. On any exception inside the block the temporary file
    is deleted, `path` is left as it was, and the error is re-raised as `OutputError` naming `path`
    (a `McGenRefError` or a non-`Exception` such as KeyboardInterrupt passes through unchanged).
    The temporary file is created with mode 0o666 minus the umask, like an ordinary `open()`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output directory ({exc})") from exc
    tmp = _tmp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a temporary file beside it ({exc})") from exc
    committed = False
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": encoding, "newline": ""} if text else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        committed = True
        _fsync_dir(path.parent)
    except McGenRefError:
        raise
    except Exception as exc:
        raise OutputError(f"{path}: write failed, previous version kept ({type(exc).__name__}: {exc})") from exc
    finally:
        if not committed:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Atomically write `path` by calling `writer(binary_file)`; returns `path`."""
    with atomic_open(path) as fh:
        writer(fh)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Atomically write raw bytes."""
    return write_with(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write text (no newline translation: what you pass is what lands on disk)."""
    with atomic_open(path, text=True, encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def to_jsonable(obj: Any, where: str = "$") -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, Paths; non-finite floats raise ValueError.

    `where` is the JSON path used in the error message, e.g. `$.mcs[3].contrast`, so a NaN that slipped
    out of a computation is reported where it is instead of landing in the file as invalid JSON.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot hold")
        return value
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ValueError(f"{where} has type {type(obj).__name__}, which JSON cannot hold")


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Atomically write `obj` as strict JSON (numpy types converted; NaN/inf refused with their location)."""
    try:
        text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    except ValueError as exc:
        raise OutputError(f"{path}: cannot encode as JSON: {exc}") from exc
    return write_text_atomic(path, text)


def write_png_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Atomically write a PNG from uint8 (H, W) / (H, W, 3|4) or uint16 (H, W) pixels via Pillow."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    ok = (arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))) or (
        arr.dtype == np.uint16 and arr.ndim == 2
    )
    if not ok:
        raise OutputError(f"{path}: PNG needs uint8 (H,W)/(H,W,3|4) or uint16 (H,W), got {arr.dtype} {arr.shape}")
    image = Image.fromarray(arr)
    return write_with(path, lambda fh: image.save(fh, format="PNG"))


def write_dicom_atomic(path: str | Path, dataset: Any) -> Path:
    """Atomically write a pydicom Dataset (with its file meta) as a DICOM Part 10 file."""
    import pydicom

    return write_with(path, lambda fh: pydicom.dcmwrite(fh, dataset, enforce_file_format=True))

"""The output layout every command writes: `OUT/<key>/{mask.png, prob.png, overlay.png, findings.json,
seg.dcm}` and `OUT/index.csv` (input path → key).

Keys: the SOPInstanceUID for DICOM input (globally unique, and what a PACS user searches for); the file
stem for other inputs, made filesystem-safe, with -2, -3, ... when another input already holds it
(compared case-insensitively, so macOS/Windows folders never merge). A key, once in index.csv, stays
with its input path across re-runs, so results can be found again and re-runs overwrite in place.
index.csv is rewritten in full and atomically replaced on every `record` (under an advisory lock where
the OS has one), so a reader never sees a torn file; use `record_many` to batch a large run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .atomic import write_text_atomic
from .errors import OutputError

INDEX_NAME = "index.csv"
INDEX_HEADER = ("input_path", "key")
MASK_PNG = "mask.png"
PROB_PNG = "prob.png"
OVERLAY_PNG = "overlay.png"
FINDINGS_JSON = "findings.json"
SEG_DCM = "seg.dcm"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_KEY_CHARS = 120


@dataclass(frozen=True)
class OutputPaths:
    """The files of one input's output folder."""

    directory: Path
    mask_png: Path
    prob_png: Path
    overlay_png: Path
    findings_json: Path
    seg_dcm: Path


def normalise_input_path(input_path: str | Path) -> str:
    """The index's spelling of an input path: absolute, symlinks resolved."""
    return str(Path(input_path).expanduser().resolve())


def safe_key(text: str) -> str:
    """A folder name from a file stem: runs of characters outside [A-Za-z0-9._-] become '_'."""
    key = _UNSAFE.sub("_", text).strip("._") or "image"
    return key[:_MAX_KEY_CHARS]


def _is_dicom_key(key: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)+", key))


class OutputLayout:
    """Keys, folders and index.csv of one output directory."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.index_path = self.out_dir / INDEX_NAME
        self._index: dict[str, str] = self._read_index()
        self._reserved: dict[str, str] = {}     # input path → key handed out but not yet recorded
        self._taken_keys: set[str] = self._keys_in_use()  # casefolded keys of _index and _reserved

    def check_writable(self) -> None:
        """Create the output folder and write (then remove) a probe file in it: OutputError now, before any
        analysis, rather than after the first image's minutes of work when the folder is a file, read-only or
        on a full disk."""
        probe = self.out_dir / f".write-probe-{os.getpid()}"
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: cannot write outputs there ({exc.strerror or exc}): "
                              f"choose another --out") from None

    # ---------------------------------------------------------------- index.csv
    def _read_index(self) -> dict[str, str]:
        if not self.index_path.is_file():
            return {}
        try:
            with open(self.index_path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OutputError(f"{self.index_path}: cannot read the output index ({exc})") from exc
        if not rows or tuple(rows[0]) != INDEX_HEADER:
            raise OutputError(
                f"{self.index_path}: not an mcgenref_fast index (expected header {','.join(INDEX_HEADER)})")
        index: dict[str, str] = {}
        for line_no, row in enumerate(rows[1:], start=2):
            if len(row) != 2:
                raise OutputError(f"{self.index_path}: line {line_no} has {len(row)} fields, expected 2")
            index[row[0]] = row[1]
        return index

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Advisory lock on OUT/.index.lock (POSIX) so concurrent writers don't drop each other's rows."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:       # Windows: single writer assumed
            yield
            return
        with open(self.out_dir / ".index.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def index(self) -> dict[str, str]:
        """Input path → key, as recorded (a copy)."""
        return dict(self._index)

    # ---------------------------------------------------------------- keys
    def _keys_in_use(self) -> set[str]:
        """Casefolded keys recorded or handed out (kept up to date, so a new key costs O(1), not O(n))."""
        return {k.casefold() for k in self._index.values()} | {k.casefold() for k in self._reserved.values()}

    def key_for(self, input_path: str | Path, sop_instance_uid: str | None = None) -> str:
        """The input's key: its recorded key if any; else the SOPInstanceUID (DICOM); else a free stem."""
        path = normalise_input_path(input_path)
        if path in self._index:
            return self._index[path]
        if path in self._reserved:
            return self._reserved[path]
        if sop_instance_uid:
            key = str(sop_instance_uid).strip()
            if not _is_dicom_key(key):
                raise OutputError(f"{input_path}: SOPInstanceUID {key!r} is not a DICOM UID")
        else:
            stem = safe_key(Path(path).stem)
            key, n = stem, 1
            while key.casefold() in self._taken_keys or _is_dicom_key(key):
                n += 1
                key = f"{stem}-{n}"
        self._reserved[path] = key
        self._taken_keys.add(key.casefold())
        return key

    def dir_for(self, key: str) -> Path:
        """OUT/<key>, created if missing."""
        if not key or key in (".", "..") or "/" in key or "\\" in key or key == INDEX_NAME:
            raise OutputError(f"{self.out_dir}: {key!r} is not a valid output key")
        directory = self.out_dir / key
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{directory}: cannot create the output folder ({exc})") from exc
        return directory

    def paths_for(self, key: str) -> OutputPaths:
        """The output files of `key` (folder created)."""
        d = self.dir_for(key)
        return OutputPaths(d, d / MASK_PNG, d / PROB_PNG, d / OVERLAY_PNG, d / FINDINGS_JSON, d / SEG_DCM)

    # ---------------------------------------------------------------- recording
    def record(self, input_path: str | Path, key: str) -> None:
        """Add `input_path → key` to index.csv (atomic rewrite); a no-op when already recorded."""
        self.record_many([(input_path, key)])

    def record_many(self, pairs: Iterable[tuple[str | Path, str]]) -> None:
        """Add several rows with one rewrite of index.csv."""
        pairs = [(normalise_input_path(p), k) for p, k in pairs]
        with self._locked():
            index = self._read_index()            # rows another process may have added meanwhile
            index.update({p: k for p, k in self._index.items() if p not in index})
            changed = False
            for path, key in pairs:
                old = index.get(path)
                if old == key:
                    continue
                if old is not None:
                    raise OutputError(f"{self.index_path}: {path} is already recorded under key {old!r}, not {key!r}")
                if not _is_dicom_key(key):
                    owners = [p for p, k in index.items() if k.casefold() == key.casefold()]
                    if owners:
                        raise OutputError(f"{self.index_path}: key {key!r} already belongs to {owners[0]}")
                index[path] = key
                changed = True
            if changed:
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(INDEX_HEADER)
                writer.writerows(index.items())
                write_text_atomic(self.index_path, buffer.getvalue())
            self._index = index
            for path, _ in pairs:
                self._reserved.pop(path, None)
            self._taken_keys = self._keys_in_use()  # rows other processes added count too

    def __repr__(self) -> str:
        return f"OutputLayout({os.fspath(self.out_dir)!r}, {len(self._index)} recorded)"

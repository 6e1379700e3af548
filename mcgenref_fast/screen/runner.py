"""The local streaming runner of `mcgenref screen`: many mammograms, flat memory, resumable.

Flow: worker processes (a `ProcessPoolExecutor` on a forkserver context on Linux, spawn elsewhere: never
a plain fork of a process holding torch threads) read and canonicalise files (`decode_input`); the main
process runs the model stage (`Engine.analyse`) and writes the outputs (`Engine.write_outputs`, a
thumbnail). At most `max_in_flight` (default 2 × workers) files are being decoded or wait decoded, so
memory stays flat however many files there are; the model stage consumes them as they complete.

Bookkeeping (`RunContext`, shared with the Ray runner):
- keys: non-DICOM inputs get their stem key from `OutputLayout.key_for` when they are submitted, in
  input order (so collisions resolve the same way in every run, resumed or not, local or Ray); DICOM
  inputs are keyed by their SOPInstanceUID once read (no order dependence); a DICOM without one gets its
  stem plus a hash of its path.
- the journal (`journal.py`) records started/done/failed per input, fsync'ed; a restart skips done
  inputs (same settings, same file, findings.json present) and redoes the rest;
- index.csv is updated in batches (`record_many`, every 5 s or so) and completed from the journal on
  restart, so a kill between an image's outputs and the index loses nothing;
- a file that fails (unreadable, wrong modality, ...) becomes a `failed` event and the run goes on; a
  worker process that dies (decoder crash, out of memory) breaks the pool: the pool is rebuilt and the
  files that were in flight are decoded again one at a time, so only the culprit fails (`DecoderCrashed`);
- at the end (also after Ctrl-C) summary.csv, exams.csv, errors.csv and report.html are rebuilt from the
  journal (`summary.py`, `report.py`).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from mcgenref_fast import __version__
from mcgenref_fast.errors import OutputError
from mcgenref_fast.output_layout import FINDINGS_JSON, OutputLayout, safe_key
from mcgenref_fast.screen.inputs import ScreenInput
from mcgenref_fast.screen.journal import DEFAULT_MAX_CRASHES, JOURNAL_NAME, Journal, load_states
from mcgenref_fast.screen.summary import Tables, rebuild_tables, row_from_document, write_tables

if TYPE_CHECKING:  # the core of the runner must not import torch at module level (worker start-up)
    from mcgenref_fast.pipeline import Engine

EngineFactory = Callable[..., "Engine"]
LOCK_NAME = ".screen.lock"
_STALE_TMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")   # atomic.py's temporary names


# ==================================================================================================
# Worker side: read + canonicalise one file (module level: picklable, importable by the forkserver)
# ==================================================================================================
@dataclass(frozen=True, eq=False)
class Decoded:
    """A file read and canonicalised in a worker."""

    mammogram: Any
    canonical: Any
    warnings: list[str]
    seconds: float
    stat: tuple[int, int] | None          # (size, mtime_ns) of the file when it was read


@dataclass(frozen=True)
class DecodeFailure:
    """Why a file could not be read (exception type name and message: exceptions are not pickled)."""

    error_type: str
    message: str
    warnings: list[str]


def file_stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def decode_input(path: str, spacing_mm: float | None, allow_for_processing: bool, canonical_cfg: Any) -> Decoded | DecodeFailure:
    """`read_mammogram` + `to_canonical`; any exception becomes a `DecodeFailure` (run goes on)."""
    from mcgenref_fast.canonical import to_canonical
    from mcgenref_fast.io import read_mammogram

    t = time.perf_counter()
    stat = file_stat(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mammogram = read_mammogram(path, spacing_mm=spacing_mm, allow_for_processing=allow_for_processing)
            canonical = to_canonical(mammogram, canonical_cfg) if canonical_cfg is not None else to_canonical(mammogram)
        except Exception as exc:  # noqa: BLE001 - every failure of one file is recorded, the run goes on
            return DecodeFailure(type(exc).__name__, str(exc), [str(w.message) for w in caught])
        except BaseException as exc:  # a native decoder's panic (pyo3 PanicException) is no Exception
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            return DecodeFailure(type(exc).__name__, f"{path}: the decoder failed ({exc})",
                                 [str(w.message) for w in caught])
    return Decoded(mammogram, canonical, [str(w.message) for w in caught], time.perf_counter() - t, stat)


def _worker_init() -> None:
    """Decode workers: one thread each (the main process owns the cores for the model), ignore Ctrl-C
    (the main process handles it and shuts the pool down)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_mp_context() -> Any:
    """forkserver where available (Linux/macOS), else spawn; the forkserver preloads this module."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods and sys.platform != "darwin":
        ctx = multiprocessing.get_context("forkserver")
        with contextlib.suppress(Exception):
            ctx.set_forkserver_preload(["mcgenref_fast.screen.runner"])
        return ctx
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    """Decode processes by default: half the cores, at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# ==================================================================================================
# Model side: analyse a decoded image and write its outputs (main process, or a Ray actor)
# ==================================================================================================
def engine_fingerprint(engine: Any) -> str:
    """What decides an engine's outputs: its config hash, weights digests and the package version."""
    blob = json.dumps({"config_hash": getattr(engine, "config_hash", None),
                       "weights": getattr(engine, "weights_sha256", None), "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def input_fingerprint(engine_fp: str, spacing_mm: float | None, allow_for_processing: bool) -> str:
    blob = json.dumps([engine_fp, spacing_mm, bool(allow_for_processing)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fallback_key(path: str) -> str:
    """Key of a DICOM without SOPInstanceUID: its stem and a hash of its path (order-independent)."""
    return f"{safe_key(Path(path).stem)[:100]}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


def key_for_decoded(layout: OutputLayout, path: str, meta: Any, hint: str | None) -> str:
    """The output key of a decoded input: the key reserved at submission, else the SOPInstanceUID."""
    if hint:
        return hint
    uid = getattr(meta, "sop_instance_uid", None)
    if uid:
        return layout.key_for(path, uid)
    return layout.index().get(path) or fallback_key(path)


def analyse_decoded(engine: Any, decoded: Decoded) -> tuple[Any, float]:
    """The model stage of one decoded image: (Analysis, seconds)."""
    t = time.perf_counter()
    analysis = engine.analyse(decoded.canonical)
    analysis.timings_s.update(read_canonical_s=decoded.seconds)
    return analysis, time.perf_counter() - t


def write_analysed(engine: Any, layout: OutputLayout, path: str, key: str, decoded: Decoded, analysis: Any,
                   thumbnails: bool = True, seconds_so_far: float = 0.0) -> tuple[dict[str, Any], float]:
    """Every output of one image (+ its thumbnail); returns (summary row, seconds decode + model + write)."""
    from mcgenref_fast.findings_json import image_block

    t = time.perf_counter()
    engine.write_outputs(path, key, layout, decoded.mammogram, analysis)
    meta = decoded.mammogram.meta
    document = {"image": image_block(meta.shape, meta.spacing_mm, meta),
                "provenance": {"spacing_mm": meta.spacing_mm, "spacing_source": meta.spacing_source},
                **analysis.findings.to_dict()}
    if thumbnails:
        from mcgenref_fast.screen.report import ensure_thumbnail

        ensure_thumbnail(layout.out_dir, key)
    seconds = decoded.seconds + seconds_so_far + time.perf_counter() - t
    return row_from_document(key, path, document, seconds), seconds


def process_decoded(engine: Any, layout: OutputLayout, path: str, key: str, decoded: Decoded,
                    thumbnails: bool = True) -> tuple[dict[str, Any], float]:
    """Analyse and write one decoded image: (summary row, seconds)."""
    analysis, seconds = analyse_decoded(engine, decoded)
    return write_analysed(engine, layout, path, key, decoded, analysis, thumbnails, seconds)


def sniff_is_dicom(path: str) -> bool | None:
    """True/False from the file's content (the reader's own sniffing); None when it cannot be read."""
    from mcgenref_fast.io import sniff_format

    try:
        return sniff_format(path)[0] == "dicom"
    except Exception:  # noqa: BLE001 - the reader will report it properly
        return None


# ==================================================================================================
# Bookkeeping shared by the local and the Ray runner
# ==================================================================================================
@dataclass(frozen=True)
class ScreenOptions:
    """Settings of a screening run (the CLI's `screen` options)."""

    spacing_mm: float | None = None           # --spacing; a manifest's per-input spacing wins
    allow_for_processing: bool = False
    workers: int | None = None                # decode processes (local), actors (Ray, CPU); None: default
    max_in_flight: int | None = None          # local: files decoding or decoded-waiting; None: 2 × workers
    progress: bool = True
    report: bool = True
    thumbnails: bool = True
    max_crashes: int = DEFAULT_MAX_CRASHES
    index_interval_s: float = 5.0             # index.csv rewritten at most this often (and at the end)
    max_tasks_per_child: int | None = 256
    write_behind: bool = True                 # local: write image n's outputs while analysing n+1
    decode_fn: Callable[..., Any] = decode_input   # module-level function (tests inject failures)


@dataclass
class ScreenResult:
    """What a run did; `exit_status` is 0 when every input is screened, else 2."""

    out_dir: Path
    n_inputs: int
    n_skipped: int                 # done by an earlier run, not redone
    n_processed: int               # screened by this run (done)
    n_failed: int                  # inputs whose last attempt failed (this run or earlier ones)
    n_flagged: int
    n_exams: int
    n_pending: int                 # neither done nor failed (interrupted run)
    seconds: float
    tables: Tables = field(repr=False, default_factory=Tables)
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_status(self) -> int:
        return 0 if self.n_failed == 0 and self.n_pending == 0 else 2


class RunContext:
    """Output folder lock, layout, journal, index batching, progress bar and the final tables."""

    def __init__(self, out_dir: str | Path, items: Sequence[ScreenInput], options: ScreenOptions) -> None:
        self.out_dir = Path(out_dir)
        self.items = list(items)
        self.options = options
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fh = self._lock()
        except OSError as exc:   # a file in the way, no permission, read-only file system
            raise OutputError(f"{self.out_dir}: cannot use as the output folder ({exc.strerror or exc}): "
                              f"choose another --out") from None
        try:
            self.layout = OutputLayout(self.out_dir)
            self.journal = Journal(self.out_dir / JOURNAL_NAME)
            self._complete_index_from_journal()
        except OSError as exc:
            self._lock_fh.close()
            raise OutputError(f"{self.out_dir}: its journal or index cannot be read or written "
                              f"({exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}): fix or remove it, "
                              f"or choose another --out") from None
        except BaseException:
            self._lock_fh.close()
            raise
        self.n_skipped = 0
        self._index_pending: list[tuple[str, str]] = []
        self._index_last = time.monotonic()
        self._index_cost_s = 0.0
        self.n_processed = 0
        self.n_failed_now = 0
        self.n_flagged_now = 0
        self.bar: Any = None
        self.t0 = time.perf_counter()
        self.engine_fp: str | None = None

    # ---------------------------------------------------------------------------------- set-up
    def _lock(self) -> Any:
        fh = open(self.out_dir / LOCK_NAME, "a")
        try:
            import fcntl
        except ImportError:       # Windows: one run per folder assumed
            return fh
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise OutputError(f"{self.out_dir}: another `mcgenref screen` run is writing to this folder") from None
        return fh

    def _complete_index_from_journal(self) -> None:
        """Inputs the journal says are done but index.csv lacks (killed between the two): record them."""
        index = self.layout.index()
        missing = [(p, st.key) for p, st in self.journal.states.items()
                   if st.status == "done" and st.key and p not in index]
        if missing:
            self.layout.record_many(missing)

    def spacing_for(self, item: ScreenInput) -> float | None:
        return item.spacing_mm if item.spacing_mm is not None else self.options.spacing_mm

    def fingerprint_for(self, item: ScreenInput) -> str:
        assert self.engine_fp is not None
        return input_fingerprint(self.engine_fp, self.spacing_for(item), self.options.allow_for_processing)

    def plan(self, engine_fp: str) -> list[ScreenInput]:
        """The inputs still to screen (journal-done ones skipped; crash-looping ones failed)."""
        self.engine_fp = engine_fp
        todo = []
        self.n_skipped = 0
        for item in self.items:
            st = self.journal.states.get(item.path)
            if st is not None and st.status == "done" and st.done is not None and self._still_valid(item, st.done):
                self.n_skipped += 1
                continue
            if st is not None and st.crashes >= self.options.max_crashes:
                if st.status != "failed":
                    self.journal.failed(item.path, st.key, "RunCrashed",
                                        f"{item.path}: the run stopped {st.crashes} times while this image was in "
                                        "its model stage (crash or kill); skipped - screen it alone with "
                                        "`mcgenref segment` to see why")
                continue
            todo.append(item)
        self._remove_stale_temporaries(todo)
        self.journal.run_started(n_inputs=len(self.items), n_todo=len(todo), fingerprint=engine_fp)
        return todo

    def _remove_stale_temporaries(self, todo: Sequence[ScreenInput]) -> None:
        """Hidden temporaries of atomic writes that a killed run left (in OUT, OUT/thumbs and the folders
        of the inputs to redo); nobody else writes there while the run holds the folder's lock."""
        folders = [self.out_dir, self.out_dir / "thumbs"]
        for item in todo:
            st = self.journal.states.get(item.path)
            if st is not None and st.key and "/" not in st.key and st.key not in (".", ".."):
                folders.append(self.out_dir / st.key)
        for folder in folders:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if _STALE_TMP.match(name):
                    with contextlib.suppress(OSError):
                        os.unlink(folder / name)

    def _still_valid(self, item: ScreenInput, rec: dict[str, Any]) -> bool:
        if rec.get("fingerprint") != self.fingerprint_for(item):
            return False
        stat = file_stat(item.path)
        if stat is None or [rec.get("size"), rec.get("mtime_ns")] != list(stat):
            return False
        key = rec.get("key")
        return bool(key) and (self.out_dir / key / FINDINGS_JSON).is_file()

    def key_hint(self, item: ScreenInput) -> str | None:
        """The key reserved at submission for a non-DICOM input (input order ⇒ stable collisions)."""
        if sniff_is_dicom(item.path) is False:
            try:
                return self.layout.key_for(item.path)
            except OutputError:
                return None
        return None

    # ---------------------------------------------------------------------------------- progress
    def start_progress(self, total: int) -> None:
        if self.n_skipped and self.options.progress:
            print(f"mcgenref screen: {self.n_skipped} of {len(self.items)} inputs already done "
                  f"(journal {self.journal.path.name}); skipping them", file=sys.stderr)
        if self.options.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="screen", dynamic_ncols=True, file=sys.stderr,
                            smoothing=0.05)

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(failed=self.n_failed_now, flagged=self.n_flagged_now, refresh=False)
            self.bar.update(1)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    # ---------------------------------------------------------------------------------- events
    def record_failed(self, item: ScreenInput, key: str | None, error_type: str, message: str) -> None:
        self.journal.failed(item.path, key, error_type, message)
        self.n_failed_now += 1
        self.message(f"mcgenref screen: failed: {message if item.path in message else f'{item.path}: {message}'}")
        self._tick()

    def record_done(self, item: ScreenInput, key: str, row: dict[str, Any], seconds: float,
                    warnings_: list[str], stat: tuple[int, int] | None) -> None:
        size, mtime_ns = stat if stat is not None else (None, None)
        self.journal.done(item.path, key, fingerprint=self.fingerprint_for(item), size=size, mtime_ns=mtime_ns,
                          seconds=round(seconds, 4), warnings=warnings_, row=row)
        self._index_pending.append((item.path, key))
        self.n_processed += 1
        self.n_flagged_now += bool(row.get("flagged"))
        self.flush_index(force=False)
        self._tick()

    def flush_index(self, force: bool = True) -> None:
        """Record the pending (input, key) rows in index.csv: at the end, or when `index_interval_s` (at
        least 20 times the last rewrite's duration, so rewriting a large index stays under 5 % of the
        run) has passed. The journal already holds them, so a kill in between loses nothing."""
        if not self._index_pending:
            return
        now = time.monotonic()
        if force or now - self._index_last >= max(self.options.index_interval_s, 20 * self._index_cost_s):
            self.layout.record_many(self._index_pending)
            self._index_pending = []
            self._index_last = time.monotonic()
            self._index_cost_s = self._index_last - now

    # ---------------------------------------------------------------------------------- the end
    def finish(self, interrupted: bool = False) -> ScreenResult:
        """Flush the index, rebuild the tables and the report from the journal, release the folder."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        try:
            self.flush_index(force=True)
            states = load_states(self.journal.path, keep_rows=True)
            tables = rebuild_tables(self.out_dir, [it.path for it in self.items], states)
            write_tables(self.out_dir, tables)
            if self.options.report:
                from mcgenref_fast.screen.report import write_report

                write_report(self.out_dir, tables.rows, tables.errors, tables.exams, len(tables.pending))
        finally:
            self.close()
        return ScreenResult(
            out_dir=self.out_dir, n_inputs=len(self.items), n_skipped=self.n_skipped,
            n_processed=self.n_processed, n_failed=len(tables.errors), n_flagged=tables.n_flagged,
            n_exams=len(tables.exams), n_pending=len(tables.pending), seconds=time.perf_counter() - self.t0,
            tables=tables, interrupted=interrupted)

    def close(self) -> None:
        self.journal.close()
        if self._lock_fh is not None:
            self._lock_fh.close()        # releases the flock
            self._lock_fh = None


# ==================================================================================================
# The local runner
# ==================================================================================================
@dataclass
class _Slot:
    item: ScreenInput
    hint: str | None
    seq: int
    alone: bool


class LocalRunner:
    """Decode in worker processes, analyse in this process, write behind in one thread; see the module doc.

    With `options.write_behind` (default) the outputs of image n are written by a writer thread while
    the model analyses image n+1 (PNG encoding and fsync release the GIL; on a GPU the model no longer
    waits for the disk); at most one image waits to be written, so memory stays bounded. The journal,
    the index and the keys are only touched by the calling thread.
    """

    def __init__(self, engine_factory: EngineFactory, out_dir: str | Path, options: ScreenOptions = ScreenOptions()) -> None:
        self.engine_factory = engine_factory
        self.out_dir = Path(out_dir)
        self.options = options
        self.workers = default_workers() if options.workers is None else max(0, int(options.workers))
        self.max_in_flight = options.max_in_flight or max(2, 2 * self.workers)
        self._writer: cf.ThreadPoolExecutor | None = None
        self._writes: deque[tuple[_Slot, str, Any, list[str], tuple[int, int] | None]] = deque()

    def run(self, items: Sequence[ScreenInput]) -> ScreenResult:
        ctx = RunContext(self.out_dir, items, self.options)
        interrupted = False
        in_flight: dict[Any, _Slot] = {}
        current: list[_Slot] = []
        if self.options.write_behind:
            self._writer = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="screen-writer")
        try:
            engine = self.engine_factory()
            todo = ctx.plan(engine_fingerprint(engine))
            ctx.start_progress(len(todo))
            canonical_cfg = getattr(getattr(engine, "cfg", None), "canonical", None)
            if self.workers == 0:
                self._run_inline(ctx, engine, todo, canonical_cfg, current)
            else:
                self._run_pool(ctx, engine, todo, canonical_cfg, in_flight, current)
            self._collect_writes(ctx, keep=0)
        except KeyboardInterrupt:
            interrupted = True
            self._stop_writer()                           # lets the image being written finish
            with contextlib.suppress(Exception):
                self._collect_writes(ctx, keep=0)
            pending = [w[0] for w in self._writes] + list(current) + list(in_flight.values())
            for slot in pending:
                st = ctx.journal.states.get(slot.item.path)
                if st is not None and st.status in ("done", "failed"):
                    continue                              # finished while the interrupt came in
                with contextlib.suppress(Exception):
                    ctx.journal.interrupted(slot.item.path, slot.hint)
        except BaseException:
            self._stop_writer()
            ctx.close()
            raise
        self._stop_writer()
        result = ctx.finish(interrupted=interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return result

    # ---------------------------------------------------------------------------------- one image
    def _handle(self, ctx: RunContext, engine: Any, slot: _Slot, result: Decoded | DecodeFailure) -> None:
        item = slot.item
        if isinstance(result, DecodeFailure):
            ctx.record_failed(item, slot.hint, result.error_type, result.message)
            return
        try:
            key = key_for_decoded(ctx.layout, item.path, result.mammogram.meta, slot.hint)
        except Exception as exc:  # noqa: BLE001
            ctx.record_failed(item, slot.hint, type(exc).__name__, str(exc))
            return
        ctx.journal.started(item.path, key)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                analysis, seconds = analyse_decoded(engine, result)
                if self._writer is None:
                    row, seconds = write_analysed(engine, ctx.layout, item.path, key, result, analysis,
                                                  self.options.thumbnails, seconds)
        except Exception as exc:  # noqa: BLE001 - a failing file is recorded, the run goes on
            ctx.record_failed(item, key, type(exc).__name__, str(exc))
            return
        found = result.warnings + [str(w.message) for w in caught]
        if self._writer is None:
            ctx.record_done(item, key, row, seconds, found, result.stat)
            return
        self._collect_writes(ctx, keep=0)                  # one image written while the next is analysed
        future = self._writer.submit(write_analysed, engine, ctx.layout, item.path, key, result, analysis,
                                     self.options.thumbnails, seconds)
        self._writes.append((slot, key, future, found, result.stat))

    def _collect_writes(self, ctx: RunContext, keep: int) -> None:
        """Journal the finished writes, in submission order; block until at most `keep` are pending."""
        while self._writes and (len(self._writes) > keep or self._writes[0][2].done()):
            slot, key, future, found, stat = self._writes[0]
            exc = future.exception()                    # waits when needed
            self._writes.popleft()
            if exc is not None:
                ctx.record_failed(slot.item, key, type(exc).__name__, str(exc))
            else:
                row, seconds = future.result()
                ctx.record_done(slot.item, key, row, seconds, found, stat)

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _decode_args(self, ctx: RunContext, item: ScreenInput, canonical_cfg: Any) -> tuple[Any, ...]:
        return (item.path, ctx.spacing_for(item), self.options.allow_for_processing, canonical_cfg)

    def _run_inline(self, ctx: RunContext, engine: Any, todo: Sequence[ScreenInput], canonical_cfg: Any,
                    current: list[_Slot]) -> None:
        for seq, item in enumerate(todo):
            slot = _Slot(item, ctx.key_hint(item), seq, False)
            current[:] = [slot]
            self._handle(ctx, engine, slot, self.options.decode_fn(*self._decode_args(ctx, item, canonical_cfg)))
            current.clear()

    # ---------------------------------------------------------------------------------- the pool
    def _new_pool(self) -> cf.ProcessPoolExecutor:
        kwargs: dict[str, Any] = {}
        if self.options.max_tasks_per_child and sys.version_info >= (3, 11):
            kwargs["max_tasks_per_child"] = self.options.max_tasks_per_child
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=default_mp_context(),
                                      initializer=_worker_init, **kwargs)

    def _run_pool(self, ctx: RunContext, engine: Any, todo: Sequence[ScreenInput], canonical_cfg: Any,
                  in_flight: dict[Any, _Slot], current: list[_Slot]) -> None:
        queue: Iterator[ScreenInput] = iter(todo)
        suspects: deque[ScreenInput] = deque()     # in flight when a worker died: decoded again one at a time
        seq = 0
        pool = self._new_pool()
        try:
            while True:
                # keep the window full (one file at a time while suspects are being cleared)
                while True:
                    if suspects:
                        if in_flight:
                            break
                        item, alone = suspects.popleft(), True
                    elif len(in_flight) < self.max_in_flight:
                        item = next(queue, None)  # type: ignore[arg-type]
                        if item is None:
                            break
                        alone = False
                    else:
                        break
                    slot = _Slot(item, ctx.key_hint(item), seq, alone)
                    seq += 1
                    in_flight[pool.submit(self.options.decode_fn, *self._decode_args(ctx, item, canonical_cfg))] = slot
                    if alone:
                        break
                if not in_flight:
                    break
                done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                broken = False
                for fut in sorted(done, key=lambda f: in_flight[f].seq):
                    slot = in_flight.pop(fut)
                    exc = fut.exception()
                    if isinstance(exc, cf.process.BrokenProcessPool):
                        broken = True
                        self._suspect(ctx, slot, suspects)
                        continue
                    if exc is not None:            # cannot happen with decode_input; be safe
                        ctx.record_failed(slot.item, slot.hint, type(exc).__name__, str(exc))
                        continue
                    current[:] = [slot]
                    self._handle(ctx, engine, slot, fut.result())
                    current.clear()
                if broken:
                    for fut, slot in sorted(in_flight.items(), key=lambda kv: kv[1].seq):
                        if fut.done() and fut.exception() is None:
                            current[:] = [slot]
                            self._handle(ctx, engine, slot, fut.result())
                            current.clear()
                        else:
                            self._suspect(ctx, slot, suspects)
                    in_flight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._new_pool()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    @staticmethod
    def _suspect(ctx: RunContext, slot: _Slot, suspects: deque[ScreenInput]) -> None:
        if slot.alone:
            ctx.record_failed(slot.item, slot.hint, "DecoderCrashed",
                              f"{slot.item.path}: the process reading this file died (a decoder crash, or out of memory)")
        else:
            suspects.append(slot.item)


def run_screen(items: Sequence[ScreenInput], engine_factory: EngineFactory, out_dir: str | Path,
               options: ScreenOptions = ScreenOptions(), ray_address: str | None = None, **ray_kwargs: Any) -> ScreenResult:
    """Screen `items` into `out_dir`: the local runner, or the Ray runner when `ray_address` is given
    ('local' starts a local Ray instance; an existing `ray.init` is reused)."""
    if ray_address is not None:
        from mcgenref_fast.screen.ray_runner import RayRunner

        return RayRunner(engine_factory, out_dir, options, address=ray_address, **ray_kwargs).run(items)
    return LocalRunner(engine_factory, out_dir, options).run(items)

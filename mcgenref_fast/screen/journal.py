"""The screening journal: `OUT/journal.jsonl`, one JSON object per line, appended (done/failed fsync'ed).

Events (every one has `event`, `time` (UTC ISO-8601) and, except `run`, `input` = the normalised path):
- `run`: a run began (`pid`, `n_inputs`, `n_todo`, `fingerprint`).
- `started`: work on an input began (`key` when known, `stage`: 'analyse' in the local runner — the
  model stage of the main process —, 'dispatch' in the Ray runner).
- `done`: all outputs of the input are written (`key`, `fingerprint` of the settings, the file's `size`
  and `mtime_ns`, `row` = its summary.csv row, `warnings`, `seconds`).
- `failed`: the input could not be screened (`key` or null, `error_type`, `message`).
- `interrupted`: the run was stopped (Ctrl-C / SIGTERM) while the input was in flight.

A run that restarts skips inputs whose last terminal event is `done` with the same fingerprint, the same
file size and mtime, and whose findings.json still exists; everything else is screened again (failed
inputs are retried). A line cut short by a crash mid-write (kill -9, power loss) is an event that never
happened: the tail after the last newline is cut off when the journal is opened, and any other line that
is not valid JSON is skipped with a warning. An input whose `started` (stage 'analyse') was followed by no
terminal event `max_crashes` times took the run down each time: it is reported as failed
(`RunCrashed`) instead of being retried forever.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from mcgenref_fast.errors import OutputError

JOURNAL_NAME = "journal.jsonl"
TERMINAL_EVENTS = ("done", "failed", "interrupted")
DEFAULT_MAX_CRASHES = 3


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class InputState:
    """What the journal says about one input (the latest of each kind of event)."""

    status: str = "new"                       # 'new' | 'started' | 'done' | 'failed' | 'interrupted'
    key: str | None = None
    done: dict[str, Any] | None = None        # the latest `done` record (None once a later failure came)
    failed: dict[str, Any] | None = None      # the latest `failed` record, while it is the last terminal
    crashes: int = 0                          # 'analyse' starts that no terminal event followed
    n_done: int = 0                           # number of `done` events (a test reads it: each input done once)
    _open_start: bool = field(default=False, repr=False)


def _apply(states: dict[str, InputState], rec: dict[str, Any], keep_rows: bool) -> None:
    event = rec.get("event")
    path = rec.get("input")
    if event == "run" or not isinstance(path, str):
        return
    st = states.get(path)
    if st is None:
        st = states[path] = InputState()
    if rec.get("key"):
        st.key = rec["key"]
    if event == "started":
        if st._open_start:
            st.crashes += 1
        st._open_start = rec.get("stage", "analyse") == "analyse"
        st.status = "started"
        return
    if event not in TERMINAL_EVENTS:
        return
    st._open_start = False
    st.status = event
    if event == "done":
        st.n_done += 1
        st.failed = None
        st.done = rec if keep_rows else {k: v for k, v in rec.items() if k not in ("row", "warnings")}
    elif event == "failed":
        st.done = None
        st.failed = rec


def _finish(states: dict[str, InputState]) -> dict[str, InputState]:
    for st in states.values():
        if st._open_start:               # the journal ends inside this input's model stage: a crash
            st.crashes += 1
            st._open_start = False
    return states


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The journal's events in order; a torn or invalid line is skipped (warned unless it is the last)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    torn_tail = lines.pop() if lines else b""          # after the last newline: never completed
    del torn_tail
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            warnings.warn(f"{path}: line {i} is not valid JSON; ignored", stacklevel=2)
            continue
        if isinstance(rec, dict):
            yield rec


def load_states(path: str | Path, keep_rows: bool = True) -> dict[str, InputState]:
    """Input path → `InputState` from a journal file (missing file: empty)."""
    states: dict[str, InputState] = {}
    for rec in iter_records(path):
        _apply(states, rec, keep_rows)
    return _finish(states)


class Journal:
    """Append-only, fsync'ed JSON-lines journal; opening it repairs a torn last line."""

    def __init__(self, path: str | Path, keep_rows: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self.states = load_states(self.path, keep_rows=keep_rows)
        self._keep_rows = keep_rows
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot open the journal ({exc.strerror or exc})") from exc

    def _repair_tail(self) -> None:
        """Cut a partial last line (written by a process killed mid-write) so appends start on a new line."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            # find the last newline (read backwards in blocks)
            pos = size
            cut = 0
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                block = fh.read(step)
                j = block.rfind(b"\n")
                if j >= 0:
                    cut = pos + j + 1
                    break
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, event: str, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Write one event (one line; then fsync when `durable`) and update `states`; returns the record.

        Every line reaches the OS before this returns, so a killed process loses nothing; fsync also
        survives an OS crash or power loss, and is what terminal events (done/failed) need. `started`
        and `run` events skip it: losing one costs only crash accounting, and saves a disk flush per image.
        """
        rec = {"event": event, "time": utc_now(), **fields}
        try:
            line = json.dumps(rec, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
        except ValueError as exc:
            raise OutputError(f"{self.path}: cannot encode a journal event ({exc})") from exc
        data = line.encode("utf-8")
        try:
            written = os.write(self._fd, data)
            while written < len(data):                 # a short write on a full disk / signal
                written += os.write(self._fd, data[written:])
            if durable:
                os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot append to the journal ({exc.strerror or exc})") from exc
        _apply(self.states, rec, self._keep_rows)
        return rec

    # convenience wrappers -------------------------------------------------------------------------
    def run_started(self, **fields: Any) -> None:
        self.append("run", durable=False, pid=os.getpid(), **fields)

    def started(self, input_path: str, key: str | None, stage: str = "analyse") -> None:
        self.append("started", durable=False, input=input_path, key=key, stage=stage)

    def done(self, input_path: str, key: str, **fields: Any) -> None:
        self.append("done", input=input_path, key=key, **fields)

    def failed(self, input_path: str, key: str | None, error_type: str, message: str) -> None:
        self.append("failed", input=input_path, key=key, error_type=error_type, message=message)

    def interrupted(self, input_path: str, key: str | None = None) -> None:
        self.append("interrupted", input=input_path, key=key)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

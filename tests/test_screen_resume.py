"""Kill -9 a running `mcgenref screen`, run the same command again: finished images are skipped, none is
redone, none is lost, and the final tables equal those of a run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mcgenref_fast.screen.journal import JOURNAL_NAME, iter_records
from mcgenref_fast.screen.summary import read_csv
from test_screen import phantom_png, summary_without_timing

N_OK = 7


def _command(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mcgenref_fast", "screen", str(folder), "--out", str(out), "--method", "tophat",
            "--spacing", "0.1", "--workers", "1", "--no-progress"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    return env


def _events(out: Path) -> list[dict]:
    return list(iter_records(out / JOURNAL_NAME))


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(N_OK):
        phantom_png(folder / f"img{i}.png", i, shape=(320, 240), chest_wall="left" if i % 2 else "right")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(300))
    out = tmp_path / "out"

    # 1. start, kill -9 as soon as the first image is done
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(_command(folder, out), stdout=log, stderr=log, env=_env())
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and b'"event":"done"' in journal.read_bytes():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    done_before = [e["input"] for e in _events(out) if e["event"] == "done"]
    assert 1 <= len(done_before) < N_OK, "the kill came too late to test anything"
    with open(journal, "ab") as fh:                  # as if the kill had landed in the middle of a line
        fh.write(b'{"event":"done","input":"' + str(folder).encode() + b'/img')

    # 2. the same command again
    resumed = subprocess.run(_command(folder, out), capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 2, resumed.stderr           # broken.png failed
    assert f"({len(done_before)} already done)" in resumed.stdout

    events = _events(out)
    runs = [e for e in events if e["event"] == "run"]
    assert len(runs) == 2 and runs[1]["n_todo"] == N_OK + 1 - len(done_before)
    done = Counter(e["input"] for e in events if e["event"] == "done")
    assert len(done) == N_OK and set(done.values()) == {1}, done          # none redone, none lost
    second_run = events[events.index(runs[1]):]
    assert not {e["input"] for e in second_run if e["event"] in ("started", "done")} & set(done_before)
    assert not [p for p in out.rglob("*.tmp")]

    # 3. an uninterrupted run of the same inputs
    clean = tmp_path / "clean"
    straight = subprocess.run(_command(folder, clean), capture_output=True, text=True, env=_env(), timeout=300)
    assert straight.returncode == 2, straight.stderr
    assert summary_without_timing(out / "summary.csv") == summary_without_timing(clean / "summary.csv")
    assert len(read_csv(out / "summary.csv")) == N_OK
    assert (out / "exams.csv").read_text() == (clean / "exams.csv").read_text()
    assert (out / "errors.csv").read_text() == (clean / "errors.csv").read_text()
    assert [Path(e["input"]).name for e in read_csv(out / "errors.csv")] == ["broken.png"]
    assert sorted(read_csv(out / "index.csv"), key=json.dumps) == sorted(read_csv(clean / "index.csv"), key=json.dumps)
    for row in read_csv(out / "summary.csv"):
        a = json.loads((out / row["key"] / "findings.json").read_text())
        b = json.loads((clean / row["key"] / "findings.json").read_text())
        assert a["mcs"] == b["mcs"] and a["clusters"] == b["clusters"]


def test_sigterm_writes_the_tables_so_far_and_the_rerun_finishes(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        phantom_png(folder / f"img{i}.png", i, shape=(320, 240))
    out = tmp_path / "out"
    proc = subprocess.Popen(_command(folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and b'"event":"done"' in journal.read_bytes():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    events = _events(out)
    done_before = {e["input"] for e in events if e["event"] == "done"}
    assert 1 <= len(done_before) < 5
    assert any(e["event"] == "interrupted" for e in events)
    assert len(read_csv(out / "summary.csv")) == len(done_before)
    assert "not screened yet" in (out / "report.html").read_text()

    rerun = subprocess.run(_command(folder, out), capture_output=True, text=True, env=_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    done = Counter(e["input"] for e in _events(out) if e["event"] == "done")
    assert len(done) == 5 and set(done.values()) == {1}
    assert len(read_csv(out / "summary.csv")) == 5 and "not screened yet" not in (out / "report.html").read_text()

"""Memory of `mcgenref screen` over a long run: RSS every 10 images must stay flat.

    python bench/screen_rss.py [--n 100] [--workers 1] [--size 400x300] [--method tophat|initializer]

Generates N small phantom PNGs (0.1 mm pixels), screens them with the local runner (decode processes +
the model stage in this process, the same code as the CLI) and prints, every 10 images: the main
process's RSS and peak RSS (VmHWM), the summed RSS of its descendant processes (forkserver + decoders),
and the images/s since the previous line. At the end: the growth of the main RSS between image 20 and
the last one, and the steady-state throughput. `--method initializer` (= `--no-refine`) needs the shipped
weights; the default, the top-hat baseline, needs none.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _status_kb(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def make_inputs(folder: Path, n: int, shape: tuple[int, int]) -> None:
    from PIL import Image

    from dicom_factory import breast_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = breast_phantom(shape, chest_wall="left" if i % 2 else "right", seed=i)
        Image.fromarray((img // 16).astype(np.uint8)).save(folder / f"img{i:04d}.png")


class Probe:
    """Wraps the Engine: after every `every` images, prints the memory line."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.n = 0
        self.t_last = time.perf_counter()
        self.samples: list[tuple[int, float, float, float, float]] = []
        print(f"{'images':>6} {'main RSS MB':>11} {'main peak MB':>12} {'children RSS MB':>15} {'img/s':>7}", flush=True)

    def tick(self) -> None:
        self.n += 1
        if self.n % self.every:
            return
        now = time.perf_counter()
        rate = self.every / (now - self.t_last)
        self.t_last = now
        main = _status_kb("self", "VmRSS") / 1024
        peak = _status_kb("self", "VmHWM") / 1024
        children = sum(_status_kb(p, "VmRSS") for p in _descendants(os.getpid())) / 1024
        self.samples.append((self.n, main, peak, children, rate))
        print(f"{self.n:>6} {main:>11.1f} {peak:>12.1f} {children:>15.1f} {rate:>7.2f}", flush=True)


def probed_engine(probe: Probe, method: str) -> object:
    from mcgenref_fast.commands.screen import make_engine

    engine = make_engine({"method": "tophat" if method == "tophat" else "gpr", "no_refine": method == "initializer",
                          "reference": False, "seed": 0, "no_seg": False, "device": "cpu"})
    analyse = engine.analyse

    def counted(canonical):  # the count moves when an image's model stage starts; outputs follow
        result = analyse(canonical)
        probe.tick()
        return result

    engine.analyse = counted
    return engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", default="400x300", help="phantom rows x columns (0.1 mm pixels)")
    ap.add_argument("--method", choices=("tophat", "initializer"), default="tophat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write-behind", action="store_true", help="write each image's outputs before the next")
    args = ap.parse_args()
    rows, cols = (int(v) for v in args.size.lower().split("x"))

    from mcgenref_fast.screen import LocalRunner, ScreenOptions, discover_inputs
    from mcgenref_fast.threads import set_threads

    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="screen_rss_") as tmp:
        folder = Path(tmp) / "in"
        make_inputs(folder, args.n, (rows, cols))
        probe = Probe()
        options = ScreenOptions(spacing_mm=0.1, workers=args.workers, progress=False,
                                write_behind=not args.no_write_behind)
        t = time.perf_counter()
        result = LocalRunner(functools.partial(probed_engine, probe, args.method), Path(tmp) / "out", options).run(
            discover_inputs(folder))
        total = time.perf_counter() - t
    s = probe.samples
    print(f"\n{result.n_processed} images ({rows}x{cols} px at 0.1 mm, {args.method}, {args.workers} decode "
          f"worker(s)) in {total:.1f} s incl. start-up and final tables/report: {result.n_processed / total:.2f} images/s")
    if len(s) >= 3:
        steady = (s[-1][0] - s[0][0]) / sum(10 / r for *_, r in s[1:])
        growth = s[-1][1] - s[1][1]
        print(f"steady state (after image {s[0][0]}): {steady:.2f} images/s; main RSS from image {s[1][0]} to "
              f"{s[-1][0]}: {growth:+.1f} MB; peak main RSS {max(x[2] for x in s):.1f} MB; children RSS "
              f"{min(x[3] for x in s):.1f}-{max(x[3] for x in s):.1f} MB")
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())

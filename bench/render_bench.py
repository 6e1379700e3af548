"""Render a pytest-benchmark JSON (`--benchmark-json=...`) to a markdown table and a bar-chart PNG.

    python bench/render_bench.py bench/last.json --out bench/report   # → report.md, report.png

One row per benchmark (group, name, median, IQR, rounds) and, per group, the ratio to the group's fastest;
the chart draws the medians as horizontal bars on a log scale, grouped. Pillow only (no plotting library).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchRow:
    """One benchmark's summary (seconds)."""

    group: str
    name: str
    median_s: float
    iqr_s: float
    rounds: int


def load_rows(path: str | Path) -> list[BenchRow]:
    """The benchmarks of a pytest-benchmark JSON file, sorted by group then median."""
    data = json.loads(Path(path).read_text())
    rows = [BenchRow(b.get("group") or "(no group)", b["name"], float(b["stats"]["median"]),
                     float(b["stats"].get("iqr", 0.0)), int(b["stats"].get("rounds", 0)))
            for b in data.get("benchmarks", [])]
    return sorted(rows, key=lambda r: (r.group, r.median_s))


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def markdown_table(rows: list[BenchRow]) -> str:
    """Markdown table; `× fastest` is the median over the fastest median of the same group."""
    fastest = {}
    for r in rows:
        fastest[r.group] = min(fastest.get(r.group, math.inf), r.median_s)
    lines = ["| group | benchmark | median | IQR | rounds | × fastest |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.median_s / fastest[r.group] if fastest[r.group] > 0 else float("nan")
        lines.append(f"| {r.group} | {r.name} | {_fmt(r.median_s)} | {_fmt(r.iqr_s)} | {r.rounds} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[BenchRow], path: str | Path, width_px: int = 900, row_px: int = 22) -> Path:
    """Horizontal bars of the medians (log scale), one block per group; returns the PNG path."""
    from PIL import Image, ImageDraw

    label_px, margin = 360, 10
    groups: list[str] = []
    for r in rows:
        if r.group not in groups:
            groups.append(r.group)
    height = margin * 2 + row_px * (len(rows) + len(groups))
    img = Image.new("RGB", (width_px, max(height, 2 * margin + row_px)), "white")
    draw = ImageDraw.Draw(img)
    positive = [r.median_s for r in rows if r.median_s > 0]
    lo = math.log10(min(positive)) - 0.5 if positive else 0.0
    hi = math.log10(max(positive)) + 0.2 if positive else 1.0
    span = max(hi - lo, 1e-9)
    bar_space = width_px - label_px - 2 * margin - 110
    y = margin
    for group in groups:
        draw.text((margin, y + 4), group, fill=(0, 0, 0))
        y += row_px
        for r in (r for r in rows if r.group == group):
            frac = (math.log10(r.median_s) - lo) / span if r.median_s > 0 else 0.0
            x0 = label_px
            x1 = x0 + max(1, int(frac * bar_space))
            draw.text((margin + 12, y + 4), r.name[:48], fill=(40, 40, 40))
            draw.rectangle((x0, y + 3, x1, y + row_px - 3), fill=(70, 120, 200))
            draw.text((x1 + 6, y + 4), _fmt(r.median_s), fill=(0, 0, 0))
            y += row_px
    path = Path(path)
    img.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON")
    ap.add_argument("--out", type=Path, required=True, help="output stem: STEM.md and STEM.png")
    args = ap.parse_args()
    rows = load_rows(args.json)
    if not rows:
        raise SystemExit(f"{args.json}: no benchmarks in this file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown_table(rows))
    bar_chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

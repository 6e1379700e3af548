"""bench/render_bench.py: a pytest-benchmark JSON becomes a markdown table and a bar chart."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render_bench", ROOT / "bench" / "render_bench.py")
render_bench = importlib.util.module_from_spec(spec)
sys.modules["render_bench"] = render_bench  # dataclasses look their module up there
spec.loader.exec_module(render_bench)


def _bench(group, name, median, iqr=0.0, rounds=5):
    return {"group": group, "name": name, "stats": {"median": median, "iqr": iqr, "rounds": rounds}}


def test_table_and_chart(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [
        _bench("fuse", "test_fuse_torch", 0.004), _bench("fuse", "test_fuse_triton", 0.001),
        _bench("refine", "test_refine_reference", 19.4, rounds=1), _bench(None, "test_other", 2e-6)]}))
    rows = render_bench.load_rows(path)
    assert [r.name for r in rows[:3]] == ["test_other", "test_fuse_triton", "test_fuse_torch"]
    table = render_bench.markdown_table(rows)
    assert "| fuse | test_fuse_torch | 4.000 ms | 0.0 µs | 5 | 4.00 |" in table
    assert "| refine | test_refine_reference | 19.400 s |" in table and "| 1.00 |" in table
    png = render_bench.bar_chart(rows, tmp_path / "c.png")
    arr = np.asarray(Image.open(png).convert("RGB"))
    bars = (arr[:, :, 2] == 200) & (arr[:, :, 0] == 70)
    # one bar per benchmark; the slower benchmark of a group has the longer bar
    widths = [int(row.sum()) for row in bars if row.any()]
    assert len({w for w in widths}) >= 3 and max(widths) > min(widths)

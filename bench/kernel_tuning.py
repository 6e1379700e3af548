"""Launch-shape sweep of the two memory-bound kernels on a CUDA GPU (issue 9: `gpr_update` and `fuse_tiles` at
≥ 60 % of the device copy bandwidth; 37 % / 32 % with the default shapes on the H200, bench/RESULTS.md).

    python bench/kernel_tuning.py [--json OUT.json]

Same inputs and byte counts as bench/test_bench_kernels.py (3328×2560, default tiles, 2 samples for the fusion);
each configuration is checked against the default launch (bit for bit) before it is timed
(`triton.testing.do_bench`, median); a device copy of the same bytes gives the yardstick. Prints one table per
kernel, best first. Needs CUDA (exits with a message elsewhere).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

UPDATE_SHAPES = [(r, w) for r, w in itertools.product((1, 2, 4, 8, 16), (2, 4, 8, 16)) if r * 256 // (32 * w) >= 1]
FUSE_SHAPES = [(r, c, w) for r, c, w in itertools.product((1, 2, 4, 8, 16), (128, 256, 512), (4, 8))
               if r * c // (32 * w) >= 1]


def _copy_gbps(n_bytes: int) -> float:
    import triton.testing

    src = torch.empty(n_bytes // 8, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return n_bytes / (ms * 1e-3) / 1e9


def sweep_kernel(run: Callable[..., torch.Tensor], n_bytes: int, shapes: list[dict], copy_gbps: float,
                 bench: Callable[[Callable[[], object]], float]) -> list[dict]:
    """One row per launch (the default first, then `shapes`): `run(**shape)` checked bit for bit against the
    default launch, then timed by `bench` (ms); a shape that fails is a row with its error, not a crash."""
    want = run()
    rows = []
    for kw in [{}] + shapes:
        try:
            same = torch.equal(run(**kw), want)
            ms = bench(lambda: run(**kw))
        except Exception as exc:  # noqa: BLE001 — a shape the compiler refuses is a row, not a crash
            rows.append({**kw, "error": f"{type(exc).__name__}: {exc}"[:120]})
            continue
        gbps = n_bytes / (ms * 1e-3) / 1e9
        rows.append({**kw, "default": not kw, "ms": round(ms, 4), "GB/s": round(gbps, 1),
                     "of_copy": round(gbps / copy_gbps, 3), "equal_to_default": same})
    return rows


def format_rows(name: str, n_bytes: int, copy_gbps: float, rows: list[dict], top: int = 12) -> str:
    """The printed table: fastest first; failed or differing launches listed after it."""
    ok = sorted((r for r in rows if "ms" in r), key=lambda r: r["ms"])
    lines = [f"== {name}: {n_bytes / 1e6:.1f} MB per call, device copy {copy_gbps:.0f} GB/s",
             f"{'launch':38s} {'ms':>8s} {'GB/s':>8s} {'of copy':>8s}  equal"]
    for r in ok[:top]:
        shape = "default" if r["default"] else ", ".join(f"{k}={r[k]}" for k in ("block_r", "block_c", "num_warps")
                                                         if k in r)
        lines.append(f"{shape:38s} {r['ms']:8.4f} {r['GB/s']:8.1f} {100 * r['of_copy']:7.1f}%  {r['equal_to_default']}")
    bad = [r for r in rows if "error" in r or not r.get("equal_to_default", True)]
    if bad:
        lines.append(f"  {len(bad)} launch(es) failed or differed from the default: {bad[:3]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write every configuration's figures here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("kernel_tuning: needs a CUDA GPU (compiled Triton); nothing to do here")
        return 0
    import triton.testing

    import test_bench_kernels as bk
    from mcgenref_fast.kernels import fuse_tiles as kf
    from mcgenref_fast.kernels import gpr_update as ku

    c = bk.make_case()
    jobs = {
        "gpr_update": (bk._update_bytes(c), [dict(block_r=r, num_warps=w) for r, w in UPDATE_SHAPES],
                       lambda **kw: ku.gpr_update(c["z"], c["y"], c["canvas"], c["z0"], c["image"], c["index"], **kw)),
        "fuse_tiles": (bk._fuse_bytes(c), [dict(block_r=r, block_c=cc, num_warps=w) for r, cc, w in FUSE_SHAPES],
                       lambda **kw: kf.fuse_tiles(c["x"], c["index"], **kw)),
    }
    rows = {}
    for name, (n_bytes, shapes, run) in jobs.items():
        copy = _copy_gbps(n_bytes)
        rows[name] = sweep_kernel(run, n_bytes, shapes, copy,
                                  lambda fn: triton.testing.do_bench(fn, return_mode="median"))
        print(format_rows(name, n_bytes, copy, rows[name]))
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

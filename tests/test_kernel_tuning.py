"""bench/kernel_tuning.py's sweep logic on the CPU: interpreted Triton kernels on a tiny grid, a fake timer.
(The sweep itself needs a GPU; what can break here is the bookkeeping: equality checks, error rows, the table.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from mcgenref_fast import ops_torch, tiling
from mcgenref_fast.config import TileConfig
from mcgenref_fast.kernels import fuse_tiles as kf
from mcgenref_fast.kernels import gpr_update as ku

_SPEC = importlib.util.spec_from_file_location(
    "kernel_tuning", Path(__file__).resolve().parents[1] / "bench" / "kernel_tuning.py")
tuning = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tuning)


def _tiny():
    grid = tiling.make_grid((37, 45), np.ones((37, 45), bool), TileConfig(16, 4))
    index = ops_torch.TileIndex.from_grid(grid)
    g = torch.Generator().manual_seed(0)
    z = torch.randn((grid.n_tiles, 16, 16), generator=g)
    return index, z, torch.rand(z.shape, generator=g), torch.randn(z.shape, generator=g).clamp(-4, 4), \
        torch.rand(z.shape, generator=g)


def test_sweep_rows_check_each_launch_against_the_default_and_keep_failures():
    index, z, y, z0, image = _tiny()
    run = lambda **kw: ku.gpr_update(z, y, ops_torch.fuse_tiles(z, index), z0, image, index, **kw)  # noqa: E731
    shapes = [dict(block_r=4, num_warps=1), dict(block_r=3, num_warps=1)]        # the second is refused
    rows = tuning.sweep_kernel(run, 1_000_000, shapes, copy_gbps=2.0, bench=lambda fn: (fn(), 0.5)[1])
    assert [r.get("block_r") for r in rows] == [None, 4, 3]
    assert rows[0]["default"] and rows[0]["equal_to_default"] and rows[1]["equal_to_default"]
    assert rows[0]["GB/s"] == 2.0 and rows[0]["of_copy"] == 1.0          # 1 MB in 0.5 ms
    assert "power of two" in rows[2]["error"]
    table = tuning.format_rows("gpr_update", 1_000_000, 2.0, rows)
    assert "block_r=4, num_warps=1" in table and "1 launch(es) failed" in table


def test_sweep_flags_a_launch_that_changes_the_result():
    index, z, *_ = _tiny()
    calls = iter(range(100))
    run = lambda **kw: kf.fuse_tiles(z + (1.0 if kw and next(calls) == 0 else 0.0), index, **kw)  # noqa: E731
    rows = tuning.sweep_kernel(run, 1000, [dict(block_r=8, block_c=16, num_warps=1)], 1.0,
                               bench=lambda fn: 1.0)
    assert rows[1]["equal_to_default"] is False
    assert "differed" in tuning.format_rows("fuse_tiles", 1000, 1.0, rows)

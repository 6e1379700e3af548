"""One thread-count setting honoured by torch, OpenMP (the C++ tiler) and the CLI (`--threads`)."""
from __future__ import annotations

import os


def set_threads(n: int | None) -> int:
    """Use `n` threads for torch intra-op work and OpenMP; `None` keeps the current setting. Returns n used."""
    if n is None:
        n = int(os.environ.get("MCGENREF_THREADS", "0")) or (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep the tiler usable alone
        pass
    try:
        from mcgenref_fast import _tiler  # type: ignore[attr-defined]

        _tiler.set_num_threads(n)
    except ImportError:
        pass
    return n

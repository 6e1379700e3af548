"""Launch-shape overrides of the kernel launchers (tuning only: `bench/kernel_tuning.py`): checked up front."""
from __future__ import annotations


def check_launch(**sizes: int | None) -> None:
    """Each given block size / warp count (None = the launcher's own choice) must be a power of two ≥ 1;
    num_warps at most 32 (a CUDA block holds at most 1024 threads)."""
    for name, value in sizes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 1 (or None for the launcher's default), got {value!r}")
        if name == "num_warps" and value > 32:
            raise ValueError(f"num_warps must be at most 32, got {value}")

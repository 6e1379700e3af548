"""Which torch device a run may use: one check shared by the Engine and training, so that asking for a GPU the
machine lacks is a ConfigError naming what to do, not torch's assertion deep inside the first tensor move."""
from __future__ import annotations

import torch

from mcgenref_fast.errors import ConfigError


def parse_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device of a type the models run on (cpu or cuda), whether or not this machine has
    it; ConfigError for an unknown name or another device type."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device type {dev.type!r} is not supported: use cpu, cuda or cuda:N")
    return dev


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device when this process can run the models on it: the CPU, or a CUDA device that
    exists here. ConfigError otherwise (an unknown name, another device type, no CUDA, an index too high)."""
    dev = parse_device(device)
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"{str(device)!r}: CUDA is not available here (no GPU, or a CPU build of torch): "
                          f"use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{str(device)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return dev

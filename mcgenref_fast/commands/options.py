"""argparse value types shared by the subcommands: a bad `--device`, `--threads` or `--seed` is refused while
the command line is parsed, as one usage line (exit 2), instead of failing later with a traceback."""
from __future__ import annotations

import argparse

# torch.Generator.manual_seed and numpy's SeedSequence both take seeds in [0, 2**63 - 1] safely.
MAX_SEED = 2**63 - 1


def device_arg(text: str) -> str:
    """A device name torch knows, of a type the models run on: `cpu`, `cuda` or `cuda:N` (`devices.parse_device`).
    Returned unchanged. Whether this machine has it is checked where the models are placed
    (`devices.usable_device`): with `screen --ray` the GPUs may be on other machines than the one parsing the
    command line."""
    from mcgenref_fast.devices import parse_device
    from mcgenref_fast.errors import ConfigError

    try:
        parse_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def train_device_arg(text: str) -> str:
    """`device_arg`, plus `auto` (CUDA when available, else the CPU) for `train`."""
    return text if text == "auto" else device_arg(text)


def positive_int(text: str) -> int:
    """An integer >= 1 (thread and worker counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed_arg(text: str) -> int:
    """A random seed in [0, 2**63 - 1] (what torch's and numpy's generators take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1], got {value}")
    return value

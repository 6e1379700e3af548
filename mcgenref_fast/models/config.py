"""Frozen architecture settings for the two networks (SPEC §3), stored verbatim in the weights manifest.

A model is rebuilt from its manifest entry with `config_from_dict`, so every field must be a plain value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

NORMS = ("group", "none")
ACTIVATIONS = ("relu", "silu")
PAD_MODES = ("reflect", "replicate")


def _check_common(depth: int, base_width: int, max_width: int, norm: str, norm_groups: int, act: str,
                  pad_mode: str) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if base_width < 1 or max_width < base_width:
        raise ValueError(f"need 1 <= base_width <= max_width, got {base_width}, {max_width}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm_groups < 1:
        raise ValueError(f"norm_groups must be >= 1, got {norm_groups}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


@dataclass(frozen=True)
class SegmentorConfig:
    """U-Net segmentor f: 1 channel in, 1 logit out.

    Width at level l is `min(base_width * 2**l, max_width)`, l = 0..depth (depth = number of 2x
    downsamplings; inputs are padded to a multiple of 2**depth and cropped back). `norm_groups` is the
    GroupNorm group count wanted (reduced to a divisor of the channel count).
    """

    in_channels: int = 1
    out_channels: int = 1
    depth: int = 3
    base_width: int = 8
    max_width: int = 64
    norm: str = "group"
    norm_groups: int = 4
    act: str = "relu"
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        _check_common(self.depth, self.base_width, self.max_width, self.norm, self.norm_groups, self.act,
                      self.pad_mode)


@dataclass(frozen=True)
class GeneratorConfig:
    """Velocity net v([x_t, S], t) of the seed-conditioned rectified flow: 2 channels in, 1 out.

    Same U-Net skeleton as the segmentor, residual blocks, and a sinusoidal embedding of `t * time_scale`
    (`time_dim` features, MLP to `time_hidden`) injected into every block as FiLM (scale, shift).
    The output conv starts at zero so the untrained net predicts velocity 0.
    """

    in_channels: int = 2
    out_channels: int = 1
    depth: int = 3
    base_width: int = 8
    max_width: int = 48
    norm: str = "group"
    norm_groups: int = 4
    act: str = "silu"
    pad_mode: str = "reflect"
    time_dim: int = 32
    time_hidden: int = 64
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        _check_common(self.depth, self.base_width, self.max_width, self.norm, self.norm_groups, self.act,
                      self.pad_mode)
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"time_dim must be an even number >= 2, got {self.time_dim}")


ModelConfig = Union[SegmentorConfig, GeneratorConfig]
_KINDS: dict[str, type] = {"segmentor": SegmentorConfig, "generator": GeneratorConfig}


def config_kind(cfg: ModelConfig) -> str:
    """'segmentor' or 'generator' for a config instance."""
    for kind, cls in _KINDS.items():
        if isinstance(cfg, cls):
            return kind
    raise TypeError(f"not a model config: {type(cfg).__name__}")


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain dict (JSON-ready) of a model config."""
    return dataclasses.asdict(cfg)


def config_from_dict(kind: str, values: dict[str, Any]) -> ModelConfig:
    """Rebuild a config of `kind` from `config_to_dict` output; unknown keys raise ValueError."""
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {tuple(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {sorted(unknown)}")
    return cls(**values)

"""Small building blocks shared by the segmentor and the velocity net: norm/activation factories,
pad-to-multiple and crop (so both nets accept any H, W, odd sizes included)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """GroupNorm with the largest group count <= `groups` that divides `channels`, or Identity."""
    if kind == "none":
        return nn.Identity()
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


def make_act(kind: str) -> nn.Module:
    """ReLU (cheapest on CPU) or SiLU (smooth, usual for flow/diffusion nets)."""
    return nn.ReLU(inplace=True) if kind == "relu" else nn.SiLU(inplace=True)


def level_widths(depth: int, base_width: int, max_width: int) -> list[int]:
    """Channel width at each U-Net level 0..depth."""
    return [min(base_width * 2**level, max_width) for level in range(depth + 1)]


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B,C,H,W) at the bottom/right to multiples of `multiple`; returns the padded tensor and (H, W).

    `reflect` falls back to `replicate` when the input is too small to reflect (pad >= size).
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left (H, W)."""
    h, w = size
    return x[..., :h, :w]


def conv3x3(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)

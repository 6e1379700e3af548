"""The segmentor f (SPEC §3): a small U-Net, 1 channel in, 1 logit out, any input size.

Inputs are padded (reflect, bottom/right) to a multiple of 2**depth and the logits cropped back, so odd
tile sizes work and a 256x256 tile (the TT-GPR default) needs no padding at all.
"""
from __future__ import annotations

import torch
from torch import nn

from mcgenref_fast.models.config import SegmentorConfig
from mcgenref_fast.models.layers import conv3x3, crop, level_widths, make_act, make_norm, pad_to_multiple

HEAD_BIAS_INIT = -4.0  # MC pixels are rare (~1 %): start from a low prior so BCE does not begin saturated


class DoubleConv(nn.Sequential):
    """(conv3x3 -> norm -> act) x 2."""

    def __init__(self, cin: int, cout: int, cfg: SegmentorConfig) -> None:
        bias = cfg.norm == "none"
        super().__init__(
            conv3x3(cin, cout, bias), make_norm(cfg.norm, cout, cfg.norm_groups), make_act(cfg.act),
            conv3x3(cout, cout, bias), make_norm(cfg.norm, cout, cfg.norm_groups), make_act(cfg.act),
        )


class Segmentor(nn.Module):
    """U-Net: forward((B,1,H,W)) -> logits (B,1,H,W)."""

    def __init__(self, cfg: SegmentorConfig = SegmentorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        widths = level_widths(cfg.depth, cfg.base_width, cfg.max_width)
        self.enc = nn.ModuleList([DoubleConv(cfg.in_channels, widths[0], cfg)])
        for lv in range(1, cfg.depth + 1):
            self.enc.append(DoubleConv(widths[lv - 1], widths[lv], cfg))
        self.pool = nn.MaxPool2d(2)  # max keeps small bright MCs alive through the downsampling
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lv in range(cfg.depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[lv], widths[lv - 1], kernel_size=2, stride=2))
            self.dec.append(DoubleConv(2 * widths[lv - 1], widths[lv - 1], cfg))
        self.head = nn.Conv2d(widths[0], cfg.out_channels, kernel_size=1)
        nn.init.constant_(self.head.bias, HEAD_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"Segmentor expects (B,{self.cfg.in_channels},H,W), got {tuple(x.shape)}")
        x, size = pad_to_multiple(x, 2**self.cfg.depth, self.cfg.pad_mode)
        skips = []
        h = x
        for lv, block in enumerate(self.enc):
            if lv > 0:
                h = self.pool(h)
            h = block(h)
            skips.append(h)
        skips.pop()  # the bottleneck is not a skip
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            h = dec(torch.cat([h, skips.pop()], dim=1))
        return crop(self.head(h), size)

"""The generator's velocity net v([x_t, S], t) (SPEC §3): seed-conditioned rectified flow in image space.

Input: cat[x_t, S] (2 channels), t (B,). Output: the velocity x - eps (1 channel). A U-Net of residual
blocks; a sinusoidal embedding of t feeds every block through FiLM (scale, shift), both zero-initialised
(like the output conv) so training starts from the identity blocks and velocity 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mcgenref_fast.models.config import GeneratorConfig
from mcgenref_fast.models.layers import conv3x3, crop, level_widths, make_act, make_norm, pad_to_multiple


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """(B,) times -> (B, dim) [sin, cos] features of t*scale at geometric frequencies 1 .. 1/10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = (t.float() * scale)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ResBlock(nn.Module):
    """conv -> norm -> FiLM(t) -> act -> conv -> norm, plus a (1x1 when widths differ) skip, then act."""

    def __init__(self, cin: int, cout: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        bias = cfg.norm == "none"
        self.conv1 = conv3x3(cin, cout, bias)
        self.norm1 = make_norm(cfg.norm, cout, cfg.norm_groups)
        self.film = nn.Linear(cfg.time_hidden, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv2 = conv3x3(cout, cout, bias)
        self.norm2 = make_norm(cfg.norm, cout, cfg.norm_groups)
        self.act = make_act(cfg.act)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.act(h * (1 + scale) + shift)
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class VelocityNet(nn.Module):
    """forward(x: (B,2,H,W) = cat[x_t, S], t: (B,) or scalar) -> velocity (B,1,H,W); any H, W."""

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        widths = level_widths(cfg.depth, cfg.base_width, cfg.max_width)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_dim, cfg.time_hidden), nn.SiLU(), nn.Linear(cfg.time_hidden, cfg.time_hidden), nn.SiLU()
        )
        self.enc = nn.ModuleList([ResBlock(cfg.in_channels, widths[0], cfg)])
        for lv in range(1, cfg.depth + 1):
            self.enc.append(ResBlock(widths[lv - 1], widths[lv], cfg))
        self.pool = nn.AvgPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lv in range(cfg.depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[lv], widths[lv - 1], kernel_size=2, stride=2))
            self.dec.append(ResBlock(2 * widths[lv - 1], widths[lv - 1], cfg))
        self.head = nn.Conv2d(widths[0], cfg.out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"VelocityNet expects (B,{self.cfg.in_channels},H,W) = cat[x_t, S], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_mlp(sinusoidal_embedding(t, self.cfg.time_dim, self.cfg.time_scale).to(x.dtype))
        x, size = pad_to_multiple(x, 2**self.cfg.depth, self.cfg.pad_mode)
        skips = []
        h = x
        for lv, block in enumerate(self.enc):
            if lv > 0:
                h = self.pool(h)
            h = block(h, emb)
            skips.append(h)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            h = dec(torch.cat([h, skips.pop()], dim=1), emb)
        return crop(self.head(h), size)

"""Tiny deterministic networks with the real models' interfaces, for the refine tests (reference and fast).

`make_tiny_segmentor(seed)`: (B,1,H,W) → logits (B,1,H,W). A fixed "bright spot" detector
(gain·(x − mean_3×3(x)) + bias, so flat tissue gives about −3 and a small bright blob a positive logit)
plus a small random 2-layer conv path, so that the output is not a trivial function of the input.
`make_tiny_generator(seed)`: ((B,2,H,W) = cat[x_t, S], t (B,)) → velocity (B,1,H,W); a 2-layer conv net
whose hidden layer is shifted by an embedding of t, and which brightens pixels under the seed map.
Both are built from `torch.manual_seed(seed)` inside `torch.random.fork_rng`, so that they are identical
on every call and do not disturb the global RNG.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySegmentor(nn.Module):
    def __init__(self, hidden: int = 4, gain: float = 20.0, bias: float = -3.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)
        self.gain = gain
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local_mean = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        detector = self.gain * (x - local_mean) + self.bias
        return detector + 0.1 * self.conv2(torch.tanh(self.conv1(x)))


class TinyGenerator(nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, hidden, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.time(t.reshape(-1, 1).to(x.dtype))[:, :, None, None]
        v = self.conv2(F.silu(h))
        return 0.3 * v + 0.5 * x[:, 1:2]       # seed dots pull the projection up (an MC appears)


def make_tiny_segmentor(seed: int = 0) -> TinySegmentor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinySegmentor().eval()


def make_tiny_generator(seed: int = 1) -> TinyGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyGenerator().eval()

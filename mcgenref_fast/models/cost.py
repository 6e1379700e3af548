"""What a network costs per TT-GPR tile: parameters, conv/linear GFLOPs and CPU time on one thread.

TT-GPR evaluates both nets ~30 times per active tile, so these figures decide the CPU path's speed.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _example_inputs(model: nn.Module, tile_px: int) -> tuple:
    cin = getattr(getattr(model, "cfg", None), "in_channels", 1)
    x = torch.rand(1, cin, tile_px, tile_px)
    if cin == 2:  # the velocity net also takes t
        return (x, torch.full((1,), 0.8))
    return (x,)


def count_macs(model: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of all Conv2d / ConvTranspose2d / Linear layers in one forward (hooks)."""
    total = 0

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.ConvTranspose2d):
            kh, kw = mod.kernel_size
            total += args[0].numel() * (mod.out_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def model_cost(model: nn.Module, tile_px: int = 256, repeats: int = 10, threads: int = 1) -> dict:
    """{'params', 'gmacs', 'gflops' (= 2 x GMACs), 'cpu_ms' (median of `repeats`, `threads` threads)} per
    (1, C, tile_px, tile_px) tile. The model is evaluated in eval mode on the CPU; its mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model = model.eval().to("cpu")
    inputs = _example_inputs(model, tile_px)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, inputs)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        with torch.inference_mode():
            model(*inputs)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training).to(device)
    return {"params": params, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9,
            "cpu_ms": statistics.median(times), "tile_px": tile_px, "threads": threads}


def main() -> None:
    """The default nets' cost per 256² tile as markdown rows:
    `python -c "from mcgenref_fast.models.cost import main; main()"`."""
    from mcgenref_fast.models.unet import Segmentor
    from mcgenref_fast.models.velocity import VelocityNet

    print("| network | parameters | GMACs | GFLOPs | CPU ms (1 thread, median of 10) |\n|---|---|---|---|---|")
    for net in (Segmentor(), VelocityNet()):
        c = model_cost(net)
        print(f"| {type(net).__name__} | {c['params']:,} | {c['gmacs']:.3f} | {c['gflops']:.3f} | {c['cpu_ms']:.1f} |")

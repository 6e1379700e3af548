"""Network inference on a device (issue 9): precision, channels-last and CUDA-graph replay in batch buckets.

`NetExecutor(net, device, ExecConfig(...))` is called like the network (`ex(x)`, `ex(x, t)`; every input
batched along dim 0) and returns the network's output as float32.

- CPU: exactly `net(*inputs).to(torch.float32)` — fp32 only (any other precision is a ValueError), no
  format change, no graph: the CPU results stay bit-identical to calling the network directly.
- CUDA: the network runs on a private eval-mode copy (so the caller's module is never modified), in
  channels-last memory format (`channels_last`), under `torch.autocast(dtype=bf16|fp16, cache_enabled=False)`
  for `precision` 'bf16' / 'fp16' (SPEC §7's low-precision rule bounds the effect on p; outputs are cast
  back to float32). With `cuda_graphs`, a call of batch b is padded with zero rows up to the smallest
  bucket ≥ b (`bucket_sizes`: powers of two below `max_batch`, then `max_batch`) and replays a CUDA graph
  captured lazily for that (bucket, input shapes, dtypes) — after `warmup_iters` eager runs on a side
  stream, as the PyTorch CUDA-graphs notes prescribe — from static input buffers; the first b output rows
  are cloned out. Seed-dependent batch sizes then reuse a handful of graphs. Batches above `max_batch`
  are split into `max_batch` pieces.

Padding rows cannot change the real rows: the project's networks are per-sample in eval mode (GroupNorm,
no batch statistics). Graph capture and the first call of a bucket synchronise the device (a constant per
executor); replays do not. Autocast is entered inside each call, so it does not depend on the calling
thread (autocast state is thread-local).

`executor_for(net, device, cfg)` caches one executor per (module, device, config) across calls (graphs are
captured once per process, not per image); the entry is rebuilt when the module's parameters or buffers
were replaced or modified in place (tensor `_version` counters).
"""
from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

__all__ = ["Precision", "PRECISIONS", "ExecConfig", "NetExecutor", "GraphedCall", "bucket_sizes", "bucket_for",
           "pad_batch", "check_precision", "executor_for", "upload"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ValueError unless `precision` is one of PRECISIONS and usable on `device` (CPU: fp32 only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision != "fp32" and kind != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device (mixed-precision networks are a GPU "
                         f"option); on {kind!r} only 'fp32' is supported")


@dataclass(frozen=True)
class ExecConfig:
    """How a NetExecutor runs its network. Only `precision` applies on the CPU (and must be 'fp32')."""

    precision: Precision = "fp32"
    channels_last: bool = True      # CUDA: network and 4-D inputs in channels-last memory format
    cuda_graphs: bool = True        # CUDA: replay captured graphs in batch buckets
    max_batch: int = 32             # largest bucket (tile images per network call)
    warmup_iters: int = 3           # eager runs on a side stream before a capture

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.warmup_iters < 1:
            raise ValueError(f"warmup_iters must be >= 1, got {self.warmup_iters}")


# ------------------------------------------------------------------------------------- buckets (pure)
def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch buckets: the powers of two below `max_batch`, then `max_batch` (32 → 1, 2, 4, 8, 16, 32)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ≥ n (buckets ascending); ValueError for n < 1 or n above the largest."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch size {n} exceeds the largest bucket {buckets[-1]}")


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with zero rows appended along dim 0 up to `size` (x itself when it has `size` rows)."""
    n = int(x.shape[0])
    if n > size:
        raise ValueError(f"cannot pad a batch of {n} down to {size}")
    if n == size:
        return x
    return torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])


# ------------------------------------------------------------------------------------------ uploads
def upload(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. CPU → CUDA goes through pinned memory with non_blocking=True (no host sync; the
    caching host allocator keeps the pinned buffer alive until the copy ran); anything else is `t.to`."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ------------------------------------------------------------------------------------- graph replay
class GraphedCall:
    """A captured call: static inputs (bucket rows each), its static output and `replay()`.

    `__call__(inputs)` copies the b real rows into the static inputs, zeroes the padding rows, replays and
    returns a clone of the first b output rows (the next replay overwrites the static output). `replay`
    is `CUDAGraph.replay` on CUDA; any callable that recomputes `static_out` from `static_in` works (tests).
    """

    def __init__(self, static_in: tuple[torch.Tensor, ...], static_out: torch.Tensor,
                 replay: Callable[[], object]) -> None:
        self.static_in = static_in
        self.static_out = static_out
        self.replay = replay
        self.bucket = int(static_in[0].shape[0])

    def __call__(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        n = int(inputs[0].shape[0])
        if n > self.bucket:
            raise ValueError(f"batch {n} does not fit the bucket {self.bucket}")
        for static, x in zip(self.static_in, inputs):
            static[:n].copy_(x)
            if n < self.bucket:
                static[n:].zero_()
        self.replay()
        return self.static_out[:n].clone()


class NetExecutor:
    """Inference of one network on one device (module docstring). Call it like the network."""

    def __init__(self, net: nn.Module, device: torch.device | str, cfg: ExecConfig = ExecConfig()) -> None:
        self.device = torch.device(device)
        check_precision(cfg.precision, self.device)
        self.cfg = cfg
        self.cuda = self.device.type == "cuda"
        self.buckets = bucket_sizes(cfg.max_batch)
        self.graphs: dict[tuple, GraphedCall] = {}
        self.eager_calls = 0
        self.replays = 0
        self._pool: object | None = None
        if self.cuda:
            twin = copy.deepcopy(net).to(self.device).eval()
            for p in twin.parameters():
                p.requires_grad_(False)
            if cfg.channels_last:
                twin = twin.to(memory_format=torch.channels_last)
            self.net: nn.Module = twin
        else:
            self.net = net

    # -- eager
    def _format(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda and self.cfg.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda and self.cfg.precision != "fp32":
            return torch.autocast("cuda", dtype=_AUTOCAST_DTYPE[self.cfg.precision], cache_enabled=False)
        return contextlib.nullcontext()

    def _forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            out = self.net(*inputs)
        return out.to(torch.float32)

    def eager(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The network without graphs (the CPU path: `net(*inputs).to(float32)`, nothing else)."""
        self.eager_calls += 1
        if not self.cuda:
            return self.net(*inputs).to(torch.float32)
        return self._forward([self._format(x) for x in inputs]).contiguous()

    # -- graphs
    def _capture(self, key: tuple, bucket: int, inputs: Sequence[torch.Tensor]) -> GraphedCall:
        static_in = tuple(self._format(pad_batch(x, bucket)).clone() for x in inputs)
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.cfg.warmup_iters):
                    self._forward(static_in)
            current.wait_stream(side)
            if self._pool is None:
                # one pool for all buckets of this executor: safe because every replay's output is cloned
                # before the next replay of any graph, and the static inputs live outside the pool
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(static_in)
        call = GraphedCall(static_in, static_out, graph.replay)
        self.graphs[key] = call
        return call

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        n = int(inputs[0].shape[0])
        if not (self.cuda and self.cfg.cuda_graphs) or n == 0:
            return self.eager(*inputs)
        top = self.buckets[-1]
        if n > top:
            return torch.cat([self(*(x[s:s + top] for x in inputs)) for s in range(0, n, top)])
        bucket = bucket_for(n, self.buckets)
        key = (bucket,) + tuple((tuple(x.shape[1:]), x.dtype) for x in inputs)
        call = self.graphs.get(key)
        if call is None:
            call = self._capture(key, bucket, inputs)
        self.replays += 1
        return call(inputs)


# ---------------------------------------------------------------------------------------------- cache
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, NetExecutor]]]" = weakref.WeakKeyDictionary()


def _weights_signature(net: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes when the weights change."""
    return tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))


def executor_for(net: nn.Module, device: torch.device | str, cfg: ExecConfig = ExecConfig()) -> NetExecutor:
    """A NetExecutor for `net` on `device`, cached per (module, device, cfg) on CUDA (graphs are captured
    once per process); rebuilt when the module's weights changed. On the CPU a fresh (stateless) one."""
    device = torch.device(device)
    if device.type != "cuda":
        return NetExecutor(net, device, cfg)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    per_net = _CACHE.setdefault(net, {})
    key = (device, cfg)
    signature = _weights_signature(net)
    entry = per_net.get(key)
    if entry is None or entry[0] != signature:
        entry = (signature, NetExecutor(net, device, cfg))
        per_net[key] = entry
    return entry[1]

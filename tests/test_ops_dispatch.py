"""The kernels' single dispatch point `mcgenref_fast.ops` (SPEC §5): MCGENREF_KERNELS=auto|triton|torch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mcgenref_fast import ops, ops_torch, tiling
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.kernels import euler_step as euler_kernel
from mcgenref_fast.kernels import fuse_tiles as fuse_kernel
from mcgenref_fast.kernels import gpr_update as update_kernel


@pytest.fixture()
def case():
    grid = tiling.make_grid((20, 27), np.ones((20, 27), bool), TileConfig(16, 6))
    index = ops_torch.TileIndex.from_grid(grid)
    g = torch.Generator().manual_seed(0)
    shape = (grid.n_tiles, 16, 16)
    z, y, z0 = torch.randn(shape, generator=g), torch.rand(shape, generator=g), torch.randn(shape, generator=g)
    image = torch.from_numpy(tiling.gather(torch.rand((20, 27), generator=g).numpy(), grid))
    return index, z, y, z0, image


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _run_all(index, z, y, z0, image):
    canvas = ops.fuse_tiles(z, index)
    z_new = ops.gpr_update(z, y, canvas, z0, image, index, RefineConfig())
    x = ops.euler_step(z[None], y[None], 0.075, image=image, seeds=torch.zeros((z.shape[0], 2, 2)),
                       seed_counts=torch.ones(z.shape[0], dtype=torch.int64), rho_px=3.0, gamma=2.0, last=True,
                       extent=index.extent)
    return canvas, z_new, x


@pytest.mark.parametrize("choice,expected", [("torch", "ops_torch"), ("triton", "kernels"), ("auto", "ops_torch"),
                                             ("", "ops_torch"), (" Torch ", "ops_torch")])
def test_override_is_honoured(monkeypatch, case, choice, expected):
    monkeypatch.setenv("MCGENREF_KERNELS", choice)
    torch_calls = [_spy(monkeypatch, ops_torch, n) for n in ("fuse_tiles", "gpr_update", "euler_step")]
    kernel_calls = [_spy(monkeypatch, m, n) for m, n in ((fuse_kernel, "fuse_tiles"),
                                                         (update_kernel, "gpr_update"),
                                                         (euler_kernel, "euler_step"))]
    _run_all(*case)
    used = torch_calls if expected == "ops_torch" else kernel_calls
    unused = kernel_calls if expected == "ops_torch" else torch_calls
    assert all(len(c) == 1 for c in used) and not any(unused)


def test_both_backends_agree(monkeypatch, case):
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    a = _run_all(*case)
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    b = _run_all(*case)
    assert torch.equal(a[0], b[0])                     # fusion: bit-identical
    assert (a[1] - b[1]).abs().max() <= 1e-4
    assert (a[2] - b[2]).abs().max() <= 1e-4


def test_backend_choice(monkeypatch):
    cpu = torch.zeros(1)
    cuda_like = SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setenv("MCGENREF_KERNELS", "auto")
    assert ops.backend_for(cpu) == "torch"
    monkeypatch.setattr(ops, "_triton_ok", True)
    assert ops.backend_for(cuda_like) == "triton"
    monkeypatch.setattr(ops, "_triton_ok", False)
    assert ops.backend_for(cuda_like) == "torch"       # auto falls back when triton does not import
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    assert ops.backend_for(cuda_like) == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch, case):
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.KernelBackendError, match="TRITON_INTERPRET=1"):
        ops.backend_for(torch.zeros(1))
    index, z, *_ = case
    with pytest.raises(ops.KernelBackendError, match="TRITON_INTERPRET=1"):
        ops.fuse_tiles(z, index)


def test_triton_requested_but_missing(monkeypatch):
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    monkeypatch.setattr(ops, "_triton_ok", False)
    with pytest.raises(ops.KernelBackendError, match="cannot be imported"):
        ops.backend_for(torch.zeros(1))


def test_triton_on_another_device_is_refused(monkeypatch):
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    with pytest.raises(ops.KernelBackendError, match="no Triton kernels for device meta"):
        ops.backend_for(torch.zeros(1, device="meta"))


def test_unknown_choice_is_a_value_error(monkeypatch):
    monkeypatch.setenv("MCGENREF_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        ops.backend_for(torch.zeros(1))


@pytest.mark.parametrize("choice", ["torch", "triton"])
def test_inputs_are_checked_before_dispatch(monkeypatch, case, choice):
    monkeypatch.setenv("MCGENREF_KERNELS", choice)
    index, z, y, z0, image = case
    with pytest.raises(ValueError, match="float32"):
        ops.fuse_tiles(z.double(), index)
    with pytest.raises(ValueError, match="canvas must have shape"):
        ops.gpr_update(z, y, torch.zeros((3, 3)), z0, image, index)
    with pytest.raises(ValueError, match="v must have shape"):
        ops.euler_step(z, y[:1], 0.1)

"""CUDA-only checks (skipped without a GPU): the compiled Triton kernels against their torch twins, and the
fast refine against the reference on the GPU (SPEC §7, float32 with TF32 off). Run by bench/gpu_check.sh."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU with compiled Triton (TRITON_INTERPRET unset); bench/gpu_check.sh runs these")

from mcgenref_fast import ops, ops_torch, tiling  # noqa: E402
from mcgenref_fast.config import RefineConfig, TileConfig  # noqa: E402

CUDA = torch.device("cuda")
TOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _grid(h, w, tile, overlap, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    mask = (yy - h / 2) ** 2 + xx ** 2 <= (0.8 * w) ** 2
    mask &= rng.random((h, w)) > 0.01
    return tiling.make_grid((h, w), mask, TileConfig(tile, overlap))


@pytest.mark.parametrize("h,w,tile,overlap", [(1000, 777, 256, 32), (200, 130, 256, 32), (513, 700, 128, 64),
                                              (300, 300, 64, 0)])
def test_fuse_and_update_triton_match_torch_on_cuda(h, w, tile, overlap, monkeypatch):
    grid = _grid(h, w, tile, overlap)
    index = ops_torch.TileIndex.from_grid(grid, CUDA)
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (grid.n_tiles, tile, tile)
    z = 2 * torch.randn(shape, device=CUDA, generator=g)
    z0 = torch.clamp(2 * torch.randn(shape, device=CUDA, generator=g), -4, 4)
    y = torch.rand(shape, device=CUDA, generator=g)
    img = torch.rand(shape, device=CUDA, generator=g) * index.valid
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    canvas_tr = ops.fuse_tiles(z, index)
    z_tr = ops.gpr_update(z, y, canvas_tr, z0, img, index)
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    canvas_t = ops.fuse_tiles(z, index)
    z_t = ops.gpr_update(z, y, canvas_t, z0, img, index)
    cpu = tiling.fuse(z.cpu().numpy(), grid)
    assert (canvas_tr.cpu().numpy() - cpu).__abs__().max() <= 1e-6
    assert (canvas_tr - canvas_t).abs().max().item() <= 1e-6
    assert (z_tr - z_t).abs().max().item() <= TOL


def test_euler_step_triton_matches_torch_on_cuda(monkeypatch):
    g = torch.Generator(device="cuda").manual_seed(1)
    n, s, t = 7, 2, 256
    x = torch.randn((s, n, t, t), device=CUDA, generator=g)
    v = torch.randn((s, n, t, t), device=CUDA, generator=g)
    img = torch.rand((n, t, t), device=CUDA, generator=g)
    w = torch.rand((n, t, t), device=CUDA, generator=g)
    monkeypatch.setenv("MCGENREF_KERNELS", "triton")
    a = ops.euler_step(x, v, 0.075, blend_w=w, image=img, last=True)
    monkeypatch.setenv("MCGENREF_KERNELS", "torch")
    b = ops.euler_step(x, v, 0.075, blend_w=w, image=img, last=True)
    assert (a - b).abs().max().item() <= TOL


def test_fast_refine_matches_reference_on_cuda():
    from mcgenref_fast import reference
    from mcgenref_fast.refine import refine
    from tests.tiny_models import make_tiny_generator, make_tiny_segmentor

    g = torch.Generator().manual_seed(3)
    h, w = 300, 220
    image = 0.3 + 0.02 * torch.randn((h, w), generator=g)
    for r, c in [(100, 60), (104, 66), (97, 70), (110, 58), (150, 120)]:
        image[r:r + 2, c:c + 2] += 0.4
    breast = torch.ones((h, w), dtype=torch.bool)
    breast[:, 180:] = False
    cfg = RefineConfig(tiles=TileConfig(128, 32))
    seg, gen = make_tiny_segmentor().to(CUDA), make_tiny_generator().to(CUDA)
    ref = reference.refine(image.to(CUDA), breast.to(CUDA), seg, gen, cfg, seed=5)
    fast = refine(image.to(CUDA), breast.to(CUDA), seg, gen, cfg, seed=5)
    same_seeds = all(
        len(a.seeds_rc) == len(b.seeds_rc) and all(np.array_equal(x, y) for x, y in zip(a.seeds_rc, b.seeds_rc))
        for a, b in zip(ref.diagnostics, fast.diagnostics))
    assert same_seeds
    p_ref, p_fast = ref.probability(), fast.probability()
    assert (p_ref - p_fast).abs().max().item() <= 1e-4
    differ = (p_ref > 0.5) != (p_fast > 0.5)
    assert ((p_ref[differ] - 0.5).abs() <= 1e-4).all()

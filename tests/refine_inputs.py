"""Small canonical inputs shared by the reference and fast refine tests."""
from __future__ import annotations

import torch


def flat_image_with_spots(h: int, w: int, seed: int = 0, spots: bool = True) -> torch.Tensor:
    """Flat noisy tissue (0.3 ± 0.02) with a few bright 2×2 spots (MC-like, +0.3 to +0.5)."""
    g = torch.Generator().manual_seed(seed)
    img = 0.3 + 0.02 * torch.randn((h, w), generator=g)
    if spots:
        for r, c, a in ((h // 4, w // 4, 0.4), (3 * h // 4, 2 * w // 3, 0.3), (h // 2, w // 2, 0.5)):
            img[r:r + 2, c:c + 2] += a
    return img.clamp_min(0.0)


def left_breast_mask(h: int, w: int) -> torch.Tensor:
    """Breast over the left 4/5 of the image (chest wall left)."""
    mask = torch.zeros((h, w), dtype=torch.bool)
    mask[:, : (4 * w) // 5] = True
    return mask


def seed_test_breast(kind: str, h: int, w: int, rng: "np.random.Generator") -> torch.Tensor:
    """Breast masks of the seed tests: 'full', 'sparse' (~3 % scattered pixels) or else `left_breast_mask`."""
    if kind == "full":
        return torch.ones((h, w), dtype=torch.bool)
    if kind == "sparse":
        return torch.from_numpy(rng.random((h, w)) > 0.97)
    return left_breast_mask(h, w)


def kernel_test_mask(h: int, w: int, kind: str, rng: "np.random.Generator") -> "np.ndarray":
    """Breast masks of the kernel tests: 'full' (all breast), 'sparse' (~3 % scattered pixels: inactive
    tiles) or 'disc' (a disc centred on the left edge, chest wall left)."""
    import numpy as np

    if kind == "full":
        return np.ones((h, w), bool)
    if kind == "sparse":
        return rng.random((h, w)) > 0.97
    yy, xx = np.ogrid[:h, :w]
    return (yy - h / 2) ** 2 + xx ** 2 <= (0.7 * w) ** 2


class LaunchRecorder:
    """Stands in for a Triton kernel in its launcher's `kernel[grid](...)` call: records (grid, launch keyword
    arguments) in `launches`, then launches the real kernel (tests of the launchers' launch shapes)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch

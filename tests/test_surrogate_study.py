"""scripts/surrogate_study.py: the per-crop pixel sets and the per-MC peaks it reports (README, TT-GPR)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from mcgenref_fast.config import RefineConfig, TileConfig
from tiny_models import make_tiny_generator, make_tiny_segmentor


def _study():
    path = Path(__file__).resolve().parents[1] / "scripts" / "surrogate_study.py"
    spec = importlib.util.spec_from_file_location("surrogate_study", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("surrogate_study", mod)
    spec.loader.exec_module(mod)
    return mod


def test_crop_pixels_sets_and_peaks() -> None:
    study = _study()
    rng = np.random.default_rng(3)
    image = (0.4 + 0.01 * rng.standard_normal((70, 90))).astype(np.float32)
    truth = np.zeros(image.shape, bool)
    truth[10:12, 10:12] = True            # MC 1: bright, seen by the tiny segmentor
    image[10:12, 10:12] += 0.5
    truth[50, 70] = True                  # MC 2: invisible (no contrast)
    image[40:42, 30:32] += 0.5            # a false positive far from both
    breast = np.ones(image.shape, bool)
    cfg = RefineConfig(tiles=TileConfig(tile_px=32, overlap_px=8))
    p0_t, y_t, p0_f, y_f, peak, peak_y = study.crop_pixels(image, breast, truth, make_tiny_segmentor(),
                                                   make_tiny_generator(), cfg)
    assert p0_t.shape == y_t.shape == (5,)
    assert p0_f.shape == y_f.shape and p0_f.size >= 1 and (p0_f >= 0.5).all()
    assert peak.shape == peak_y.shape == (2,)
    assert peak_y[0] == y_t[:4].max()     # MC 1 holds the first four true pixels (raster order)
    assert peak[0] >= 0.5 > peak[1]       # labels in raster order: the bright MC first


def test_parse_fields() -> None:
    study = _study()
    assert study.parse_fields("seed_threshold=0.1,euler_steps=8") == {"seed_threshold": 0.1, "euler_steps": 8}
    assert study.parse_fields("") == {}
    try:
        study.parse_fields("nope=1")
    except SystemExit as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("an unknown field must be refused")
    for bad in ("t0", "t0=abc"):                      # no '=', not a number: a message, not a traceback
        try:
            study.parse_fields(bad)
        except SystemExit as exc:
            assert "t0" in str(exc)
        else:
            raise AssertionError(f"{bad!r} must be refused")


def test_flat_field_probe_prints_both_rows(capsys) -> None:
    study = _study()
    with torch.no_grad():
        study.flat_field_probe(make_tiny_segmentor(), make_tiny_generator(), RefineConfig(), size=32, draws=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("seed") and out[1].startswith("no seed")

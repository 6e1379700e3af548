"""TT-GPR end to end and its non-network stages: the fast path (`mcgenref_fast.refine`) vs the reference
(`mcgenref_fast.reference`), in the same run (pytest-benchmark, compare the medians).

Case: a 1024×1024 canonical crop (0.07 mm, chest wall left) of a real `dev` background
(shared/data/ffdm_backgrounds/BCC_2_L_CC.png) with one injected MC cluster (`synth.inject_clusters`), the
default RefineConfig (T = 256, O = 32: 25 active tiles; K = 3, 2 samples, N = 4, J = 10). Networks: the
shipped ones when `models.load_default_models()` works, else `Segmentor` / `VelocityNet` with their
default configs from `torch.manual_seed(0)` (untrained: the seed pattern, hence the generator's work, is
not that of trained models; `extra_info` records the seeded tiles per iteration); MCGENREF_BENCH_WEIGHTS=
dir[,dir] loads them from weights directories instead (`models.load_model`). Skips when the data is absent.

    pytest bench/test_bench_refine.py --benchmark-enable --benchmark-group-by=group -s
    MCGENREF_BENCH_THREADS=1 pytest ...      # both paths on one intra-op thread (the fast path: 1 worker)

On a small shared CPU box the reference's batch-1 network calls with 2 intra-op threads slow down ~50×
when another process holds a core (threads wait in barriers for the descheduled one); record the load
(`extra_info['loadavg']`) and compare runs taken under the same conditions.

Groups: `refine-1024` (end to end; target fast ≥ 3× faster) and `refine-1024-nonnetwork` (one outer
iteration's seeds + seed maps + fusion + J inner steps with the energy record, from the same z, y; target
≥ 10× faster). The last test checks that the two end-to-end results agree (SPEC §7) on this case.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mcgenref_fast import ops, tiling
from mcgenref_fast import reference as ref
from mcgenref_fast import refine as fast
from mcgenref_fast.config import RefineConfig
from mcgenref_fast.ops_torch import TileIndex
from mcgenref_fast.refine_types import TileTensors, blend_weight_map, fuse_tiles, gather_tiles, seed_dots
from mcgenref_fast.seeds import extract_seeds
from mcgenref_fast.seeds_fast import extract_seeds_fast

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MCGENREF_SHARED_DATA", REPO.parent / "shared" / "data"))
BACKGROUND = DATA / "ffdm_backgrounds" / "BCC_2_L_CC.png"
SPACING_MM = 0.07
CROP = 1024
CFG = RefineConfig()
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if os.environ.get("MCGENREF_BENCH_THREADS"):       # torch intra-op threads for both paths (CPU)
    torch.set_num_threads(int(os.environ["MCGENREF_BENCH_THREADS"]))
if DEVICE.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

_results: dict[str, object] = {}


def _canonical_crop() -> tuple[np.ndarray, np.ndarray, str]:
    """(image, breast mask, how) of the 1024×1024 crop with one injected cluster."""
    try:
        from mcgenref_fast.canonical import to_canonical
        from mcgenref_fast.io import read_mammogram
        from mcgenref_fast.synth import inject_clusters
    except ImportError:
        return _fallback_crop()
    canonical = to_canonical(read_mammogram(BACKGROUND, spacing_mm=SPACING_MM))
    breast = np.asarray(canonical.breast_mask, bool)
    rows = np.flatnonzero(breast.any(axis=1))
    r0 = int(np.clip((rows[0] + rows[-1]) // 2 - CROP // 2, 0, breast.shape[0] - CROP))
    site = np.array([[r0 + CROP / 2, CROP / 2 - 12.0]])       # the middle of the crop, inside the breast
    if not breast[int(site[0, 0]), int(site[0, 1])]:
        pytest.skip("the injection site is outside the breast")
    inj = inject_clusters(canonical, site, np.random.default_rng(0))
    image = np.ascontiguousarray(inj.image[r0:r0 + CROP, :CROP], np.float32)
    mask = np.ascontiguousarray(breast[r0:r0 + CROP, :CROP])
    return image, mask, f"io+canonical+synth, rows {r0}..{r0 + CROP}, {len(inj.clusters[0].mcs)} MCs"


def _fallback_crop() -> tuple[np.ndarray, np.ndarray, str]:
    """Pillow + percentile normalisation + a few bright 3-px discs (when io/canonical/synth are missing)."""
    from PIL import Image

    raw = np.asarray(Image.open(BACKGROUND), np.float32)
    breast_full = raw > np.percentile(raw, 50) * 0.2
    if breast_full[:, -1].sum() > breast_full[:, 0].sum():
        raw, breast_full = raw[:, ::-1], breast_full[:, ::-1]
    lo, hi = np.percentile(raw[breast_full], [0.5, 99.8])
    image = np.maximum(0.0, (raw - lo) / (hi - lo)).astype(np.float32)
    r0 = max(0, image.shape[0] // 2 - CROP // 2)
    image = np.ascontiguousarray(image[r0:r0 + CROP, :CROP])
    mask = np.ascontiguousarray(breast_full[r0:r0 + CROP, :CROP])
    yy, xx = np.ogrid[:CROP, :CROP]
    for dr, dc in ((0, 0), (9, 5), (-7, 12), (4, -10), (-12, -6)):
        image[(yy - 512 - dr) ** 2 + (xx - 500 - dc) ** 2 <= 2] += 0.5
    return image, mask, "pillow fallback"


def _models_from(dirs: list[str]):
    """Each model from the first of `dirs` whose manifest holds it (MCGENREF_BENCH_WEIGHTS=dir[,dir])."""
    from mcgenref_fast import models

    out = []
    for name in ("segmentor", "generator"):
        found = [d for d in dirs if name in models.read_manifest(d)["models"]]
        if not found:
            raise FileNotFoundError(f"no {name} in {dirs}")
        out.append(models.load_model(found[0], name, device=str(DEVICE)))
    return out[0], out[1]


def _models():
    from mcgenref_fast import models

    dirs = [d for d in os.environ.get("MCGENREF_BENCH_WEIGHTS", "").split(",") if d]
    try:
        if dirs:
            seg, gen = _models_from(dirs)
            how = f"weights from {dirs}"
        else:
            seg, gen = models.load_default_models(device=str(DEVICE))
            how = "shipped weights"
    except Exception as exc:  # no shipped weights yet: untrained nets with the default configs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            seg = models.Segmentor(models.SegmentorConfig())
            gen = models.VelocityNet(models.GeneratorConfig())
        how = f"untrained default configs, seed 0 ({type(exc).__name__})"
    return seg.to(DEVICE).eval(), gen.to(DEVICE).eval(), how


@pytest.fixture(scope="module")
def case():
    if not BACKGROUND.is_file():
        pytest.skip(f"{BACKGROUND} not found")
    image, mask, how = _canonical_crop()
    seg, gen, models_how = _models()
    return dict(image=torch.from_numpy(image).to(DEVICE), mask=torch.from_numpy(mask).to(DEVICE), seg=seg, gen=gen,
                info={"image": how, "models": models_how, "device": str(DEVICE),
                      "torch_threads": torch.get_num_threads()})


@pytest.fixture(autouse=True)
def _record_load(request):
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None and hasattr(os, "getloadavg"):
        bench.extra_info["loadavg"] = [round(v, 2) for v in os.getloadavg()]


def _seeds_summary(result) -> list[int]:
    return [sum(1 for c in d.seeds_per_tile if c > 0) for d in result.diagnostics]


@pytest.mark.benchmark(group="refine-1024")
def test_refine_fast(benchmark, case):
    result = benchmark.pedantic(fast.refine, args=(case["image"], case["mask"], case["seg"], case["gen"], CFG),
                                rounds=3, iterations=1)
    _results["fast"] = result
    benchmark.extra_info.update(case["info"], seeded_tiles_per_iteration=_seeds_summary(result),
                                n_tiles=len(result.diagnostics[0].seeds_per_tile))


@pytest.mark.benchmark(group="refine-1024")
def test_refine_reference(benchmark, case):
    result = benchmark.pedantic(ref.refine, args=(case["image"], case["mask"], case["seg"], case["gen"], CFG),
                                rounds=1, iterations=1)
    _results["reference"] = result
    benchmark.extra_info.update(case["info"], seeded_tiles_per_iteration=_seeds_summary(result))


# ------------------------------------------------------------------------------- non-network stages
@pytest.fixture(scope="module")
def stage_case(case):
    """One outer iteration's inputs: z = z0 (the segmentor once), y = a fixed surrogate (no network)."""
    image, mask = case["image"], case["mask"]
    grid = tiling.make_grid(tuple(image.shape), mask.cpu().numpy(), CFG.tiles)
    tiles = TileTensors.from_grid(grid, DEVICE)
    index = TileIndex.from_grid(grid, DEVICE)
    i_tiles = gather_tiles(image, tiles)
    with torch.no_grad():
        z0, _ = fast.initial_logits(i_tiles, case["seg"], CFG)
    y = torch.sigmoid(z0 + 1.5 * (i_tiles > i_tiles.mean()).float())   # a surrogate that moves z
    covered = torch.from_numpy(grid.covered).to(DEVICE)
    return dict(grid=grid, tiles=tiles, index=index, i_tiles=i_tiles, z0=z0, y=y, covered=covered, mask=mask)


def _stages_reference(c):
    canvas = fuse_tiles(c["z0"], c["tiles"])
    seeds = extract_seeds(canvas, c["mask"], c["covered"], c["tiles"].origins, CFG)
    maps = [(seed_dots(s, CFG.tiles.tile_px, CFG.seed_sigma_px, DEVICE),
             blend_weight_map(s, CFG.tiles.tile_px, CFG.blend_rho_px, CFG.blend_gamma, v, DEVICE))
            for s, v in zip(seeds, c["tiles"].valid) if s.shape[0] > 0]
    z, energies = ref.inner_loop(c["z0"], c["y"], c["z0"], c["i_tiles"], c["tiles"], CFG)
    return z, energies, sum(int(s.shape[0]) for s in seeds), len(maps)


def _stages_fast(c, record_energy=True):
    index = c["index"]
    canvas = ops.fuse_tiles(c["z0"], index)
    seeds = extract_seeds_fast(canvas, c["mask"], c["covered"], index, CFG)
    seeded = torch.nonzero(seeds.counts > 0)[:, 0]
    fast.seed_maps(seeds.local[seeded], seeds.counts[seeded], CFG.tiles.tile_px, CFG, index.valid[seeded])
    z, energies, _ = fast.inner_loop(c["z0"], c["y"], c["z0"], c["i_tiles"], index, CFG,
                                     record_energy=record_energy)
    return z, energies, int(seeds.counts.sum()), int(seeded.shape[0])


@pytest.mark.benchmark(group="refine-1024-nonnetwork")
def test_stages_fast(benchmark, stage_case):
    z, energies, n_seeds, n_seeded = benchmark.pedantic(_stages_fast, args=(stage_case,), rounds=5, iterations=1)
    z_ref, e_ref, n_seeds_ref, n_seeded_ref = _stages_reference(stage_case)
    assert (n_seeds, n_seeded) == (n_seeds_ref, n_seeded_ref)
    assert float((z - z_ref).abs().max()) <= 1e-4
    np.testing.assert_allclose(energies, e_ref, rtol=1e-5)
    benchmark.extra_info.update(seeds=n_seeds, seeded_tiles=n_seeded)


@pytest.mark.benchmark(group="refine-1024-nonnetwork")
def test_stages_fast_without_energy(benchmark, stage_case):
    benchmark.pedantic(_stages_fast, args=(stage_case, False), rounds=5, iterations=1)


@pytest.mark.benchmark(group="refine-1024-nonnetwork")
def test_stages_reference(benchmark, stage_case):
    benchmark.pedantic(_stages_reference, args=(stage_case,), rounds=2, iterations=1)


# ---------------------------------------------------------------------------------- the two agree
def test_fast_and_reference_results_agree():
    if "fast" not in _results or "reference" not in _results:
        pytest.skip("run with both end-to-end benchmarks")
    res_fast, res_ref = _results["fast"], _results["reference"]
    same_seeds = all(len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
                     for a, b in ((d.seeds_rc, e.seeds_rc) for d, e in zip(res_fast.diagnostics, res_ref.diagnostics)))
    p_fast, p_ref = res_fast.probability(), res_ref.probability()
    diff = float((p_fast - p_ref).abs().max())
    print(f"\nsame seeds: {same_seeds}; max |p_fast - p_ref| = {diff:.3g}")
    if same_seeds:
        assert diff <= 1e-4
        differ = res_fast.mask() != res_ref.mask()
        assert bool(((p_ref[differ] - 0.5).abs() <= 1e-4).all())

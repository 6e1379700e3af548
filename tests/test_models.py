"""Models: any-size forward, rectified-flow identities, weights manifest safety, cost figures."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mcgenref_fast.errors import WeightsError
from mcgenref_fast.models import (
    GeneratorConfig,
    Segmentor,
    SegmentorConfig,
    VelocityNet,
    load_model,
    load_models,
    model_cost,
    read_manifest,
    save_model,
)
from mcgenref_fast.models.flow import (
    euler_project,
    flow_loss,
    interpolate,
    sample_time,
    seed_blend_weight,
    target_velocity,
)
from mcgenref_fast.models.weights import sha256_file

TINY_SEG = SegmentorConfig(depth=2, base_width=4, max_width=8)
TINY_GEN = GeneratorConfig(depth=2, base_width=4, max_width=8, time_dim=8, time_hidden=16)


@pytest.mark.parametrize("shape", [(37, 53), (256, 131), (1, 1), (8, 16)])
def test_segmentor_any_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = Segmentor(SegmentorConfig(depth=3, base_width=4, max_width=16)).eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, *shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("shape", [(37, 53), (256, 131)])
def test_velocity_any_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = VelocityNet(GeneratorConfig(depth=3, base_width=4, max_width=16, time_dim=8, time_hidden=16)).eval()
    with torch.no_grad():
        # freshly built: the zero-initialised output conv gives velocity 0
        assert torch.equal(net(torch.rand(1, 2, *shape), torch.tensor([0.5])), torch.zeros(1, 1, *shape))
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        y = net(torch.rand(3, 2, *shape), torch.rand(3))
        y_scalar_t = net(torch.rand(3, 2, *shape), 0.7)
    assert y.shape == (3, 1, *shape) and y_scalar_t.shape == (3, 1, *shape)


def test_segmentor_no_norm_and_wrong_channels() -> None:
    net = Segmentor(SegmentorConfig(depth=1, base_width=4, norm="none", pad_mode="replicate"))
    assert net(torch.rand(1, 1, 9, 9)).shape == (1, 1, 9, 9)
    with pytest.raises(ValueError):
        net(torch.rand(1, 2, 9, 9))
    with pytest.raises(ValueError):
        SegmentorConfig(norm="batch")


def test_flow_loss_zero_for_exact_velocity() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 12, 12, generator=g)
    s = torch.rand(4, 1, 12, 12, generator=g)
    eps = torch.randn(4, 1, 12, 12, generator=g)
    t = sample_time(4, 0.5, 1.0, generator=g)
    assert ((t >= 0.5) & (t <= 1.0)).all()

    def exact(inp: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        assert inp.shape == (4, 2, 12, 12) and torch.equal(inp[:, 1:], s)
        return x - eps

    assert flow_loss(exact, x, s, eps, t).item() == 0.0
    assert flow_loss(lambda inp, tt: torch.zeros_like(x), x, s, eps, t).item() > 0.1
    # the path's end points and velocity
    assert torch.allclose(interpolate(x, eps, torch.zeros(4)), eps)
    assert torch.allclose(interpolate(x, eps, torch.ones(4)), x)
    assert torch.equal(target_velocity(x, eps), x - eps)


def test_weighted_flow_loss_is_the_weighted_mean() -> None:
    g = torch.Generator().manual_seed(4)
    x, s, eps = (torch.rand(2, 1, 9, 7, generator=g) for _ in range(3))
    t = sample_time(2, 0.5, 1.0, generator=g)
    w = torch.rand(2, 1, 9, 7, generator=g)
    zero = lambda inp, tt: torch.zeros_like(x)                      # noqa: E731
    err2 = (x - eps) ** 2
    assert torch.allclose(flow_loss(zero, x, s, eps, t, w), (w * err2).sum() / w.sum())
    assert torch.allclose(flow_loss(zero, x, s, eps, t, torch.ones_like(w)), flow_loss(zero, x, s, eps, t))
    only_first = torch.zeros_like(w)
    only_first[0, 0, 3, 2] = 5.0                                    # one pixel weighted: its error alone
    assert torch.allclose(flow_loss(zero, x, s, eps, t, only_first), err2[0, 0, 3, 2])


def test_seed_blend_weight_matches_tt_gpr_blend() -> None:
    """floor + (1 - floor)·min(1, γ·exp(-d²/2ρ²)), d to the nearest exact seed peak; no seed → floor."""
    from mcgenref_fast.synth.seeds import gaussian_dots

    rho, gamma, floor = 4.0, 2.0, 0.1
    pts = np.array([[5, 6], [20, 3]])
    maps = torch.from_numpy(np.stack([gaussian_dots(pts, (24, 17)), np.zeros((24, 17), np.float32)]))[:, None]
    w = seed_blend_weight(maps, rho, gamma, floor)
    assert w.shape == maps.shape and w.dtype == torch.float32
    rr, cc = np.mgrid[:24, :17]
    d2 = np.minimum((rr - 5) ** 2 + (cc - 6) ** 2, (rr - 20) ** 2 + (cc - 3) ** 2)
    want = floor + (1 - floor) * np.minimum(1.0, gamma * np.exp(-d2 / (2 * rho * rho)))
    np.testing.assert_allclose(w[0, 0].numpy(), want, rtol=1e-6, atol=1e-6)
    assert torch.all(w[1] == floor)
    with pytest.raises(ValueError, match="floor"):
        seed_blend_weight(maps, rho, gamma, 1.5)


def test_euler_exact_for_constant_velocity() -> None:
    g = torch.Generator().manual_seed(2)
    img = torch.rand(2, 1, 10, 11, generator=g)
    seeds = torch.zeros_like(img)
    eps = torch.randn(img.shape, generator=g)
    c = torch.randn(img.shape, generator=g)
    t0 = 0.7
    start = (1 - t0) * eps + t0 * img
    one = euler_project(img, seeds, lambda inp, t: c, t0=t0, n_steps=1, eps=eps)
    assert torch.allclose(one, start + (1 - t0) * c, atol=1e-6)
    four = euler_project(img, seeds, lambda inp, t: c, t0=t0, n_steps=4, eps=eps)
    assert torch.allclose(four, one, atol=1e-6)
    # the exact straight-path velocity lands on the data in any number of steps
    exact = euler_project(img, seeds, lambda inp, t: img - eps, t0=t0, n_steps=4, eps=eps)
    assert torch.allclose(exact, img, atol=1e-6)
    # times seen by the velocity: t0 + nΔ
    seen: list[float] = []
    euler_project(img, seeds, lambda inp, t: (seen.append(float(t[0])), c)[1], t0=t0, n_steps=4, eps=eps)
    assert seen == pytest.approx([0.7, 0.775, 0.85, 0.925])
    # eps drawn from a generator is reproducible
    a = euler_project(img, seeds, lambda inp, t: c, generator=torch.Generator().manual_seed(5))
    b = euler_project(img, seeds, lambda inp, t: c, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    seg, gen = _perturbed(Segmentor(TINY_SEG)), _perturbed(VelocityNet(TINY_GEN))
    save_model(seg, tmp_path, training={"steps": 3})
    entry = save_model(gen, tmp_path)
    manifest = read_manifest(tmp_path)
    assert set(manifest["models"]) == {"segmentor", "generator"}
    assert manifest["models"]["segmentor"]["training"] == {"steps": 3}
    assert entry["sha256"] == sha256_file(tmp_path / "generator.pt")
    seg2, gen2 = load_models(tmp_path)
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(seg(x), seg2(x))
        xs = torch.rand(1, 2, 20, 24)
        assert torch.equal(gen(xs, torch.tensor([0.8])), gen2(xs, torch.tensor([0.8])))
    assert seg2.weights_info["sha256"] == manifest["models"]["segmentor"]["sha256"]
    assert seg2.cfg == TINY_SEG and gen2.cfg == TINY_GEN


def test_film_segmentor_source_keeps_a_retrained_segmentor_without_the_shipped_film_one(tmp_path) -> None:
    """Where the film segmentor comes from: the folder's own `segmentor_film`; the shipped one when the
    segmentor is the shipped one (no folder, or a folder with a generator only); none for a folder with its
    own segmentor and no film one. A `segmentor_film` entry that is not a segmentor is refused."""
    from mcgenref_fast.models.weights import (FILM_SEGMENTOR, default_weights_dir, film_segmentor_source,
                                              load_film_segmentor, weights_sources)

    shipped = default_weights_dir()
    assert film_segmentor_source(None) == shipped
    save_model(VelocityNet(TINY_GEN), tmp_path / "gen_only")
    assert film_segmentor_source(tmp_path / "gen_only") == shipped
    save_model(Segmentor(TINY_SEG), tmp_path / "seg_only")
    with pytest.warns(UserWarning, match="a segmentor of its own and no segmentor_film"):
        assert film_segmentor_source(tmp_path / "seg_only") is None
    with pytest.warns(UserWarning):
        assert load_film_segmentor(tmp_path / "seg_only") is None
    # the shipped segmentor's own file in a folder (weights_from_git of an older commit) is the shipped segmentor
    import shutil

    (tmp_path / "shipped_copy").mkdir()
    shipped_entry = read_manifest(shipped)["models"]["segmentor"]
    shutil.copyfile(shipped / shipped_entry["file"], tmp_path / "shipped_copy" / shipped_entry["file"])
    (tmp_path / "shipped_copy" / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "models": {"segmentor": shipped_entry}}))
    assert film_segmentor_source(tmp_path / "shipped_copy") == shipped
    film = _perturbed(Segmentor(TINY_SEG))
    entry = save_model(film, tmp_path / "film_only", name=FILM_SEGMENTOR)
    assert film_segmentor_source(tmp_path / "film_only") == tmp_path / "film_only"
    # a folder with only a film segmentor is a valid --weights folder: both networks stay the shipped ones
    assert weights_sources(tmp_path / "film_only") == {"segmentor": shipped, "generator": shipped}
    loaded = load_film_segmentor(tmp_path / "film_only")
    assert loaded.weights_info["sha256"] == entry["sha256"]
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), film(x))
    save_model(VelocityNet(TINY_GEN), tmp_path / "wrong", name=FILM_SEGMENTOR)
    with pytest.raises(WeightsError, match="'segmentor_film' must be a segmentor"):
        load_film_segmentor(tmp_path / "wrong")


def test_average_models_is_the_mean_of_the_entries_and_refuses_other_architectures(tmp_path) -> None:
    """`average_models`: each float tensor is the mean over the folders (checked against a hand average), the
    sources are listed, and scripts/average_weights.py writes it as a loadable entry; one folder, or an entry
    of another architecture, is a WeightsError."""
    import importlib.util
    from pathlib import Path

    from mcgenref_fast.models.weights import average_models, load_film_segmentor

    torch.manual_seed(3)
    nets = [_perturbed(Segmentor(TINY_SEG)) for _ in range(3)]
    dirs = [tmp_path / f"s{i}" for i in range(3)]
    for net, d in zip(nets, dirs):
        save_model(net, d, name="segmentor_film")
    soup = average_models(dirs, "segmentor_film")
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            want = sum(n.state_dict()[key].double() for n in nets) / 3
            assert torch.allclose(value.double(), want, atol=1e-7), key
    assert [s["directory"] for s in soup.weights_info["average_of"]] == [str(d) for d in dirs]
    assert any(not torch.equal(v, nets[0].state_dict()[k]) for k, v in soup.state_dict().items() if v.is_floating_point())
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("average_weights", root / "scripts" / "average_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    assert script.main([str(tmp_path / "soup")] + [str(d) for d in dirs]) == 0
    loaded = load_film_segmentor(tmp_path / "soup")
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(x), soup(x), atol=1e-6)
    with pytest.raises(WeightsError, match="at least two"):
        average_models(dirs[:1], "segmentor_film")
    save_model(Segmentor(SegmentorConfig(depth=1, base_width=4)), tmp_path / "other", name="segmentor_film")
    with pytest.raises(WeightsError, match="another architecture"):
        average_models([dirs[0], tmp_path / "other"], "segmentor_film")
    assert script.main([str(tmp_path / "bad"), str(dirs[0])]) == 2


def test_checksum_mismatch_raises(tmp_path) -> None:
    save_model(Segmentor(TINY_SEG), tmp_path)
    path = tmp_path / "segmentor.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_model(tmp_path, "segmentor")


def test_missing_files_raise(tmp_path) -> None:
    with pytest.raises(WeightsError, match="manifest"):
        load_model(tmp_path, "segmentor")
    save_model(Segmentor(TINY_SEG), tmp_path)
    with pytest.raises(WeightsError, match="generator"):
        load_model(tmp_path, "generator")
    (tmp_path / "segmentor.pt").unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_model(tmp_path, "segmentor")


class _Payload:
    """A non-tensor object: unpickling it would run arbitrary code in an unsafe loader."""

    def __reduce__(self):  # noqa: D105
        return (print, ("pickle payload executed",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_non_tensor_pickle_refused(tmp_path) -> None:
    save_model(Segmentor(TINY_SEG), tmp_path)
    path = tmp_path / "segmentor.pt"
    torch.save({"head.weight": _Payload()}, path)
    # a manifest whose checksum matches the hostile file: the weights_only unpickler must still refuse it
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"]["segmentor"]["sha256"] = sha256_file(path)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="refused"):
        load_model(tmp_path, "segmentor")
    # a plain pickle (not a torch file) is refused too
    path.write_bytes(pickle.dumps({"a": 1}))
    manifest["models"]["segmentor"]["sha256"] = sha256_file(path)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError):
        load_model(tmp_path, "segmentor")


def test_wrong_architecture_raises(tmp_path) -> None:
    save_model(Segmentor(TINY_SEG), tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"]["segmentor"]["config"]["base_width"] = 6
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="architecture"):
        load_model(tmp_path, "segmentor")


def test_model_cost_counts_macs() -> None:
    net = Segmentor(SegmentorConfig(depth=1, base_width=2, max_width=2, norm="none"))
    cost = model_cost(net, tile_px=16, repeats=2)
    # enc: 1->2, 2->2 at 16²; 2->2, 2->2 at 8²; up 2->2 (k2 s2) from 8²; dec 4->2, 2->2 at 16²; head 2->1
    p16, p8 = 256, 64
    macs = p16 * 2 * 9 * (1 + 2) + p8 * 2 * 9 * (2 + 2) + p8 * 2 * 2 * 4 + p16 * 2 * 9 * (4 + 2) + p16 * 2
    assert cost["gmacs"] == pytest.approx(macs / 1e9)
    assert cost["params"] == sum(p.numel() for p in net.parameters())
    assert cost["cpu_ms"] > 0
    assert model_cost(VelocityNet(TINY_GEN), tile_px=16, repeats=1)["gflops"] > 0


def test_default_sizes_in_budget() -> None:
    """The shipped architectures stay in the 50-150k parameter budget (TT-GPR runs them ~30x per tile)."""
    for net in (Segmentor(), VelocityNet()):
        n = sum(p.numel() for p in net.parameters())
        assert 50_000 <= n <= 150_000, (type(net).__name__, n)


def _validate_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_models.py"
    spec = importlib.util.spec_from_file_location("validate_models", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_models", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_validation_mc_matching_and_blend() -> None:
    import numpy as np

    vm = _validate_module()
    true = np.zeros((40, 40), bool)
    true[5:7, 5:7] = True        # MC 1: hit by a prediction 5 px away (<= 7.14 px = 0.5 mm)
    true[30, 30] = True          # MC 2: missed
    pred = np.zeros_like(true)
    pred[5, 12] = True           # near MC 1
    pred[20:22, 5] = True        # false positive (> 0.5 mm from any true pixel)
    assert vm.match_mcs(pred, true, 0.5 / 0.07) == (2, 1, 1)
    assert vm.match_mcs(np.zeros_like(true), true, 7.14) == (2, 0, 0)
    assert vm.match_mcs(pred, np.zeros_like(true), 7.14) == (0, 0, 2)
    w = vm.blend_weight(np.array([[10, 10]]), (30, 50), rho_px=1 / 0.07, gamma=2.0)
    assert w[10, 10] == 1.0 and 0.45 < w[10, 10 + round(1.7 / 0.07)] < 0.55
    assert not vm.blend_weight(np.zeros((0, 2)), (5, 5), 14.0, 2.0).any()
    ok, _ = vm.generator_check({"found_mcs": 10, "fp_mcs": 20}, {"found_mcs": 11, "fp_mcs": 22})
    bad, _ = vm.generator_check({"found_mcs": 10, "fp_mcs": 20}, {"found_mcs": 11, "fp_mcs": 23})
    assert ok and not bad

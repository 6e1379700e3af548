"""`net_exec` on the CPU (issue 9): buckets, padding, the graph-call bookkeeping with a fake replay, the
eager CPU path (bit-identical to calling the network), the precision checks, and their wiring into
`refine`, `Engine` and the CLI. The CUDA side (autocast, channels-last, real graphs) is in tests/test_gpu.py."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import replace

import pytest
import torch

from mcgenref_fast import net_exec
from mcgenref_fast.config import RefineConfig, TileConfig
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.net_exec import (ExecConfig, GraphedCall, NetExecutor, bucket_for, bucket_sizes, check_precision,
                                    executor_for, pad_batch, upload)
from tests.refine_inputs import flat_image_with_spots, left_breast_mask
from tests.tiny_models import make_tiny_generator, make_tiny_segmentor


# ------------------------------------------------------------------------------------------- buckets
@pytest.mark.parametrize("max_batch,expected", [(1, (1,)), (2, (1, 2)), (32, (1, 2, 4, 8, 16, 32)),
                                                (24, (1, 2, 4, 8, 16, 24)), (5, (1, 2, 4, 5))])
def test_bucket_sizes(max_batch, expected):
    assert bucket_sizes(max_batch) == expected


def test_bucket_sizes_rejects_zero():
    with pytest.raises(ValueError, match="max_batch"):
        bucket_sizes(0)


@pytest.mark.parametrize("n,expected", [(1, 1), (2, 2), (3, 4), (5, 8), (16, 16), (17, 32), (31, 32), (32, 32)])
def test_bucket_for_picks_the_smallest_bucket_that_fits(n, expected):
    assert bucket_for(n, bucket_sizes(32)) == expected


@pytest.mark.parametrize("n", [0, 33])
def test_bucket_for_rejects_out_of_range(n):
    with pytest.raises(ValueError):
        bucket_for(n, bucket_sizes(32))


def test_pad_batch_appends_zero_rows():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2)
    padded = pad_batch(x, 8)
    assert padded.shape == (8, 2, 2)
    assert torch.equal(padded[:3], x) and not padded[3:].any()
    assert pad_batch(x, 3) is x
    with pytest.raises(ValueError, match="pad"):
        pad_batch(x, 2)


# ---------------------------------------------------------------------------- graph call bookkeeping
def _fake_graph(net, bucket: int, example: tuple[torch.Tensor, ...]) -> tuple[GraphedCall, list[int]]:
    """A GraphedCall whose 'replay' recomputes the static output from the static inputs (what a CUDA graph
    replay does), counting replays."""
    static_in = tuple(pad_batch(x, bucket).clone() for x in example)
    static_out = net(*static_in).clone()
    replays: list[int] = []

    def replay() -> None:
        replays.append(1)
        static_out.copy_(net(*static_in))

    return GraphedCall(static_in, static_out, replay), replays


def test_graphed_call_pads_replays_and_slices():
    gen = make_tiny_generator().eval()
    g = torch.Generator().manual_seed(0)
    x8 = torch.rand((8, 2, 16, 16), generator=g)
    t8 = torch.rand((8,), generator=g)
    call, replays = _fake_graph(gen, 8, (x8, t8))
    with torch.no_grad():
        for n in (8, 5, 1, 3):
            x, t = torch.rand((n, 2, 16, 16), generator=g), torch.rand((n,), generator=g)
            out = call((x, t))
            assert out.shape == (n, 1, 16, 16)
            torch.testing.assert_close(out, gen(x, t), rtol=0, atol=1e-6)
            assert not call.static_in[0][n:].any() and not call.static_in[1][n:].any()   # padding zeroed
            assert out.data_ptr() != call.static_out.data_ptr()                        # a clone, not a view
    assert len(replays) == 4
    with pytest.raises(ValueError, match="bucket"):
        call((torch.zeros((9, 2, 16, 16)), torch.zeros(9)))


# --------------------------------------------------------------------------------------- CPU executor
def test_cpu_executor_is_the_plain_network_call():
    seg, gen = make_tiny_segmentor().eval(), make_tiny_generator().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((5, 1, 32, 32), generator=g)
    xs = torch.rand((5, 2, 32, 32), generator=g)
    t = torch.rand((5,), generator=g)
    with torch.no_grad():
        ex_seg = executor_for(seg, "cpu", ExecConfig(max_batch=2))   # cuda_graphs and max_batch: no effect
        ex_gen = NetExecutor(gen, "cpu")
        assert ex_seg.net is seg and ex_seg(x).dtype == torch.float32
        assert torch.equal(ex_seg(x), seg(x))
        assert torch.equal(ex_gen(xs, t), gen(xs, t))
    assert ex_seg.graphs == {} and ex_seg.replays == 0 and ex_seg.eager_calls == 2


def test_precision_checks():
    check_precision("fp32", "cpu")
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            check_precision(precision, "cpu")
        with pytest.raises(ValueError, match="needs a CUDA device"):
            NetExecutor(make_tiny_segmentor(), "cpu", ExecConfig(precision=precision))
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("int8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        ExecConfig(precision="fp64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        ExecConfig(max_batch=0)


def test_upload_on_cpu_is_a_plain_to():
    t = torch.arange(4)
    assert upload(t, "cpu") is t


def test_weights_signature_changes_with_in_place_updates():
    seg = make_tiny_segmentor()
    before = net_exec._weights_signature(seg)
    with torch.no_grad():
        seg.conv1.weight.add_(1.0)
    assert net_exec._weights_signature(seg) != before


# ------------------------------------------------------------------------------------------- wiring
def _small_case():
    h, w = 190, 150
    return flat_image_with_spots(h, w), left_breast_mask(h, w), RefineConfig(tiles=TileConfig(128, 32), outer_iters=1)


def test_refine_rejects_low_precision_on_cpu():
    from mcgenref_fast.refine import refine

    image, mask, cfg = _small_case()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        refine(image, mask, make_tiny_segmentor(), make_tiny_generator(), cfg, precision="bf16")


def test_refine_cpu_options_leave_the_result_unchanged():
    from mcgenref_fast.refine import refine

    image, mask, cfg = _small_case()
    seg, gen = make_tiny_segmentor(), make_tiny_generator()
    a = refine(image, mask, seg, gen, cfg, seed=2)
    b = refine(image, mask, seg, gen, cfg, seed=2, precision="fp32", cuda_graphs=False)
    assert torch.equal(a.logits, b.logits)
    assert [d.energy for d in a.diagnostics] == [d.energy for d in b.diagnostics]


def test_engine_precision_errors_and_stable_hash():
    from mcgenref_fast.pipeline import Engine, EngineConfig, engine_config_hash

    seg, gen = make_tiny_segmentor(), make_tiny_generator()
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Engine(replace(EngineConfig(), precision="bf16"), seg, gen, device="cpu")
    with pytest.raises(ConfigError, match="must be one of"):
        Engine(replace(EngineConfig(), precision="fp8"), seg, gen, device="cpu")  # type: ignore[arg-type]
    # fp32 leaves `precision` out of the hash, and so does edge_sigma_per_input_pitch when off (its default):
    # the hash without those fields, pinned (findings.json, screen journals). It moves only when a default
    # that changes outputs does (last: the film segmentor, film_segmentor_min_enlargement, issue 11; before,
    # 8c5f681113ad5cdb with t0 0.85 and the film rule, d2ea9c6c95e4aed3 with λ_prox 0.2, and 7de200d2492d9bad
    # with SPEC §4's settings).
    legacy = dataclasses.asdict(EngineConfig())
    del legacy["precision"]
    del legacy["edge_sigma_per_input_pitch"]
    blob = json.dumps([{"EngineConfig": legacy}], sort_keys=True, default=str)
    pinned = "7740e4709166ffa1"
    assert engine_config_hash(EngineConfig()) == hashlib.sha256(blob.encode()).hexdigest()[:16] == pinned
    assert Engine(EngineConfig(), seg, gen, device="cpu", film_segmentor=make_tiny_segmentor()).config_hash == pinned
    # an engine without a film segmentor segments every input with its segmentor: its config says so
    # (film_segmentor_min_enlargement inf, left out of the hash), and the hash is the one from before the field
    no_film = Engine(EngineConfig(), seg, gen, device="cpu")
    assert no_film.cfg.film_segmentor_min_enlargement == float("inf") and no_film.config_hash == "8c5f681113ad5cdb"
    # refining every input (--refine-film, sweeps) was the behaviour before refine_max_enlargement existed:
    # such a configuration keeps the hash it had then, so evaluation caches of earlier sweeps stay valid
    every = replace(EngineConfig(), refine_max_enlargement=float("inf"), film_segmentor_min_enlargement=float("inf"))
    older = {k: v for k, v in legacy.items() if k not in ("refine_max_enlargement", "film_segmentor_min_enlargement")}
    older_blob = json.dumps([{"EngineConfig": older}], sort_keys=True, default=str)
    assert engine_config_hash(every) == hashlib.sha256(older_blob.encode()).hexdigest()[:16]
    assert engine_config_hash(replace(EngineConfig(), precision="bf16")) != pinned
    assert engine_config_hash(replace(EngineConfig(), edge_sigma_per_input_pitch=True)) != pinned
    # the engine starts from SPEC §4's TT-GPR defaults with only λ_prox and t0 changed
    assert EngineConfig().refine == replace(RefineConfig(), lam_prox=0.2, t0=0.85) != RefineConfig()


def test_cli_precision_flag_reaches_the_engine_config(monkeypatch):
    from mcgenref_fast import pipeline
    from mcgenref_fast.cli import SUBCOMMANDS, build_parser
    from mcgenref_fast.commands import screen

    assert SUBCOMMANDS == ("demo", "segment", "screen", "eval", "info", "synth", "train")
    args = build_parser().parse_args(["segment", "x.png", "--out", "o", "--precision", "bf16", "--device", "cuda"])
    assert args.precision == "bf16"
    assert build_parser().parse_args(["screen", "d", "--out", "o"]).precision == "fp32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "x.png", "--out", "o", "--precision", "fp64"])

    seen = {}

    class FakeEngine:
        def __init__(self, cfg, device="cpu", progress=False, weights_dir=None):
            seen.update(cfg=cfg, device=device, weights_dir=weights_dir)

    monkeypatch.setattr(pipeline, "Engine", FakeEngine)
    options = {name: getattr(args, name, None) for name in screen._ENGINE_OPTIONS}
    screen.make_engine(options)
    assert seen["cfg"].precision == "bf16" and seen["device"] == "cuda" and seen["weights_dir"] is None
    assert seen["cfg"].edge_sigma_per_input_pitch is False      # the film edge rule is opt-in
    scaled = build_parser().parse_args(["screen", "d", "--out", "o", "--pitch-scaled-edge"])
    screen.make_engine({name: getattr(scaled, name, None) for name in screen._ENGINE_OPTIONS})
    assert seen["cfg"].edge_sigma_per_input_pitch is True
    assert seen["cfg"].refine_max_enlargement == 2.0               # film keeps the segmentor's map by default
    film = build_parser().parse_args(["screen", "d", "--out", "o", "--refine-film"])
    screen.make_engine({name: getattr(film, name, None) for name in screen._ENGINE_OPTIONS})
    assert seen["cfg"].refine_max_enlargement == float("inf") and seen["cfg"].edge_sigma_per_input_pitch is False
    assert seen["cfg"].film_segmentor_min_enlargement == 2.0       # the film segmentor is on by default
    one = build_parser().parse_args(["screen", "d", "--out", "o", "--no-film-segmentor"])
    screen.make_engine({name: getattr(one, name, None) for name in screen._ENGINE_OPTIONS})
    assert seen["cfg"].film_segmentor_min_enlargement == float("inf") and seen["cfg"].refine_max_enlargement == 2.0
    legacy = argparse.Namespace(method="gpr", no_refine=False, reference=False, seed=0, no_seg=False, device="cpu")
    screen.make_engine(vars(legacy))                 # options pickled before the flags existed: defaults
    assert seen["cfg"].precision == "fp32" and seen["cfg"].edge_sigma_per_input_pitch is False
    assert seen["cfg"].refine_max_enlargement == 2.0 and seen["cfg"].film_segmentor_min_enlargement == 2.0


def test_eval_refine_film_reaches_the_engine_config(monkeypatch, tmp_path):
    """`mcgenref eval --refine-film` reaches the gpr Engine's config (the methods without TT-GPR keep the default,
    so their cached maps stay valid); sweeps always refine film."""
    from mcgenref_fast import pipeline
    from mcgenref_fast.cli import main
    from mcgenref_fast.evaluation import runner
    from test_eval import make_synthetic_set

    seen = {}

    class FakeEngine:
        def __init__(self, cfg, device="cpu", weights_dir=None):
            seen[cfg.method] = cfg

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(pipeline, "Engine", FakeEngine)
    monkeypatch.setattr(runner, "run_eval", stop)
    data = make_synthetic_set(tmp_path / "syn")
    for flag, want in (([], 2.0), (["--refine-film"], float("inf"))):
        seen.clear()
        with pytest.raises(Stop):
            main(["eval", "--method", "gpr", "--method", "initializer", "--dataset", "synthetic", str(data), "--out",
                  str(tmp_path / "out"), "--limit", "1"] + flag)
        assert seen["gpr"].refine_max_enlargement == want
        assert seen["initializer"].refine_max_enlargement == 2.0
    # --no-film-segmentor reaches both (the segmentor maps film scans under either method)
    for flag, want in (([], 2.0), (["--no-film-segmentor"], float("inf"))):
        seen.clear()
        with pytest.raises(Stop):
            main(["eval", "--method", "gpr", "--method", "initializer", "--dataset", "synthetic", str(data), "--out",
                  str(tmp_path / "out"), "--limit", "1"] + flag)
        assert seen["gpr"].film_segmentor_min_enlargement == seen["initializer"].film_segmentor_min_enlargement == want

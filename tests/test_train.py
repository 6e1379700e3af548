"""Training loop: losses go down, checkpoint/resume is exact, export writes a loadable manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mcgenref_fast.errors import ConfigError
from mcgenref_fast.models import GeneratorConfig, SegmentorConfig, load_models
from mcgenref_fast.train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    VAL_SEED_OFFSET,
    TrainConfig,
    lr_factor,
    segmentor_loss,
    train,
)

TINY_SEG = SegmentorConfig(depth=2, base_width=4, max_width=8)
TINY_GEN = GeneratorConfig(depth=2, base_width=4, max_width=8, time_dim=8, time_hidden=16)


class BlobDataset(Dataset):
    """Tiny stand-in for the synthetic pairs: noisy flat field + a few bright 2-3 px blobs, their mask and
    Gaussian seed dots at the blob centres. Item i is a pure function of (seed, i)."""

    seeds_seen: list[int] = []

    def __init__(self, n: int, seed: int, patch_px: int) -> None:
        self.n, self.seed, self.p = n, seed, patch_px
        BlobDataset.seeds_seen.append(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        p = self.p
        yy, xx = np.mgrid[0:p, 0:p]
        image = 0.3 + 0.05 * rng.standard_normal((p, p))
        mask = np.zeros((p, p), bool)
        seeds = np.zeros((p, p))
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(3, p - 3, 2)
            r = rng.uniform(1.0, 2.0)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            mask |= d2 <= r * r
            image += 0.8 * np.exp(-d2 / (2 * r * r))
            seeds = np.maximum(seeds, np.exp(-d2 / 2.0))
        as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None]  # noqa: E731
        return {"image": as_t(image), "mask": as_t(mask), "seeds": as_t(seeds)}


def factory(n: int, seed: int, patch_px: int) -> Dataset:
    return BlobDataset(n, seed, patch_px)


def _cfg(model: str, **kw) -> TrainConfig:
    base = dict(model=model, steps=6, batch=4, patch_px=24, seed=3, lr=1e-2, warmup_steps=1, ckpt_every=3,
                val_every=100, val_size=4, val_batch=4, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 100, 10, 0.1) < 1.0


def test_segmentor_loss_small_for_confident_correct() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    good = segmentor_loss(20 * (2 * mask - 1), mask)
    bad = segmentor_loss(-20 * (2 * mask - 1), mask)
    assert good < 0.01 < 1.0 < bad


class RepeatDataset(BlobDataset):
    """The same 4 items over and over, so the training loss is measured on one fixed batch."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return super().__getitem__(i % 4)


@pytest.mark.parametrize("model,model_cfg", [("segmentor", TINY_SEG), ("generator", TINY_GEN)])
def test_training_lowers_loss(tmp_path, model, model_cfg) -> None:
    """A few steps on one fixed batch lower its loss (both models, tiny nets, fixed seed)."""
    cfg = _cfg(model, steps=15, lr=1e-2, warmup_steps=0, ckpt_every=100, val_every=100, val_size=4)
    result = train(cfg, tmp_path, model_cfg=model_cfg, dataset_factory=lambda n, s, p: RepeatDataset(n, 11, p),
                   device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 15
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert result.step == 15 and result.exported is not None
    assert "val_loss" in result.val


def test_resume_is_exact(tmp_path) -> None:
    """Running 2 + 4 steps over two sessions ends in exactly the state of one 6-step run (generator: EMA
    included, so the exported weights are equal too)."""
    cfg = _cfg("generator")
    straight = train(cfg, tmp_path / "a", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu", progress=False)
    first = train(cfg, tmp_path / "b", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu", progress=False,
                  stop_at_step=2)
    assert first.step == 2 and first.exported is None
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()
    with pytest.raises(ConfigError, match="resume"):
        train(cfg, tmp_path / "b", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="batch"):
        train(_cfg("generator", batch=2), tmp_path / "b", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu",
              progress=False, resume=True)
    resumed = train(cfg, tmp_path / "b", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu",
                    progress=False, resume=True)
    assert resumed.step == straight.step == 6
    assert resumed.exported["sha256"] == straight.exported["sha256"]
    a = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model",):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    for name in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][name], b["ema"]["model"][name]), name
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == 6
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][field], sb[k][field])
    log_b = [json.loads(line)["kind"] for line in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert "pause" in log_b and "resume" in log_b and log_b[-1] == "export"


def test_validation_seeds_disjoint_and_export_loads(tmp_path) -> None:
    BlobDataset.seeds_seen = []
    seg_cfg = _cfg("segmentor", steps=2)
    gen_cfg = _cfg("generator", steps=2)
    out = tmp_path / "weights"
    train(seg_cfg, tmp_path / "s", model_cfg=TINY_SEG, dataset_factory=factory, device="cpu", progress=False,
          export_to=out)
    train(gen_cfg, tmp_path / "g", model_cfg=TINY_GEN, dataset_factory=factory, device="cpu", progress=False,
          export_to=out)
    assert BlobDataset.seeds_seen == [3 + VAL_SEED_OFFSET, 3] * 2
    seg, gen = load_models(out)
    assert seg.cfg == TINY_SEG and gen.cfg == TINY_GEN
    info = seg.weights_info["training"]
    assert info["steps"] == 2 and "validation" in info and "val_dice" in info["validation"]


def test_cli_train_command(tmp_path, monkeypatch, capsys) -> None:
    """`mcgenref train generator ...` runs through the command module (synthetic data swapped for blobs)."""
    import argparse

    import mcgenref_fast.train as train_mod
    from mcgenref_fast.commands import train as train_cmd

    monkeypatch.setattr(train_mod, "synth_dataset_factory", lambda backgrounds=None, synth_cfg=None: factory)
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    argv = ["train", "generator", "--out", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--patch", "16",
            "--device", "cpu", "--val-size", "2", "--base-width", "4", "--depth", "1", "--no-progress",
            "--export-to", str(tmp_path / "w"), "--stop-at", "1"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "paused at step 1" in capsys.readouterr().out
    args = parser.parse_args(argv[:-2] + ["--resume"])
    assert args.func(args) == 0
    assert "exported" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["models"]["generator"]["config"]["base_width"] == 4
    assert manifest["models"]["generator"]["training"]["data"].startswith("mcgenref_fast.synth")


def test_cli_export_name_writes_a_film_segmentor(tmp_path, monkeypatch, capsys) -> None:
    """`--export-name segmentor_film` exports a segmentor under the film segmentor's manifest name, which the
    engine then loads for film scans (models.weights.load_film_segmentor); a name that does not fit the model
    kind is a clear error before any training."""
    import argparse

    import mcgenref_fast.train as train_mod
    from mcgenref_fast.commands import train as train_cmd
    from mcgenref_fast.errors import ConfigError, WeightsError
    from mcgenref_fast.models.weights import load_film_segmentor

    monkeypatch.setattr(train_mod, "synth_dataset_factory", lambda backgrounds=None, synth_cfg=None: factory)
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    argv = ["train", "segmentor", "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--patch", "16",
            "--device", "cpu", "--val-size", "2", "--base-width", "4", "--depth", "1", "--no-progress",
            "--export-to", str(tmp_path / "w"), "--export-name", "segmentor_film"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert set(manifest["models"]) == {"segmentor_film"}
    film = load_film_segmentor(tmp_path / "w")
    assert film is not None and film.weights_info["sha256"] == manifest["models"]["segmentor_film"]["sha256"]
    bad = parser.parse_args(["train", "generator", "--out", str(tmp_path / "g"), "--export-name", "segmentor_film"])
    with pytest.raises(ConfigError, match="does not fit a generator"):
        bad.func(bad)
    assert not (tmp_path / "g").exists()
    alone = parser.parse_args(["train", "segmentor", "--out", str(tmp_path / "f"), "--backgrounds-min-spacing", "0.15"])
    with pytest.raises(ConfigError, match="add --backgrounds-split"):
        alone.func(alone)
    # fine-tuning a film segmentor starts from that entry (--init-name); the default entry is not there
    common = argv[4:-4]   # after `train segmentor --out OUT`, before `--export-to W --export-name segmentor_film`
    tune = ["train", "segmentor", "--out", str(tmp_path / "tune")] + common + ["--init-from", str(tmp_path / "w")]
    with pytest.raises(WeightsError, match="no entry for model 'segmentor'"):
        args = parser.parse_args(tune)
        args.func(args)
    args = parser.parse_args(tune[:3] + [str(tmp_path / "tune2")] + tune[4:] + ["--init-name", "segmentor_film"])
    assert args.func(args) == 0
    tuned = json.loads((tmp_path / "tune2" / "weights" / "manifest.json").read_text())
    assert tuned["models"]["segmentor"]["training"]["init_name"] == "segmentor_film"
    # a run split with --stop-at resumes only under the export name it was started with
    split = ["train", "segmentor", "--out", str(tmp_path / "split")] + common + ["--steps", "2"]
    args = parser.parse_args(split + ["--export-name", "segmentor_film", "--stop-at", "1"])
    assert args.func(args) == 0
    with pytest.raises(ConfigError, match="cannot resume with export_name=None"):
        args = parser.parse_args(split + ["--resume"])
        args.func(args)


def test_cli_match_source_sampling_reaches_the_data_and_the_manifest(tmp_path, monkeypatch, capsys) -> None:
    import argparse

    import mcgenref_fast.train as train_mod
    from mcgenref_fast.commands import train as train_cmd

    seen = []

    def capture(backgrounds=None, synth_cfg=None):
        seen.append(synth_cfg)
        return factory

    from mcgenref_fast.errors import ConfigError

    monkeypatch.setattr(train_mod, "synth_dataset_factory", capture)
    monkeypatch.setattr(train_mod, "load_train_backgrounds", lambda csv, min_spacing_mm=None: [("film.png", 0.2)])
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    argv = ["train", "segmentor", "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--patch", "16",
            "--device", "cpu", "--val-size", "2", "--base-width", "4", "--depth", "1", "--no-progress",
            "--export-to", str(tmp_path / "w"), "--match-source-sampling"]
    args = parser.parse_args(argv)
    with pytest.raises(ConfigError, match="real backgrounds only"):  # nothing to match without real backgrounds
        args.func(args)
    args = parser.parse_args(argv + ["--backgrounds-split", str(tmp_path / "splits.csv")])
    assert args.func(args) == 0
    assert seen and seen[0].match_source_sampling and seen[0].real_min_breast_fraction == 1.0
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["models"]["segmentor"]["training"]["match_source_sampling"] is True


def test_init_from_starts_from_exported_weights(tmp_path) -> None:
    """`init_from`: a fine-tuning run starts from the weights directory's model (checked on step 0's state);
    a mismatched architecture is a ConfigError that names the flag."""
    from mcgenref_fast.train import _Trainer

    out = tmp_path / "weights"
    train(_cfg("segmentor", steps=2), tmp_path / "a", model_cfg=TINY_SEG, dataset_factory=factory, device="cpu",
          progress=False, export_to=out)
    from mcgenref_fast.models.weights import load_model

    exported = load_model(out, "segmentor").state_dict()
    tuned = _Trainer(_cfg("segmentor", init_from=str(out)), TINY_SEG, tmp_path / "b", torch.device("cpu"))
    fresh = _Trainer(_cfg("segmentor"), TINY_SEG, tmp_path / "c", torch.device("cpu"))
    for name, value in exported.items():
        assert torch.equal(tuned.model.state_dict()[name], value), name
    assert any(not torch.equal(fresh.model.state_dict()[k], v) for k, v in exported.items())
    wider = SegmentorConfig(depth=2, base_width=8, max_width=8)
    with pytest.raises(ConfigError, match="--init-from"):
        _Trainer(_cfg("segmentor", init_from=str(out)), wider, tmp_path / "d", torch.device("cpu"))
    with pytest.raises(ConfigError, match="dice_weight"):
        _cfg("segmentor", dice_weight=-1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_dice_weight_must_be_finite(value) -> None:
    with pytest.raises(ConfigError, match="dice_weight"):
        _cfg("segmentor", dice_weight=value)


def test_init_from_refuses_an_architecture_with_the_same_tensor_shapes(tmp_path) -> None:
    """Norm groups / activation change no tensor shape, so a strict state-dict load alone accepts them: the
    architecture check must still refuse them (the export would record the wrong architecture)."""
    from dataclasses import replace as dc_replace

    from mcgenref_fast.train import _Trainer

    out = tmp_path / "weights"
    train(_cfg("segmentor", steps=1), tmp_path / "a", model_cfg=TINY_SEG, dataset_factory=factory, device="cpu",
          progress=False, export_to=out)
    for other in (dc_replace(TINY_SEG, act="silu"), dc_replace(TINY_SEG, norm_groups=2)):
        with pytest.raises(ConfigError, match="--init-from.*another architecture"):
            _Trainer(_cfg("segmentor", init_from=str(out)), other, tmp_path / "b", torch.device("cpu"))


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_seed_weight_floor_must_lie_in_unit_interval(value) -> None:
    with pytest.raises(ConfigError, match="seed_weight_floor"):
        _cfg("generator", seed_weight_floor=value)


class PeakSeedDataset(BlobDataset):
    """Blobs whose seed maps carry one exact peak (value 1) on an integer pixel, as synth's maps do."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        item["seeds"][0, 5, 7] = 1.0
        return item


def test_seed_weighted_generator_loss_changes_the_objective(tmp_path) -> None:
    """`seed_weight_floor` reaches the loss: the first step's loss on the same batch differs from the plain
    MSE's (it is the blend-weighted mean), and the run config records it."""
    first = {}
    for floor in (None, 0.1):
        cfg = _cfg("generator", steps=1, seed_weight_floor=floor)
        out = tmp_path / str(floor)
        train(cfg, out, model_cfg=TINY_GEN, dataset_factory=lambda n, s, p: PeakSeedDataset(n, 11, p),
              device="cpu", progress=False)
        rows = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
        first[floor] = [r["loss"] for r in rows if r["kind"] == "train"][0]
        assert json.loads((out / "run_config.json").read_text())["train_config"]["seed_weight_floor"] == floor
    assert first[None] != first[0.1]           # (the weighting itself: test_models)


@pytest.mark.parametrize("kw,words", [({"model": "segmentor", "seed_weight_floor": 0.1}, "--seed-weight-floor"),
                                      ({"surrogate_segmentor": "somewhere"}, "--surrogate-weight > 0")])
def test_generator_only_options_refused_where_they_would_do_nothing(kw, words) -> None:
    kw = dict(kw)
    with pytest.raises(ConfigError, match=words):
        _cfg(kw.pop("model", "generator"), **kw)


def test_cli_surrogate_options_reach_the_config_and_the_manifest(tmp_path, monkeypatch, capsys) -> None:
    import argparse

    import mcgenref_fast.train as train_mod
    from mcgenref_fast.commands import train as train_cmd
    from mcgenref_fast.models.weights import save_model
    from mcgenref_fast.models.unet import Segmentor

    seg_entry = save_model(Segmentor(TINY_SEG), tmp_path / "seg")
    monkeypatch.setattr(train_mod, "synth_dataset_factory",
                        lambda backgrounds=None, synth_cfg=None: lambda n, s, p: PeakSeedDataset(n, s, p))
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "generator", "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2",
                              "--patch", "16", "--device", "cpu", "--val-size", "2", "--base-width", "4", "--depth",
                              "1", "--no-progress", "--export-to", str(tmp_path / "w"), "--seed-weight-floor", "0.2",
                              "--surrogate-weight", "0.5", "--surrogate-segmentor", str(tmp_path / "seg")])
    assert args.func(args) == 0
    training = json.loads((tmp_path / "w" / "manifest.json").read_text())["models"]["generator"]["training"]
    assert training["seed_weight_floor"] == 0.2 and training["surrogate_weight"] == 0.5
    assert training["surrogate_segmentor_sha256"] == seg_entry["sha256"]


def test_backgrounds_min_spacing_keeps_the_film_scans(shared_data) -> None:
    """`--backgrounds-min-spacing 0.15` on the shared splits.csv keeps exactly its `train` film scans (the
    mini-MIAS normals at 0.2 mm), in the csv's order; a pitch no `train` row reaches, or <= 0, is a clear error."""
    from mcgenref_fast.errors import ConfigError
    from mcgenref_fast.train import load_train_backgrounds

    every = load_train_backgrounds(shared_data / "splits.csv")
    film = load_train_backgrounds(shared_data / "splits.csv", min_spacing_mm=0.15)
    assert film == [(p, mm) for p, mm in every if mm >= 0.15]
    assert film and len(film) < len(every) and all(mm == 0.2 and "mias" in str(p) for p, mm in film)
    with pytest.raises(ConfigError, match="scanned at 0.5 mm or coarser"):
        load_train_backgrounds(shared_data / "splits.csv", min_spacing_mm=0.5)
    with pytest.raises(ConfigError, match="must be > 0 mm"):
        load_train_backgrounds(shared_data / "splits.csv", min_spacing_mm=0.0)

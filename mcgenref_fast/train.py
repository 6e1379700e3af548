"""Training of the two networks (SPEC §3) on synthetic pairs: segmentor f and generator velocity net v.

One `train()` call runs (or resumes) a run in `run_dir`:
- data: item i of the training set is fully determined by (seed, i), and step s uses items
  [s·B, (s+1)·B), so a resumed run sees exactly the data it would have seen; validation uses a fixed set
  drawn with seed + 10**9 (never overlapping the training seeds);
- AdamW (no decay on norms/biases), linear warmup then cosine decay, gradient clipping, an EMA of the
  generator's weights (what gets exported), bf16/fp16 autocast on CUDA only;
- segmentor loss BCE-with-logits + soft Dice; generator loss |v([x_t, S], t) - (x - eps)|², t ~ U[t_min, t_max];
- `checkpoint.pt` every `ckpt_every` steps (model, optimizer, scheduler, EMA, scaler, step, RNG states,
  elapsed time) so a run may span sessions; `log.jsonl` (one JSON object per line); a tqdm bar;
- at the end the final weights (EMA for the generator) are exported with `models.save_model`, which updates
  the weights directory's manifest.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mcgenref_fast.config import RefineConfig
from mcgenref_fast.devices import usable_device
from mcgenref_fast.errors import ConfigError
from mcgenref_fast.models.config import GeneratorConfig, ModelConfig, SegmentorConfig, config_to_dict
from mcgenref_fast.models.flow import flow_loss, sample_time, seed_blend_weight
from mcgenref_fast.models.unet import Segmentor
from mcgenref_fast.models.velocity import VelocityNet
from mcgenref_fast.models.weights import save_model
from mcgenref_fast.surrogate_loss import surrogate_consistency_loss

VAL_SEED_OFFSET = 10**9
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
RUN_CONFIG_NAME = "run_config.json"
MODEL_KINDS = ("segmentor", "generator")
# Settings that must not change when a run is resumed (they change what the model has seen or is).
_RESUME_FIXED = ("model", "batch", "patch_px", "seed", "export_name")
_EXPORT_NAMES = {"segmentor": ("segmentor", "segmentor_film"), "generator": ("generator",)}   # manifest names

DatasetFactory = Callable[[int, int, int], Dataset]  # (n, seed, patch_px) -> dataset of dict items


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and bookkeeping settings of one training run."""

    model: str = "segmentor"          # 'segmentor' | 'generator'
    steps: int = 20_000
    batch: int = 32
    patch_px: int = 128
    seed: int = 0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05        # cosine floor, as a fraction of lr
    grad_clip: float = 1.0
    ema_decay: float = 0.999          # generator only
    t_min: float = 0.5                # generator: t ~ U[t_min, t_max]
    t_max: float = 1.0
    dice_weight: float = 1.0          # segmentor: BCE + dice_weight * soft Dice
    ckpt_every: int = 500
    val_every: int = 1000
    val_size: int = 256
    val_batch: int = 32
    log_every: int = 20
    num_workers: int = 0
    amp: bool = True                  # autocast on CUDA only (bf16 when supported, else fp16)
    init_from: str | None = None      # weights directory whose `model` entry starts the run (fine-tuning)
    init_name: str | None = None      # that entry's manifest name (default `model`; 'segmentor_film' for a film one)
    export_name: str | None = None    # manifest name of the export (default `model`; 'segmentor_film': film scans)
    seed_weight_floor: float | None = None  # generator: None = plain MSE; else weight floor + (1-floor)·W (blend)
    surrogate_weight: float = 0.0     # generator: + this x surrogate_loss.surrogate_consistency_loss
    surrogate_segmentor: str | None = None  # weights dir of the frozen segmentor in that loss (None: shipped)

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ConfigError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        for name in ("steps", "batch", "patch_px", "ckpt_every", "val_every", "val_size", "val_batch", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"need 0 <= t_min <= t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ConfigError("warmup_steps and num_workers must be >= 0")
        if not (math.isfinite(self.dice_weight) and self.dice_weight >= 0):    # NaN / inf: a NaN loss
            raise ConfigError(f"dice_weight must be a finite number >= 0, got {self.dice_weight}")
        if not (math.isfinite(self.surrogate_weight) and self.surrogate_weight >= 0):
            raise ConfigError(f"surrogate_weight must be a finite number >= 0, got {self.surrogate_weight}")
        if self.surrogate_weight > 0 and self.model != "generator":
            raise ConfigError("--surrogate-weight (surrogate_weight) applies to the generator only")
        if self.surrogate_segmentor is not None and not self.surrogate_weight > 0:
            raise ConfigError("--surrogate-segmentor (surrogate_segmentor) needs --surrogate-weight > 0")
        if self.seed_weight_floor is not None and self.model != "generator":
            raise ConfigError("--seed-weight-floor (seed_weight_floor) applies to the generator only")
        if self.seed_weight_floor is not None and not 0.0 <= self.seed_weight_floor <= 1.0:   # NaN fails too
            raise ConfigError(f"seed_weight_floor must lie in [0, 1], got {self.seed_weight_floor}")
        allowed = _EXPORT_NAMES[self.model]
        for flag, value in (("--export-name", self.export_name), ("--init-name", self.init_name)):
            if value is not None and value not in allowed:
                raise ConfigError(f"{flag} {value} does not fit a {self.model} (a {self.model} is stored as "
                                  f"{' or '.join(allowed)})")
        if self.init_name is not None and self.init_from is None:
            raise ConfigError("--init-name names an entry of --init-from: add --init-from WEIGHTS_DIR")


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with: the step reached, the last losses, validation figures, the export entry."""

    run_dir: Path
    step: int
    train_loss: float
    val: dict = field(default_factory=dict)
    exported: dict | None = None
    elapsed_s: float = 0.0


# ----------------------------------------------------------------------------------------------- data
def synth_dataset_factory(backgrounds: Any = None, synth_cfg: Any = None) -> DatasetFactory:
    """Factory of `mcgenref_fast.synth.SyntheticPairDataset` (imported lazily: training needs it, the
    models do not)."""

    def make(n: int, seed: int, patch_px: int) -> Dataset:
        from mcgenref_fast import synth

        cfg = synth_cfg if synth_cfg is not None else synth.SynthConfig()
        return synth.SyntheticPairDataset(n, seed, patch_px, cfg, backgrounds=backgrounds)

    return make


def load_train_backgrounds(splits_csv: str | Path, min_spacing_mm: float | None = None) -> list[tuple[Path, float]]:
    """(path, spacing_mm) of the negatives whose split is `train` in `splits_csv` (never `dev`; mini-MIAS
    calcification cases are left out), for `SyntheticPairDataset(backgrounds=...)`; paths are relative to
    the csv's folder. `min_spacing_mm` keeps only those scanned at that pitch or coarser (0.15: the film
    scans, for a film segmentor). The images are read and made canonical lazily, once per DataLoader worker."""
    from mcgenref_fast.synth.background import train_split_backgrounds

    splits_csv = Path(splits_csv)
    if splits_csv.name != "splits.csv" or not splits_csv.is_file():
        raise ConfigError(f"{splits_csv}: expected an existing splits.csv (path,split,spacing_mm)")
    sources = train_split_backgrounds(splits_csv.parent, split="train")
    if min_spacing_mm is not None:
        if not min_spacing_mm > 0:
            raise ConfigError(f"--backgrounds-min-spacing must be > 0 mm, got {min_spacing_mm}")
        sources = [(p, mm) for p, mm in sources if mm >= min_spacing_mm]
    if not sources:
        raise ConfigError(f"{splits_csv}: no usable rows with split == 'train'"
                          + ("" if min_spacing_mm is None else f" scanned at {min_spacing_mm:g} mm or coarser"))
    missing = [str(p) for p, _ in sources if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"{splits_csv}: background images not found: {missing[:3]}")
    return sources


def _step_batches(start: int, stop: int, batch: int) -> list[list[int]]:
    return [list(range(s * batch, (s + 1) * batch)) for s in range(start, stop)]


# --------------------------------------------------------------------------------------------- losses
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch (stable when many patches hold no MC)."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)


def segmentor_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE-with-logits (mean over pixels) + dice_weight · soft Dice."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), mask.float())
    return bce + dice_weight * soft_dice_loss(logits, mask)


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for the noise/time draws of one training step (a pure function of (seed, step))."""
    state = np.random.SeedSequence([seed, step, 0x5EED]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ------------------------------------------------------------------------------------------ schedule
def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's parameters and buffers (decay warmed up over early steps)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.model = _build_model(model.cfg).to(next(model.parameters()).device)  # type: ignore[arg-type]
        self.model.load_state_dict(model.state_dict())
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(p.detach(), 1.0 - d)
            else:
                e.copy_(p)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])


def _build_model(model_cfg: ModelConfig) -> nn.Module:
    return Segmentor(model_cfg) if isinstance(model_cfg, SegmentorConfig) else VelocityNet(model_cfg)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ RNG state
def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- runner
class _Trainer:
    """Holds the state of one run (model, optimiser, schedule, EMA, scaler, step) and knows how to
    step, validate, checkpoint and export it."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, run_dir: Path, device: torch.device) -> None:
        self.cfg, self.model_cfg, self.run_dir, self.device = cfg, model_cfg, run_dir, device
        torch.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels
        self.model = _build_model(model_cfg).to(device)
        if cfg.init_from is not None:
            self._init_weights(Path(cfg.init_from))
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.model == "generator" else None
        self.use_amp = cfg.amp and device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.surrogate_segmentor = self._frozen_segmentor() if cfg.surrogate_weight > 0 else None
        self.step = 0
        self.elapsed_s = 0.0

    def _frozen_segmentor(self) -> nn.Module:
        """The segmentor of the surrogate loss (cfg.surrogate_segmentor, else the shipped one), frozen."""
        from mcgenref_fast.models.weights import default_weights_dir, load_model

        source = self.cfg.surrogate_segmentor or default_weights_dir()
        seg = load_model(source, "segmentor", self.device)
        for p in seg.parameters():
            p.requires_grad_(False)
        return seg.eval()

    def _init_weights(self, directory: Path) -> None:
        """Start from the `cfg.model` entry of a weights directory (sha256-checked; same architecture)."""
        from mcgenref_fast.models.weights import load_model

        source = load_model(directory, self.cfg.init_name or self.cfg.model)
        source_cfg = getattr(source, "cfg", None)
        if source_cfg is not None and source_cfg != self.model_cfg:
            # fields that change no tensor shape (norm groups, activation, padding, time scale) pass a strict
            # load_state_dict silently, and the export would then record the wrong architecture
            diff = {k: (v, getattr(self.model_cfg, k, None)) for k, v in config_to_dict(source_cfg).items()
                    if getattr(self.model_cfg, k, None) != v}
            raise ConfigError(f"--init-from {directory}: its {self.cfg.model} has another architecture than "
                              f"this run's (field: theirs, this run's): {diff}; pass the same --base-width / "
                              f"--depth")
        try:
            self.model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"--init-from {directory}: its {self.cfg.model} does not fit this run's "
                              f"architecture (pass the same --base-width / --depth): {exc}") from exc

    # -- one optimisation step
    def loss(self, model: nn.Module, batch: dict, step: int, seed: int) -> torch.Tensor:
        """The training objective of one batch (the generator's: flow + surrogate_weight · surrogate)."""
        if self.cfg.model == "segmentor":
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                return segmentor_loss(model(image), mask, self.cfg.dice_weight)
        parts = self.generator_loss_parts(model, batch, step, seed)
        if "surrogate" not in parts:
            return parts["flow"]
        return parts["flow"] + self.cfg.surrogate_weight * parts["surrogate"]

    def generator_loss_parts(self, model: nn.Module, batch: dict, step: int, seed: int) -> dict[str, torch.Tensor]:
        """{'flow': (seed-weighted) flow-matching loss, 'surrogate': surrogate-consistency loss when on}."""
        image = batch["image"].to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            seeds = batch["seeds"].to(self.device, non_blocking=True)
            g = step_generator(seed, step)
            eps = torch.randn(image.shape, generator=g).to(self.device)
            t = sample_time(image.shape[0], self.cfg.t_min, self.cfg.t_max, generator=g, device=self.device)
            refine_cfg = RefineConfig()
            blend = None
            if self.cfg.seed_weight_floor is not None or self.surrogate_segmentor is not None:
                blend = seed_blend_weight(seeds, refine_cfg.blend_rho_px, refine_cfg.blend_gamma)
            weight = None
            if self.cfg.seed_weight_floor is not None:
                floor = self.cfg.seed_weight_floor
                weight = floor + (1.0 - floor) * blend
            parts = {"flow": flow_loss(model, image, seeds, eps, t, weight)}
            if self.surrogate_segmentor is not None:
                eps_projection = torch.randn(image.shape, generator=g).to(self.device)
                mask = batch["mask"].to(self.device, non_blocking=True)
                parts["surrogate"] = surrogate_consistency_loss(
                    model, self.surrogate_segmentor, image, seeds, mask, eps_projection, refine_cfg, blend=blend)
            return parts

    def train_step(self, batch: dict) -> float:
        self.model.train()
        loss = self.loss(self.model, batch, self.step, self.cfg.seed)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())

    # -- validation on the fixed set
    @torch.no_grad()
    def validate(self, val_batches: list[dict]) -> dict:
        """Mean loss on the fixed validation set (fixed noise and t for the generator; EMA weights), and
        pooled pixel Dice / recall / precision at logit 0 for the segmentor."""
        model = self.final_model()
        was_training = model.training
        model.eval()
        losses, tp, fp, fn = [], 0.0, 0.0, 0.0
        surrogate: list[float] = []
        for i, batch in enumerate(val_batches):
            if self.cfg.model == "generator":
                parts = self.generator_loss_parts(model, batch, i, self.cfg.seed + VAL_SEED_OFFSET)
                total = parts["flow"]
                if "surrogate" in parts:
                    surrogate.append(float(parts["surrogate"]))
                    total = total + self.cfg.surrogate_weight * parts["surrogate"]
                losses.append(float(total))
                continue
            image = batch["image"].to(self.device)
            m = batch["mask"].to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                logits = model(image)
            losses.append(float(segmentor_loss(logits, m, self.cfg.dice_weight)))
            pred, mb = logits > 0, m > 0.5
            tp += float((pred & mb).sum())
            fp += float((pred & ~mb).sum())
            fn += float((~pred & mb).sum())
        model.train(was_training)
        out = {"val_loss": float(np.mean(losses))}
        if surrogate:                   # the parts of a combined generator objective, comparable across runs
            out["val_surrogate"] = float(np.mean(surrogate))
            out["val_flow"] = out["val_loss"] - self.cfg.surrogate_weight * out["val_surrogate"]
        if self.cfg.model == "segmentor":
            out["val_dice"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            out["val_recall"] = tp / (tp + fn) if tp + fn else 1.0
            out["val_precision"] = tp / (tp + fp) if tp + fp else 1.0
        return out

    def final_model(self) -> nn.Module:
        """What gets exported: the EMA weights for the generator, the trained weights for the segmentor."""
        return self.ema.model if self.ema is not None else self.model

    # -- checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "train_config": dataclasses.asdict(self.cfg),
            "model_config": config_to_dict(self.model_cfg),
        }

    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINT_NAME
        tmp = self.run_dir / f".{CHECKPOINT_NAME}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: an interrupted save never corrupts the last good checkpoint
        return path

    def load_checkpoint(self, path: Path) -> None:
        # CPU first: RNG states must stay CPU byte tensors; load_state_dict moves the rest to the device
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved_model_cfg = state["model_config"]
        if saved_model_cfg != config_to_dict(self.model_cfg):
            raise ConfigError(f"{path}: checkpoint architecture {saved_model_cfg} differs from the requested "
                              f"{config_to_dict(self.model_cfg)}")
        for name in _RESUME_FIXED:
            started = state["train_config"].get(name)   # absent in checkpoints older than the field: None
            if started != getattr(self.cfg, name):
                raise ConfigError(f"{path}: cannot resume with {name}={getattr(self.cfg, name)!r}; the run "
                                  f"was started with {started!r}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])


class _JsonLog:
    """Append-only JSON-lines log (one object per line, flushed at once so a killed run keeps its log)."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", buffering=1)

    def write(self, **record: Any) -> None:
        self.fh.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self) -> None:
        self.fh.close()


def _collect(loader: Iterable[dict]) -> list[dict]:
    return [dict(b) for b in loader]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu; anything else must be usable here
    (`devices.usable_device`: ConfigError otherwise)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return usable_device(device)


def train(cfg: TrainConfig, run_dir: str | Path, *, model_cfg: ModelConfig | None = None,
          dataset_factory: DatasetFactory | None = None, device: str | torch.device | None = "auto",
          resume: bool = False, export_to: str | Path | None = None, progress: bool = True,
          stop_at_step: int | None = None, time_limit_s: float | None = None,
          extra_training_info: dict | None = None) -> TrainResult:
    """Run (or resume) training to `cfg.steps` in `run_dir`; export the final weights into `export_to`
    (default `run_dir/weights`) under the manifest name `cfg.export_name` (default the model kind; a segmentor
    may be exported as 'segmentor_film', the engine's segmentor for film scans). `dataset_factory(n, seed, patch_px)` defaults to the synthetic pairs.

    `stop_at_step` / `time_limit_s` end this session early (checkpoint written, nothing exported) so that a
    long run can be split over sessions; continue it with `resume=True`."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if model_cfg is None:
        model_cfg = SegmentorConfig() if cfg.model == "segmentor" else GeneratorConfig()
    expected = SegmentorConfig if cfg.model == "segmentor" else GeneratorConfig
    if not isinstance(model_cfg, expected):
        raise ConfigError(f"model {cfg.model!r} needs a {expected.__name__}, got {type(model_cfg).__name__}")
    factory = dataset_factory or synth_dataset_factory()
    dev = resolve_device(device)
    ckpt = run_dir / CHECKPOINT_NAME
    if ckpt.is_file() and not resume:
        raise ConfigError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose another "
                          f"--out")

    trainer = _Trainer(cfg, model_cfg, run_dir, dev)
    log = _JsonLog(run_dir / LOG_NAME)
    if resume and ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        log.write(kind="resume", step=trainer.step, steps=cfg.steps)
    else:
        log.write(kind="start", step=0, train_config=dataclasses.asdict(cfg), model_config=config_to_dict(model_cfg),
                  device=str(dev), torch=torch.__version__)
    (run_dir / RUN_CONFIG_NAME).write_text(json.dumps(
        {"train_config": dataclasses.asdict(cfg), "model_config": config_to_dict(model_cfg)}, indent=2) + "\n")

    pin = dev.type == "cuda"
    val_ds = factory(cfg.val_size, cfg.seed + VAL_SEED_OFFSET, cfg.patch_px)
    val_batches = _collect(DataLoader(val_ds, batch_size=cfg.val_batch, shuffle=False, num_workers=cfg.num_workers))
    train_ds = factory(cfg.steps * cfg.batch, cfg.seed, cfg.patch_px)
    loader = DataLoader(train_ds, batch_sampler=_step_batches(trainer.step, cfg.steps, cfg.batch),
                        num_workers=cfg.num_workers, pin_memory=pin, persistent_workers=False)

    bar = tqdm(total=cfg.steps, initial=trainer.step, desc=f"train {cfg.model}", disable=not progress,
               dynamic_ncols=True)
    loss_avg: float | None = None
    val: dict = {}
    t_last = session_start = time.perf_counter()
    try:
        for batch in loader:
            loss = trainer.train_step(batch)
            loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
            now = time.perf_counter()
            trainer.elapsed_s += now - t_last
            t_last = now
            step = trainer.step
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4g}", lr=f"{trainer.sched.get_last_lr()[0]:.2e}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.write(kind="train", step=step, loss=loss, loss_avg=loss_avg, lr=trainer.sched.get_last_lr()[0],
                          elapsed_s=round(trainer.elapsed_s, 3))
            if step % cfg.val_every == 0 or step == cfg.steps:
                val = trainer.validate(val_batches)
                log.write(kind="val", step=step, **val)
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in val.items()))
                t_last = time.perf_counter()  # validation time is not training time
            stop = (stop_at_step is not None and step >= stop_at_step) or (
                time_limit_s is not None and time.perf_counter() - session_start >= time_limit_s)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stop:
                trainer.save_checkpoint()
                t_last = time.perf_counter()
            if stop:
                log.write(kind="pause", step=step, elapsed_s=round(trainer.elapsed_s, 3))
                break
    finally:
        bar.close()

    if not val:
        val = trainer.validate(val_batches)
    exported = None
    if trainer.step >= cfg.steps:
        info = {
            "steps": trainer.step, "batch": cfg.batch, "patch_px": cfg.patch_px, "seed": cfg.seed, "lr": cfg.lr,
            "t_range": [cfg.t_min, cfg.t_max] if cfg.model == "generator" else None,
            "ema_decay": cfg.ema_decay if cfg.model == "generator" else None,
            "dice_weight": cfg.dice_weight if cfg.model == "segmentor" else None,
            "seed_weight_floor": cfg.seed_weight_floor,
            "surrogate_weight": cfg.surrogate_weight if cfg.model == "generator" else None,
            "surrogate_segmentor_sha256": (None if trainer.surrogate_segmentor is None
                                           else trainer.surrogate_segmentor.weights_info["sha256"]),
            "init_from": cfg.init_from,
            **({"init_name": cfg.init_name} if cfg.init_name else {}),
            "elapsed_s": round(trainer.elapsed_s, 1), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.use_amp else "float32",
            "torch": torch.__version__, "validation": val,
            "date": time.strftime("%Y-%m-%d"),
        }
        info.update(extra_training_info or {})
        exported = save_model(trainer.final_model(), Path(export_to) if export_to else run_dir / "weights",
                              name=cfg.export_name or cfg.model, training=info)
        log.write(kind="export", step=trainer.step, file=exported["file"], sha256=exported["sha256"],
                  to=str(export_to or run_dir / "weights"))
    log.close()
    return TrainResult(run_dir=run_dir, step=trainer.step,
                       train_loss=float("nan") if loss_avg is None else loss_avg, val=val, exported=exported,
                       elapsed_s=trainer.elapsed_s)

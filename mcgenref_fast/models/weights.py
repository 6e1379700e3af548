"""Saving and loading network weights with a manifest (file, sha256, architecture config, training info).

Loading is safe by construction: the file's sha256 must match the manifest BEFORE anything is unpickled,
and unpickling uses `torch.load(..., weights_only=True)` (tensors and plain containers only). Every failure
is a `WeightsError` naming the file and what to do.

manifest.json:
    {"format_version": 1,
     "models": {"segmentor": {"file": "segmentor.pt", "sha256": "...", "kind": "segmentor",
                              "config": {...}, "params": 123, "training": {...}},
                "generator": {...}}}
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcgenref_fast.errors import WeightsError
from mcgenref_fast.models.config import config_from_dict, config_kind, config_to_dict
from mcgenref_fast.models.unet import Segmentor
from mcgenref_fast.models.velocity import VelocityNet

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_MODEL_CLASSES: dict[str, type[nn.Module]] = {"segmentor": Segmentor, "generator": VelocityNet}
FILM_SEGMENTOR = "segmentor_film"   # manifest name of the segmentor for film scans (`film_segmentor_source`)


def default_weights_dir() -> Path:
    """The package's shipped weights: mcgenref_fast/weights/."""
    return Path(__file__).resolve().parents[1] / "weights"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed manifest of a weights directory; WeightsError when missing or malformed."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise WeightsError(f"{path}: weights manifest not found (train the models with `mcgenref train ... "
                           f"--export-to {Path(directory)}` or reinstall the package)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read the weights manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise WeightsError(f"{path}: malformed weights manifest (no 'models' table)")
    return manifest


def save_model(model: nn.Module, directory: str | Path, name: str | None = None,
               training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model`'s state dict (float32, CPU) to `directory/<name>.pt` and add/replace its manifest entry.

    `name` defaults to the model kind ('segmentor' or 'generator'); returns the manifest entry.
    """
    cfg = getattr(model, "cfg", None)
    kind = config_kind(cfg)
    name = name or kind
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in model.state_dict().items()}
    file_name = f"{name}.pt"
    tmp = directory / f".{file_name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / file_name)
    entry = {
        "file": file_name,
        "sha256": sha256_file(directory / file_name),
        "kind": kind,
        "config": config_to_dict(cfg),
        "params": int(sum(p.numel() for p in model.parameters())),
        "training": dict(training or {}),
    }
    manifest_path = directory / MANIFEST_NAME
    manifest = read_manifest(directory) if manifest_path.is_file() else {"format_version": FORMAT_VERSION, "models": {}}
    manifest["format_version"] = FORMAT_VERSION
    manifest["models"][name] = entry
    _atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return entry


def load_model(directory: str | Path, name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild model `name` of a weights directory: sha256 check, safe unpickling, strict state-dict load.

    The returned module is in eval mode with `weights_info` = its manifest entry (sha256 for provenance).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    entry = manifest["models"].get(name)
    if not isinstance(entry, dict):
        raise WeightsError(f"{directory / MANIFEST_NAME}: no entry for model {name!r} "
                           f"(has: {sorted(manifest['models'])})")
    try:
        kind = entry["kind"]
        file_name = entry["file"]
        expected = entry["sha256"]
        cfg = config_from_dict(kind, entry["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{directory / MANIFEST_NAME}: bad entry for {name!r} ({exc})") from exc
    path = directory / file_name
    if not path.is_file():
        raise WeightsError(f"{path}: weights file for {name!r} is missing (re-export or reinstall the weights)")
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}... "
                           f"(the file is corrupt or was replaced; re-export it with its manifest)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError ...
        raise WeightsError(f"{path}: refused to load (only plain tensor state dicts are accepted: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    model = _MODEL_CLASSES[kind](cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the {kind} architecture in the manifest ({exc})") from exc
    model.weights_info = dict(entry, name=name)  # type: ignore[assignment]
    return model.to(device).eval()


def load_models(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Segmentor, VelocityNet]:
    """(segmentor, generator velocity net) from a weights directory's manifest entries of those names."""
    seg = load_model(directory, "segmentor", device)
    gen = load_model(directory, "generator", device)
    return seg, gen  # type: ignore[return-value]


def load_default_models(device: str | torch.device = "cpu") -> tuple[Segmentor, VelocityNet]:
    """The shipped models from mcgenref_fast/weights/manifest.json (sha256-checked), in eval mode."""
    return load_models(default_weights_dir(), device)


def weights_sources(directory: str | Path | None) -> dict[str, Path]:
    """{'segmentor': dir, 'generator': dir}: `directory` for each network its manifest holds, the shipped
    weights directory for the others. WeightsError when `directory` has no readable manifest or holds
    none of the networks (segmentor, generator, film segmentor; checked without loading any tensor)."""
    shipped = default_weights_dir()
    sources = {"segmentor": shipped, "generator": shipped}
    if directory is not None:
        names = read_manifest(directory)["models"]
        found = [name for name in sources if name in names]
        if not found and FILM_SEGMENTOR not in names:
            raise WeightsError(f"{Path(directory) / MANIFEST_NAME}: holds no segmentor, generator or "
                               f"{FILM_SEGMENTOR} (has: {sorted(names)}); export one there with "
                               "`mcgenref train ... --export-to DIR`")
        for name in found:
            sources[name] = Path(directory)
    return sources


def load_models_over_default(directory: str | Path | None, device: str | torch.device = "cpu"
                             ) -> tuple[Segmentor, VelocityNet, dict[str, str]]:
    """(segmentor, generator, {name: sha256}): each network from `directory`'s manifest when it holds one
    (a `mcgenref train ... --export-to DIR` folder), else the shipped one — so a folder with only a retrained
    generator runs with the shipped segmentor. `directory=None` is the shipped pair. A directory without a
    readable manifest, or with neither network, is a WeightsError."""
    sources = weights_sources(directory)
    seg = load_model(sources["segmentor"], "segmentor", device)
    gen = load_model(sources["generator"], "generator", device)
    digest = {name: str(model.weights_info["sha256"]) for name, model in (("segmentor", seg), ("generator", gen))}
    return seg, gen, digest  # type: ignore[return-value]


def film_segmentor_source(directory: str | Path | None) -> Path | None:
    """The weights directory whose `segmentor_film` segments film scans
    (`EngineConfig.film_segmentor_min_enlargement`), or None: `directory` when its manifest holds one; else
    the shipped weights' when the segmentor is the shipped one (`directory` None, holding no segmentor, or
    holding the shipped segmentor's file, same sha256) and they hold one. A folder with a segmentor of its own
    but no film segmentor gets none, with a warning: a retrained segmentor is never paired with the shipped
    film one behind the user's back."""
    shipped = default_weights_dir()
    shipped_models = read_manifest(shipped)["models"]
    if directory is not None:
        names = read_manifest(directory)["models"]
        if FILM_SEGMENTOR in names:
            return Path(directory)
        own = names.get("segmentor")
        if isinstance(own, dict) and own.get("sha256") != shipped_models.get("segmentor", {}).get("sha256"):
            if FILM_SEGMENTOR in shipped_models:
                warnings.warn(f"{Path(directory) / MANIFEST_NAME}: a segmentor of its own and no {FILM_SEGMENTOR}: "
                              "film scans (inputs coarser than 0.14 mm) are segmented by that segmentor too, not by "
                              "the shipped film segmentor (README, film scans)", stacklevel=2)
            return None
    return shipped if FILM_SEGMENTOR in shipped_models else None


def load_film_segmentor(directory: str | Path | None, device: str | torch.device = "cpu") -> Segmentor | None:
    """The film segmentor from `film_segmentor_source(directory)` (sha256-checked), or None where there is none;
    a manifest entry of another kind is a WeightsError."""
    source = film_segmentor_source(directory)
    if source is None:
        return None
    model = load_model(source, FILM_SEGMENTOR, device)
    if not isinstance(model, Segmentor):
        raise WeightsError(f"{source / MANIFEST_NAME}: {FILM_SEGMENTOR!r} must be a segmentor, "
                           f"got a {model.weights_info['kind']}")  # type: ignore[index]
    return model


def average_models(directories: list[str | Path], name: str) -> nn.Module:
    """One network whose weights are the mean of entry `name` over `directories` (a "model soup": fine-tunes
    of one network from the same start with different seeds, averaged so that the result does not rest on
    one seed's luck). Each entry is loaded sha256-checked; all must share kind and architecture config, and
    their non-float tensors must be equal. Float tensors are averaged in float64. The model's `weights_info`
    lists the sources (directory, sha256, training). WeightsError otherwise."""
    if len(directories) < 2:
        raise WeightsError(f"averaging {name!r} needs at least two weights folders, got {len(directories)}")
    models = [load_model(d, name) for d in directories]
    infos = [m.weights_info for m in models]  # type: ignore[union-attr]
    first = infos[0]
    for d, info in zip(directories[1:], infos[1:]):
        if info["kind"] != first["kind"] or info["config"] != first["config"]:
            raise WeightsError(f"{Path(d) / MANIFEST_NAME}: {name!r} has another architecture than in "
                               f"{Path(directories[0]) / MANIFEST_NAME} (kind/config differ): only fine-tunes of "
                               "one network can be averaged")
    states = [m.state_dict() for m in models]
    mean: dict[str, torch.Tensor] = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            mean[key] = (sum(s[key].double() for s in states) / len(states)).to(ref.dtype)
        elif all(torch.equal(s[key], ref) for s in states[1:]):
            mean[key] = ref.clone()
        else:
            raise WeightsError(f"{name!r}: non-float tensor {key!r} differs between the folders: cannot average")
    out = models[0]
    out.load_state_dict(mean, strict=True)
    out.weights_info = {"average_of": [{"directory": str(d), "sha256": i["sha256"], "training": i.get("training", {})}
                                       for d, i in zip(directories, infos)]}  # type: ignore[assignment]
    return out

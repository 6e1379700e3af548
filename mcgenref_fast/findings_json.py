"""findings.json: one image's MCs, clusters and flag, with enough provenance to reproduce it.

The document is the findings module's `Findings.to_dict()` (MCs, large components, clusters, flagged,
settings) at the top level, plus three blocks added here: `schema`/`schema_version`, `provenance`
(package version, weights sha256, config hash, input path, spacing and its source, flips) and `image`
(the input's shape and spacing, and what the reader learnt about it). Required fields are checked before
anything is written, so a consumer can rely on them; the schema is documented in docs/findings_schema.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .atomic import to_jsonable, write_json_atomic
from .errors import OutputError

SCHEMA_NAME = "mcgenref_fast/findings"
SCHEMA_VERSION = "1.1"   # major.minor: a new minor only adds fields; readers check the major (1.1: MC at_outline)

REQUIRED_TOP = ("schema", "schema_version", "provenance", "image", "flagged", "mcs", "large", "clusters")
REQUIRED_PROVENANCE = (
    "package", "package_version", "weights_sha256", "config_hash", "input_path",
    "spacing_mm", "spacing_source", "flips",
)
REQUIRED_IMAGE = ("shape_px", "spacing_mm")
REQUIRED_MC = ("id", "centroid_input_px", "centroid_mm", "area_mm2", "equivalent_diameter_mm", "score", "contrast")
REQUIRED_CLUSTER = ("id", "mc_ids", "bbox_input_px", "extent_mm", "score", "regional")
_IMAGE_META_FIELDS = (
    "file_format", "modality", "view", "laterality", "laterality_source", "photometric",
    "presentation_intent", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
)


def make_provenance(
    input_path: str | Path,
    spacing_mm: float,
    spacing_source: str,
    flips: Any,
    weights_sha256: str | Mapping[str, str] | None,
    config_hash: str,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance block; `weights_sha256` maps model name → digest (None: no weights were used)."""
    block = {
        "package": "mcgenref_fast",
        "package_version": __version__,
        "weights_sha256": None if weights_sha256 is None else (
            dict(weights_sha256) if isinstance(weights_sha256, Mapping) else str(weights_sha256)),
        "config_hash": config_hash,
        "input_path": str(Path(input_path).resolve()),
        "spacing_mm": float(spacing_mm),
        "spacing_source": spacing_source,
        "flips": flips,
    }
    block.update(extra)
    return block


def image_block(shape_px: tuple[int, int], spacing_mm: float, meta: Any = None) -> dict[str, Any]:
    """The image block: input shape (rows, cols) and spacing, plus `MammogramMeta` fields when given."""
    block: dict[str, Any] = {"shape_px": [int(shape_px[0]), int(shape_px[1])], "spacing_mm": float(spacing_mm)}
    if meta is not None:
        for name in _IMAGE_META_FIELDS:
            if hasattr(meta, name):
                block[name] = getattr(meta, name)
    return block


def _missing(block: Any, required: tuple[str, ...], where: str) -> list[str]:
    if not isinstance(block, Mapping):
        return [f"{where} (must be an object, got {type(block).__name__})"]
    return [f"{where}.{key}" if where else key for key in required if key not in block]


def validate_findings_document(document: Mapping[str, Any], path: str | Path | None = None) -> None:
    """Raise `OutputError` naming the file and every missing required field (e.g. `provenance.config_hash`)."""
    missing = _missing(document, REQUIRED_TOP, "")
    if not missing:
        missing += _missing(document["provenance"], REQUIRED_PROVENANCE, "provenance")
        missing += _missing(document["image"], REQUIRED_IMAGE, "image")
        for name, required in (("mcs", REQUIRED_MC), ("large", REQUIRED_MC), ("clusters", REQUIRED_CLUSTER)):
            items = document[name]
            if not isinstance(items, (list, tuple)):
                missing.append(f"{name} (must be a list, got {type(items).__name__})")
                continue
            for i, item in enumerate(items):
                missing += _missing(item, required, f"{name}[{i}]")
        if not isinstance(document["flagged"], bool):
            missing.append(f"flagged (must be true or false, got {document['flagged']!r})")
    if missing:
        where = f"{path}: " if path is not None else ""
        raise OutputError(f"{where}findings.json is missing or has malformed required fields: {', '.join(missing)}")


def build_findings_document(
    findings: Mapping[str, Any], provenance: Mapping[str, Any], image: Mapping[str, Any],
) -> dict[str, Any]:
    """Schema header + provenance + image + the findings dict's own keys (plain JSON types)."""
    clash = {"schema", "schema_version", "provenance", "image"} & set(findings)
    if clash:
        raise OutputError(f"findings dict must not define {sorted(clash)}: they are added by findings_json")
    document: dict[str, Any] = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "provenance": dict(provenance),
        "image": dict(image),
    }
    document.update(findings)
    return document


def write_findings_json(
    path: str | Path, findings: Mapping[str, Any], provenance: Mapping[str, Any], image: Mapping[str, Any],
) -> Path:
    """Validate and atomically write findings.json; returns its path."""
    document = build_findings_document(findings, provenance, image)
    validate_findings_document(document, path)
    try:
        document = to_jsonable(document)
    except ValueError as exc:
        raise OutputError(f"{path}: cannot encode findings as JSON: {exc}") from exc
    return write_json_atomic(path, document)


def read_findings_json(path: str | Path) -> dict[str, Any]:
    """Read and validate a findings.json (same schema major version required)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read findings.json ({exc})") from exc
    validate_findings_document(document, path)
    major = SCHEMA_VERSION.split(".")[0]
    if document.get("schema") != SCHEMA_NAME or str(document["schema_version"]).split(".")[0] != major:
        raise OutputError(
            f"{path}: schema {document.get('schema')!r} version {document['schema_version']!r} is not "
            f"{SCHEMA_NAME!r} {major}.x"
        )
    return document

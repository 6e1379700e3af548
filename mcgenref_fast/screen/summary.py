"""The tables of a screening run, rebuilt from the journal (+ findings.json) after every run.

- `summary.csv`: one row per screened image, in input order: key, input, exam, UIDs (DICOM), laterality,
  view, numbers of MCs / large components / clusters, max cluster score, flag, spacing, seconds.
- `exams.csv`: images grouped by StudyInstanceUID (an input without one — PNG/TIFF/PGM, or a DICOM
  lacking the tag — is its own exam, named by its key); an exam is flagged when any of its images is.
  Sorted as a worklist: flagged first, then by score (descending), then exam id.
- `errors.csv`: one row per input that could not be screened: input, key (if known), error type, message.

Every table is a function of the journal's last terminal event per input and the inputs' order only
(the `row` stored with each `done` event, or the input's findings.json when the event has none), so a
run that was killed and resumed ends with the same tables as one that never stopped (up to the timing
column `seconds`). All files are written atomically.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mcgenref_fast.atomic import write_text_atomic

SUMMARY_NAME = "summary.csv"
EXAMS_NAME = "exams.csv"
ERRORS_NAME = "errors.csv"

SUMMARY_COLUMNS = (
    "key", "input", "exam", "sop_instance_uid", "study_instance_uid", "series_instance_uid", "laterality",
    "view", "n_mcs", "n_large", "n_clusters", "max_cluster_score", "flagged", "spacing_mm", "spacing_source",
    "seconds",
)
EXAMS_COLUMNS = (
    "exam", "study_instance_uid", "n_images", "views", "n_mcs", "n_clusters", "max_cluster_score", "flagged",
    "keys", "flagged_keys",
)
ERRORS_COLUMNS = ("input", "key", "error_type", "message")
TIMING_COLUMNS = ("seconds",)


def row_from_document(key: str, input_path: str, document: Mapping[str, Any], seconds: float | None = None) -> dict[str, Any]:
    """The summary row of one image from its findings document (findings.json, or the same dict in memory)."""
    image = document.get("image") or {}
    provenance = document.get("provenance") or {}
    study = image.get("study_instance_uid") or None
    clusters = document.get("clusters") or []
    max_score = document.get("max_cluster_score")
    if max_score is None:
        max_score = max((float(c.get("score", 0.0)) for c in clusters), default=0.0)
    return {
        "key": key,
        "input": input_path,
        "exam": study or key,
        "sop_instance_uid": image.get("sop_instance_uid") or None,
        "study_instance_uid": study,
        "series_instance_uid": image.get("series_instance_uid") or None,
        "laterality": image.get("laterality") or None,
        "view": image.get("view") or None,
        "n_mcs": int(document.get("n_mcs", len(document.get("mcs") or []))),
        "n_large": int(document.get("n_large", len(document.get("large") or []))),
        "n_clusters": int(document.get("n_clusters", len(clusters))),
        "max_cluster_score": float(max_score),
        "flagged": bool(document.get("flagged", False)),
        "spacing_mm": image.get("spacing_mm", provenance.get("spacing_mm")),
        "spacing_source": provenance.get("spacing_source"),
        "seconds": None if seconds is None else float(seconds),
    }


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if name == "max_cluster_score":
            return f"{value:.6f}"
        if name == "seconds":
            return f"{value:.3f}"
        return f"{value:.6g}"
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(c, row.get(c)) for c in columns])
    return buffer.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """A table written here, as a list of {column: text} (for tests and downstream scripts)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build_exams(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """exams.csv rows from summary rows (see the module doc)."""
    exams: dict[str, dict[str, Any]] = {}
    for row in rows:
        exam = exams.setdefault(row["exam"], {
            "exam": row["exam"], "study_instance_uid": row.get("study_instance_uid"), "n_images": 0,
            "_views": set(), "n_mcs": 0, "n_clusters": 0, "max_cluster_score": 0.0, "flagged": False,
            "_keys": [], "_flagged_keys": [],
        })
        exam["n_images"] += 1
        exam["_views"].add(f"{row.get('laterality') or '?'}-{row.get('view') or '?'}")
        exam["n_mcs"] += int(row["n_mcs"])
        exam["n_clusters"] += int(row["n_clusters"])
        exam["max_cluster_score"] = max(exam["max_cluster_score"], float(row["max_cluster_score"]))
        exam["_keys"].append(row["key"])
        if row["flagged"]:
            exam["flagged"] = True
            exam["_flagged_keys"].append(row["key"])
    out = []
    for exam in exams.values():
        exam["views"] = ";".join(sorted(exam.pop("_views")))
        exam["keys"] = ";".join(exam.pop("_keys"))
        exam["flagged_keys"] = ";".join(exam.pop("_flagged_keys"))
        out.append(exam)
    out.sort(key=lambda e: (not e["flagged"], -e["max_cluster_score"], e["exam"]))
    return out


@dataclass
class Tables:
    """The rebuilt tables of one run; `pending`: inputs neither done nor failed (an interrupted run)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    exams: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def n_flagged(self) -> int:
        return sum(1 for r in self.rows if r["flagged"])


def rebuild_tables(out_dir: str | Path, inputs: Sequence[str], states: Mapping[str, Any]) -> Tables:
    """Tables for `inputs` (normalised paths, in order) from the journal states (`journal.load_states`)."""
    from mcgenref_fast.findings_json import read_findings_json
    from mcgenref_fast.output_layout import FINDINGS_JSON

    out_dir = Path(out_dir)
    tables = Tables()
    for path in inputs:
        st = states.get(path)
        status = getattr(st, "status", "new")
        if status == "done" and st.done is not None:
            rec = st.done
            row = rec.get("row")
            if row is None:
                document = read_findings_json(out_dir / rec["key"] / FINDINGS_JSON)
                row = row_from_document(rec["key"], path, document, rec.get("seconds"))
            tables.rows.append(dict(row))
        elif status == "failed" and st.failed is not None:
            rec = st.failed
            tables.errors.append({"input": path, "key": rec.get("key"), "error_type": rec.get("error_type", "Error"),
                                  "message": rec.get("message", "")})
        else:
            tables.pending.append(path)
    tables.exams = build_exams(tables.rows)
    return tables


def write_tables(out_dir: str | Path, tables: Tables) -> dict[str, Path]:
    """summary.csv, exams.csv, errors.csv (atomically; errors.csv always, with just its header when empty)."""
    out_dir = Path(out_dir)
    return {
        "summary": write_text_atomic(out_dir / SUMMARY_NAME, csv_text(SUMMARY_COLUMNS, tables.rows)),
        "exams": write_text_atomic(out_dir / EXAMS_NAME, csv_text(EXAMS_COLUMNS, tables.exams)),
        "errors": write_text_atomic(out_dir / ERRORS_NAME, csv_text(ERRORS_COLUMNS, tables.errors)),
    }

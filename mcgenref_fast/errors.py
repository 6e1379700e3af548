"""Project exceptions: one type per failure family, each message naming the file and what to do."""
from __future__ import annotations

from pathlib import Path


class McGenRefError(Exception):
    """Base of every error this package raises on purpose (the CLI prints it as one line)."""


class MammogramReadError(McGenRefError):
    """A file could not be read as a mammogram (missing, corrupt, wrong modality, no decoder, bad pixels)."""

    def __init__(self, path: str | Path | None, problem: str, hint: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" ({hint})" if hint else ""))


class SpacingError(MammogramReadError):
    """No pixel spacing could be found for an input (pass --spacing / spacing_mm=)."""


class AnnotationError(McGenRefError):
    """An annotation file (INbreast XML, mini-MIAS list, mask) could not be parsed."""


class WeightsError(McGenRefError):
    """Model weights are missing, do not match their manifest checksum, or do not fit the model."""


class ConfigError(McGenRefError):
    """A setting is out of range or inconsistent."""


class OutputError(McGenRefError):
    """An output could not be written."""


class EvaluationError(McGenRefError):
    """Evaluation results (results.json of `mcgenref eval`) are missing or unreadable."""

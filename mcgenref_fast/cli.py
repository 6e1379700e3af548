"""The `mcgenref` command: one entry point, one subcommand module each (no logic lives only here).

Each module in `mcgenref_fast.commands` named in `SUBCOMMANDS` provides `add_parser(subparsers)` that
registers its parser and sets `func=run`, where `run(args) -> int` is the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Callable, Sequence

from mcgenref_fast import __version__
from mcgenref_fast.errors import McGenRefError

# Order is the order shown in --help.
SUBCOMMANDS: tuple[str, ...] = ("demo", "segment", "screen", "eval", "info", "synth", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcgenref",
        description="Find and outline microcalcifications in full-field mammograms (MC-GenRef + TT-GPR). "
        "Distances are in mm, image coordinates in pixels.",
    )
    parser.add_argument("--version", action="version", version=f"mcgenref_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mcgenref_fast.commands.{name}").add_parser(sub)
    return parser


def _one_line_warnings(prefix: str) -> Callable[..., str]:
    """Warnings reach the user as `PREFIX: warning: message` (one line), not Python's file:line form with
    the source line under it: the warnings this package gives (UserWarning) name the file and what to check
    already; other categories keep their name. Returns the formatter it replaced (`main` puts it back, so an
    in-process caller's own warnings look as before once the command is done)."""
    previous = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings.formatwarning's signature
        kind = "warning" if category is UserWarning else category.__name__
        return f"{prefix}: {kind}: {message}\n"

    warnings.formatwarning = fmt
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "threads", None):
        from mcgenref_fast.threads import set_threads

        set_threads(args.threads)
    previous_format = _one_line_warnings(f"mcgenref {args.command}")
    try:
        return int(args.func(args) or 0)
    except McGenRefError as exc:
        print(f"mcgenref {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcgenref {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Write the shipped weights of an earlier revision into a weights folder, for `--weights DIR`.

Example: python scripts/weights_from_git.py 8eaf3fc runs/gen1/weights
(the networks shipped before gen11: segmentor v4 8822aa4d…, generator gen1 1b8fa1f8…; README figures marked as
measured with the first generator are reproduced by their commands plus `--weights runs/gen1/weights`).

Reads `mcgenref_fast/weights/manifest.json` and each file it names at REV with `git show` in the clone this
script lives in, checks every file's sha256 against that manifest, and writes them under OUT.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

WEIGHTS = "mcgenref_fast/weights"
REPO = Path(__file__).resolve().parents[1]   # the clone this script lives in


def git_show(rev: str, path: str) -> bytes:
    """The bytes of `path` at `rev`; SystemExit with git's message when it is not there."""
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True)
    if done.returncode != 0:
        sys.exit(f"weights_from_git: {rev}:{path}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="git revision, e.g. 8eaf3fc")
    ap.add_argument("out", type=Path, help="weights folder to write (manifest.json + network files)")
    args = ap.parse_args(argv)
    manifest_bytes = git_show(args.rev, f"{WEIGHTS}/manifest.json")
    manifest = json.loads(manifest_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["models"].items():
        data = git_show(args.rev, f"{WEIGHTS}/{entry['file']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            sys.exit(f"weights_from_git: {name} at {args.rev}: sha256 {digest[:12]}… does not match its manifest "
                     f"({entry['sha256'][:12]}…)")
        (args.out / entry["file"]).write_bytes(data)
        print(f"{name}: {entry['file']} sha256 {digest[:8]}… -> {args.out}")
    (args.out / "manifest.json").write_bytes(manifest_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

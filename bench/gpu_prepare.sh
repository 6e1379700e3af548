#!/usr/bin/env bash
# Run HERE (the dev machine) before a device-tool call: lays out what bench/gpu_check.sh and
# scripts/gpu_train_generator.sh need on the GPU machine, which has torch + triton but no pydicom and no ../shared.
#   .whl/       pydicom (pure Python; the package imports it, the GPU image lacks it)
#   .gpu_data/  splits.csv, ffdm_backgrounds/ and mias/ from ../shared/data (the bench's real dev image and the
#               `train` backgrounds of the generator run), ~24 MB of the device tool's 64 MiB
# Both are git-ignored through .git/info/exclude. Then, with the device tool (the 2026-11-28 call):
#   run(command='T0=$(date +%s); export MCGENREF_SHARED_DATA=$PWD/.gpu_data; bash bench/gpu_check.sh;
#                bash scripts/gpu_train_generator.sh $((T0+565)) 1500', carry=[".whl", ".gpu_data"], timeout_s=595)
# For issue 11's train-and-score call (scripts/gpu_issue11.sh) also make runs/devsets here
# (python scripts/make_dev_sets.py, ~20 MB, git-ignored) and carry it; that script's header has the call.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MCGENREF_SHARED_DATA:-../shared/data}
for d in /.whl/ /.gpu_data/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .gpu_data
ls .whl/pydicom-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl "pydicom==$(sed -n 's/^pydicom==//p' constraints.txt)"
cp -r "$SHARED/splits.csv" "$SHARED/ffdm_backgrounds" "$SHARED/mias" .gpu_data/
chmod -R u+w .gpu_data
du -sh .whl .gpu_data

#!/usr/bin/env bash
# One call on a CUDA machine (torch + triton present, no package registry, maybe no pydicom/pybind11):
# install, run the kernel and equivalence tests on CUDA, run the benchmarks, print a short table.
# Usage (device tool): bash bench/gpu_check.sh   — outputs land in $OUT (or bench/gpu_out) as well.
# Budget: under ~9.5 minutes in the worst case (install ≤ 75 s, + 60 s for the fallback build, tests ≤ 120 s,
# benchmarks ≤ 180 s, launch-shape sweep ≤ 120 s; each step is cut by SIGINT, so that pytest still prints its
# summary and pytest-benchmark still writes the JSON of what ran, and the next step still runs). Measured on an
# H200 (2026-11-28, before the sweep was added): about 80 s in all. Prepare the carried files with
# bench/gpu_prepare.sh (pydicom wheel, the dev background).
# Issue 9: tests/test_gpu.py holds the CUDA-graph / bf16 / fp16 / host-sync / peak
# memory checks; bench/test_bench_stages.py the per-stage, end-to-end (full 3328×2560 fast fp32 + bf16;
# fast vs reference on a 1024² crop, reference 1 round) and yardstick (matmul, copy, pinned H2D) groups.
# The real background needs shared/data (MCGENREF_SHARED_DATA); without it the stages use a synthetic image.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-bench/gpu_out}
mkdir -p "$OUT_DIR"
export TRITON_INTERPRET=0 MCGENREF_KERNELS=auto
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh   # pydicom wheel, editable install (or the in-tree fallback)
python3 - <<'PY' | tee "$OUT_DIR/device.txt"
import torch, triton
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| triton", triton.__version__)
try:
    from mcgenref_fast import tiling
    print("tiler:", tiling.backend().__name__)
except Exception as exc:  # noqa: BLE001
    print("tiler: unavailable", exc)
PY
# pyproject's addopts carry --benchmark-disable: without pytest-benchmark pytest would refuse every run
BENCH=1
PYTEST_OPTS=()
if ! python3 -c "import pytest_benchmark" 2>/dev/null; then
  BENCH=0
  PYTEST_OPTS=(-o "addopts=-ra")
  echo "pytest-benchmark missing: CUDA tests only (carry its wheel in .whl for the benchmarks)"
fi
echo "== CUDA tests"
timeout -s INT -k 15 120 python3 -m pytest -q -s -p no:cacheprovider ${PYTEST_OPTS[@]+"${PYTEST_OPTS[@]}"} \
  tests/test_gpu.py 2>&1 \
  | tee "$OUT_DIR/tests.txt" | grep -E "host syncs|peak GPU|passed|failed|FAILED|skipped|ERROR|Error" | tail -30
if [ "$BENCH" = 1 ]; then
  echo "== benchmarks (kernels, stages + end to end + yardsticks)"
  # awk (not head): it reads to the end, so the pipe never closes under pytest (a closed pipe would kill tee)
  timeout -s INT -k 20 180 python3 -m pytest -q -p no:cacheprovider bench/test_bench_kernels.py \
    bench/test_bench_stages.py --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
    --benchmark-max-time=0.5 --benchmark-json="$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.txt" \
    | grep -E "^(test_|Name|-)|passed|failed|FAILED|skipped|ERROR|Error" | awk 'NR <= 100'
fi
echo "== kernel launch shapes (issue 9: gpr_update / fuse_tiles vs the copy bandwidth)"
# (its table is printed here, its JSON kept: the device tool returns at most 8 files from $OUT, and with
# scripts/gpu_train_generator.sh's tar this script's seven make eight)
timeout -s INT -k 10 120 python3 bench/kernel_tuning.py --json "$OUT_DIR/kernel_tuning.json" 2>&1 | awk 'NR <= 40'
echo "== summary (medians, ms)"
python3 - "$OUT_DIR/bench.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except Exception as exc:  # no benchmarks ran
    print("no benchmark JSON:", exc); sys.exit(0)
print(f"{'benchmark':60s} {'median ms':>10s}  extra")
keys = ("GB/s", "TFLOP/s", "max_memory_allocated", "max_abs_p_diff", "seeded_tiles_per_iteration")
for b in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["name"])):
    extra = {k: b["extra_info"][k] for k in keys if k in b.get("extra_info", {})}
    print(f"{(b['group'] or '') + ' / ' + b['name']:60.60s} {1e3 * b['stats']['median']:10.3f}  {extra}")
PY
echo "== rendered"
[ -f "$OUT_DIR/bench.json" ] \
  && python3 bench/render_bench.py "$OUT_DIR/bench.json" --out "$OUT_DIR/bench_report" 2>&1 | tail -1
exit 0

#!/usr/bin/env bash
# Issue 11 on a lent GPU: fine-tune the shipped generator with the surrogate-consistency term (the gen6 recipe of
# MODEL_CARD.md, "Tried and not shipped") on many more synthetic pairs than a CPU session can make, until a
# wall-clock deadline; the run (weights if it finished, else its checkpoint, log and config) comes back as one tar.
# Usage (device tool, after bench/gpu_check.sh installed the package):
#   bash scripts/gpu_train_generator.sh DEADLINE_EPOCH_S [STEPS]
# Needs the `train` backgrounds of splits.csv under $MCGENREF_SHARED_DATA (default ../shared/data).
# A run cut by the deadline is exported here afterwards with
#   mcgenref train generator --out RUN --resume --steps <step reached> <same options>
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:?deadline (seconds since the epoch)}
STEPS=${2:-2000}
OUT_DIR=${OUT:-runs/gpu_out}
DATA=${MCGENREF_SHARED_DATA:-../shared/data}
RUN=/tmp/gen_gpu
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
# pydicom (imported by the CLI) travels as a wheel in .whl, like bench/gpu_check.sh
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
LEFT=$(( DEADLINE - $(date +%s) - 45 ))   # 45 s: start-up, final validation, tar
if [ "$LEFT" -lt 60 ]; then
  echo "== generator training skipped: ${LEFT}s left before the deadline"; exit 0
fi
echo "== generator training on ${TRAIN_DEVICE:-cuda}: ${LEFT}s, ${STEPS} steps max"
rm -rf "$RUN"
timeout -s INT -k 15 $(( LEFT + 30 )) python3 -m mcgenref_fast train generator --out "$RUN" --device "${TRAIN_DEVICE:-cuda}" --workers "${TRAIN_WORKERS:-14}" --threads 2 \
  --steps "$STEPS" --batch 32 --patch 128 --warmup 100 --lr 5e-4 --val-size 64 --val-every 500 --ckpt-every 250 \
  --t-min 0.65 --surrogate-weight 0.5 --backgrounds-split "$DATA/splits.csv" --real-min-breast-fraction 0.7 \
  --match-source-sampling --init-from mcgenref_fast/weights --seed 43 --time-limit "$LEFT" \
  --export-to "$RUN/weights" --no-progress > "$RUN.log" 2>&1
echo "train exit $?"
tail -4 "$RUN.log"
grep '"kind": "val"' "$RUN/log.jsonl" | tail -4
cp "$RUN.log" "$RUN/train.log"
tar -C /tmp -czf "$OUT_DIR/gen_gpu.tgz" gen_gpu && ls -la "$OUT_DIR/gen_gpu.tgz"
exit 0

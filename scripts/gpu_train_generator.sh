#!/usr/bin/env bash
# Issue 11 on a lent GPU: fine-tune the shipped generator with the surrogate-consistency term (the gen6 recipe of
# MODEL_CARD.md, "Tried and not shipped") on many more synthetic pairs than a CPU session can make, until a
# wall-clock deadline; the run (weights if it finished, else its checkpoint, log and config) comes back as one tar.
# Usage (device tool; alone, or after bench/gpu_check.sh in the same call):
#   bash scripts/gpu_train_generator.sh DEADLINE_EPOCH_S [STEPS]
# Needs the `train` backgrounds of splits.csv under $MCGENREF_SHARED_DATA (default ../shared/data).
# GEN_INIT: the weights directory the run starts from (default the shipped mcgenref_fast/weights; e.g. a carried
# runs/gpu2/gen11/weights to continue gen11). A run cut by the deadline is exported at the step it reached
# (`--resume --steps <step reached>`: the EMA weights of that step), so $RUN/weights always holds a generator
# unless not a single checkpoint was written.
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:?deadline (seconds since the epoch)}
STEPS=${2:-2000}
OUT_DIR=${OUT:-runs/gpu_out}
DATA=${MCGENREF_SHARED_DATA:-../shared/data}
RUN=/tmp/gen_gpu
mkdir -p "$OUT_DIR"
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh   # pydicom wheel, editable install (idempotent after bench/gpu_check.sh)
LEFT=$(( DEADLINE - $(date +%s) - 45 ))   # 45 s: start-up, final validation, tar
if [ "$LEFT" -lt 60 ]; then
  echo "== generator training skipped: ${LEFT}s left before the deadline"; exit 0
fi
echo "== generator training on ${TRAIN_DEVICE:-cuda}: ${LEFT}s, ${STEPS} steps max"
rm -rf "$RUN"
# the recipe of gen10 / gen11 (MODEL_CARD.md); the same options again for the export of a run cut by the deadline
OPTS=(--device "${TRAIN_DEVICE:-cuda}" --workers "${TRAIN_WORKERS:-14}" --threads 2 --batch 32 --patch 128
  --warmup 100 --lr 5e-4 --val-size "${VAL_SIZE:-64}" --val-every 500 --ckpt-every 250 --t-min 0.65
  --surrogate-weight 0.5 --backgrounds-split "$DATA/splits.csv" --real-min-breast-fraction 0.7
  --match-source-sampling --init-from "${GEN_INIT:-mcgenref_fast/weights}" --seed "${GEN_SEED:-43}"
  --export-to "$RUN/weights" --no-progress)
timeout -s INT -k 15 $(( LEFT + 30 )) python3 -m mcgenref_fast train generator --out "$RUN" --steps "$STEPS" \
  --time-limit "$LEFT" "${OPTS[@]}" > "$RUN.log" 2>&1
echo "train exit $?"
tail -4 "$RUN.log"
if [ ! -f "$RUN/weights/manifest.json" ] && [ -f "$RUN/checkpoint.pt" ]; then
  REACHED=$(python3 -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['step'])" \
    "$RUN/checkpoint.pt")
  echo "== cut by the deadline: exporting the checkpoint of step $REACHED"
  timeout -k 10 60 python3 -m mcgenref_fast train generator --out "$RUN" --steps "$REACHED" --resume "${OPTS[@]}" \
    >> "$RUN.log" 2>&1
  tail -1 "$RUN.log"
fi
grep '"kind": "val"' "$RUN/log.jsonl" | tail -4
cp "$RUN.log" "$RUN/train.log"
tar -C /tmp -czf "$OUT_DIR/gen_gpu.tgz" gen_gpu && ls -la "$OUT_DIR/gen_gpu.tgz"
exit 0

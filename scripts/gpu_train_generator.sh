#!/usr/bin/env bash
# Issue 11 on a lent GPU: fine-tune the shipped generator with the surrogate-consistency term (the gen6 recipe of
# MODEL_CARD.md, "Tried and not shipped") on many more synthetic pairs than a CPU session can make, until a
# wall-clock deadline; the run (weights if it finished, else its checkpoint, log and config) comes back as one tar.
# Usage (device tool; alone, or after bench/gpu_check.sh in the same call):
#   bash scripts/gpu_train_generator.sh DEADLINE_EPOCH_S [STEPS]
# Needs the `train` backgrounds of splits.csv under $MCGENREF_SHARED_DATA (default ../shared/data).
# GEN_INIT: the weights directory the run starts from (default the shipped mcgenref_fast/weights; e.g. a carried
# runs/gpu2/gen11/weights to continue gen11). GEN_SEED: the pairs' seed (default 43 from the shipped weights, as
# gen10/gen11; 61 from any other GEN_INIT, so that a continuation sees pairs its start never saw).
# A run the deadline paused (its log's "pause" record) is exported at the step it reached (`--resume --steps
# <step>`: the EMA weights of that step, its learning rate not decayed): $RUN/CUT.txt then says so, since the
# manifest records only the step reached. Time: 45 s of the budget are kept for start-up, the final validation and
# the tar, 40 s more for that export.
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:?deadline (seconds since the epoch)}
STEPS=${2:-2000}
OUT_DIR=${OUT:-runs/gpu_out}
DATA=${MCGENREF_SHARED_DATA:-../shared/data}
RUN=/tmp/gen_gpu
mkdir -p "$OUT_DIR"
rm -rf "$RUN"   # first: a skipped run must not leave an earlier run's weights to be taken for this one's
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh   # pydicom wheel, editable install (idempotent after bench/gpu_check.sh)
LEFT=$(( DEADLINE - $(date +%s) - 45 - 40 ))
if [ "$LEFT" -lt 60 ]; then
  echo "== generator training skipped: ${LEFT}s left before the deadline"; exit 0
fi
INIT=${GEN_INIT:-mcgenref_fast/weights}
if [ "$INIT" = mcgenref_fast/weights ]; then SEED=${GEN_SEED:-43}; else SEED=${GEN_SEED:-61}; fi
echo "== generator training on ${TRAIN_DEVICE:-cuda}: ${LEFT}s, ${STEPS} steps max, from $INIT, seed $SEED"
# the recipe of gen10 / gen11 (MODEL_CARD.md); the same options again for the export of a run cut by the deadline
OPTS=(--device "${TRAIN_DEVICE:-cuda}" --workers "${TRAIN_WORKERS:-14}" --threads 2 --batch 32 --patch 128
  --warmup 100 --lr 5e-4 --val-size "${VAL_SIZE:-64}" --val-every 500 --ckpt-every 250 --t-min 0.65
  --surrogate-weight 0.5 --backgrounds-split "$DATA/splits.csv" --real-min-breast-fraction 0.7
  --match-source-sampling --init-from "$INIT" --seed "$SEED" --export-to "$RUN/weights" --no-progress)
timeout -s INT -k 15 $(( LEFT + 30 )) python3 -m mcgenref_fast train generator --out "$RUN" --steps "$STEPS" \
  --time-limit "$LEFT" "${OPTS[@]}" > "$RUN.log" 2>&1
echo "train exit $?"
tail -4 "$RUN.log"
if [ ! -f "$RUN/weights/manifest.json" ] && grep -q '"kind": "pause"' "$RUN/log.jsonl" 2>/dev/null; then
  REACHED=$(python3 -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['step'])" \
    "$RUN/checkpoint.pt")
  echo "== paused by the deadline at step $REACHED of $STEPS: exporting that step's weights"
  echo "cut by the deadline: planned $STEPS steps, exported at step $REACHED (learning rate not decayed)" > "$RUN/CUT.txt"
  EXPORT_S=$(( DEADLINE - $(date +%s) - 10 ))
  timeout -k 5 $(( EXPORT_S > 20 ? EXPORT_S : 20 )) python3 -m mcgenref_fast train generator --out "$RUN" \
    --steps "$REACHED" --resume "${OPTS[@]}" >> "$RUN.log" 2>&1
  tail -1 "$RUN.log"
fi
[ -f "$RUN/weights/manifest.json" ] || echo "== no generator exported (see $RUN.log in the tar)"
grep '"kind": "val"' "$RUN/log.jsonl" | tail -4
cp "$RUN.log" "$RUN/train.log"
tar -C /tmp -czf "$OUT_DIR/gen_gpu.tgz" gen_gpu && ls -la "$OUT_DIR/gen_gpu.tgz"
exit 0

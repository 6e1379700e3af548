#!/usr/bin/env bash
# Issue 11 on a lent GPU, in ONE device call: train a generator on many more synthetic pairs than a CPU session can
# make (scripts/gpu_train_generator.sh, the gen10/gen11 recipe), then score it at once, on the GPU, on the `dev`
# semi-real set (and mini-MIAS for the engine's settings) beside the shipped networks' initializer and TT-GPR, and
# print the comparison with issue 11's bar (scripts/compare_evals.py). On a CPU the same scoring takes 7 min per
# setting; here it is what decides whether a generator is worth shipping before the call ends.
#
# Prepare here (the dev machine):  bash bench/gpu_prepare.sh && python scripts/make_dev_sets.py
# Device call (15 min of device time a session; a start costs minutes):
#   run(command='T0=$(date +%s); export MCGENREF_SHARED_DATA=$PWD/.gpu_data GEN_INIT=runs/gpu2/gen11/weights;
#                bash scripts/gpu_issue11.sh $((T0+570)) 2200',
#       carry=[".whl", ".gpu_data", "runs/devsets", "runs/gpu2/gen11/weights"], timeout_s=595)
# (GEN_INIT unset starts from the shipped generator, gen11 since 2026-11-28, as the call above does.) The new
# generator's rows (sweep_refine.py) refine film too, with segmentor v4 on every input, while the shipped TT-GPR row
# keeps film on the film segmentor's map (the film rule): compare their `recall @ 0.07 mm` columns, and the pooled figures only between sweep rows. STEPS: the
# H200 made ~7.9 steps/s of this recipe (gen11: 2600 in 330 s) and the call leaves ~290 s to train; a run cut by the
# deadline is exported at the step it reached, but its learning rate has not decayed, so size STEPS to fit.
#
# Env: EVAL_S seconds kept for scoring (default 200); EVAL_DEVICE (cuda); EVAL_LIMIT N scores the first N images
# only (a dry run, e.g. on a CPU: TRAIN_DEVICE=cpu TRAIN_WORKERS=0 EVAL_DEVICE=cpu EVAL_LIMIT=2); SETTINGS, the
# TT-GPR settings scored with the new generator on the semi-real set, one `sweep_refine.py --set` each
# (space-separated; SETTINGS="" scores none), MIAS_SETTINGS likewise on mini-MIAS.
# Out ($OUT, else runs/gpu_out): gen_gpu.tgz (the training run and its weights), issue11_eval.tgz (every
# results.md / results.json), issue11_summary.md (the comparison table).
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${1:?deadline (seconds since the epoch)}
STEPS=${2:-3000}
OUT_DIR=${OUT:-runs/gpu_out}
mkdir -p "$OUT_DIR"
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
EVAL_S=${EVAL_S:-200}
EVAL_DEVICE=${EVAL_DEVICE:-cuda}
LIMIT=()
[ -n "${EVAL_LIMIT:-}" ] && LIMIT=(--limit "$EVAL_LIMIT")
SETTINGS=${SETTINGS-"lam_prox=0.2 t0=0.85,lam_prox=0.2 t0=0.85,lam_prox=0.5"}
MIAS_SETTINGS=${MIAS_SETTINGS-"lam_prox=0.2 t0=0.85,lam_prox=0.2"}
SEMI=runs/devsets/semireal_shifted
MIAS=runs/devsets/mias_dev
EVAL=/tmp/issue11_eval
rm -rf "$EVAL" && mkdir -p "$EVAL"
for d in "$SEMI" "$MIAS"; do
  [ -d "$d" ] || { echo "missing $d: run scripts/make_dev_sets.py here and carry runs/devsets"; exit 1; }
done

bash scripts/gpu_train_generator.sh $(( DEADLINE - EVAL_S )) "$STEPS"
W=/tmp/gen_gpu/weights
if [ ! -f "$W/manifest.json" ]; then
  echo "no trained generator in $W: scoring the shipped networks only"
  SETTINGS=""
  MIAS_SETTINGS=""
fi
[ -f /tmp/gen_gpu/CUT.txt ] && cat /tmp/gen_gpu/CUT.txt

LEFT=$(( DEADLINE - $(date +%s) - 25 ))   # 25 s: the table and the tars
if [ "$LEFT" -lt 30 ]; then
  echo "== no time left to score (${LEFT}s): raise EVAL_S or lower STEPS"; exit 0
fi
echo "== scoring on $EVAL_DEVICE, all runs at once: ${LEFT}s"
score() {  # NAME COMMAND...: one scoring process in the background, its log kept
  local name=$1; shift
  timeout -s INT -k 10 "$LEFT" "$@" --threads 2 ${LIMIT[@]+"${LIMIT[@]}"} > "$EVAL/$name.log" 2>&1 &
}
# the shipped networks, engine defaults: the figures every new row is compared with, on the same device
score semireal_shipped python3 -m mcgenref_fast eval --method initializer --method gpr --dataset semireal "$SEMI" \
  --out "$EVAL/semireal_shipped" --device "$EVAL_DEVICE"
score mias_shipped python3 -m mcgenref_fast eval --method initializer --method gpr --dataset mias "$MIAS" \
  --out "$EVAL/mias_shipped" --device "$EVAL_DEVICE"
score_settings() {  # NAME DATASET KIND OUT SETTINGS: one sweep_refine.py run with the new generator per setting
  local name=$1 data=$2 kind=$3 out=$4 i=0 S
  for S in $5; do
    score "${name}_$i" python3 scripts/sweep_refine.py "$data" --kind "$kind" --out "$out" --weights "$W" \
      --device "$EVAL_DEVICE" --set "$S"
    i=$(( i + 1 ))
  done
}
score_settings semireal_new "$SEMI" semireal "$EVAL/semireal_new" "$SETTINGS"
score_settings mias_new "$MIAS" mias "$EVAL/mias_new" "$MIAS_SETTINGS"
wait
for f in "$EVAL"/*.log; do echo "-- $(basename "$f" .log): $(grep -c 'analysed in' "$f") image runs; $(tail -n 1 "$f")"; done
echo "== issue 11 comparison (bar: TT-GPR recall above / FNR below the initializer's, Dice within 0.02)"
python3 scripts/compare_evals.py "$EVAL" --out "$OUT_DIR/issue11_summary.md"
tar -C /tmp -czf "$OUT_DIR/issue11_eval.tgz" --exclude=cache issue11_eval && ls -la "$OUT_DIR/issue11_eval.tgz"
exit 0

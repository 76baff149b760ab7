#!/usr/bin/env bash
# The block fine-tuning recipe in one command (fixed seeds), for a machine with PyTorch and a GPU:
#   training/run.sh OUTDIR
# 1. the training code's unit tests, 2. the evaluation data (OUTDIR/data), 3. stage 1 (full
# attention, OUTDIR/vanilla) and stage 2 (block fine-tuning, OUTDIR/blockft), each a Hugging Face
# checkpoint, 4. when a kvblock binary is given ($KVBLOCK, or `kvblock` on PATH), `kvblock eval`
# of both checkpoints in both modes on the test split (OUTDIR/eval-*.json).
# Environment: PYTHON (default python3), KVBLOCK, EVAL_LIMIT (test examples evaluated, default
# 200, as the model card), TRAIN_ARGS (extra train.py flags). Failing unit tests do not stop
# training (their log is kept), but the exit status is then 1.
set -euo pipefail
out="${1:?usage: training/run.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
mkdir -p "$out"

tests_rc=0
"$py" "$here/tests/run_tests.py" > "$out/unit_tests.log" 2>&1 || tests_rc=$?
tail -n 3 "$out/unit_tests.log"
"$py" "$here/make_data.py" --out "$out/data"
# shellcheck disable=SC2086
"$py" "$here/train.py" --out "$out" ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.log"

kvblock="${KVBLOCK:-$(command -v kvblock || true)}"
if [ -z "$kvblock" ]; then
  echo "run.sh: no kvblock binary (set KVBLOCK); skipping kvblock eval"
  exit $tests_rc
fi
# Four independent evaluations, in parallel (each on its own cache directory).
pids=()
for model in vanilla blockft; do
  for mode in full block; do
    "$kvblock" eval --model "$out/$model" --dataset "$out/data/test.jsonl" --mode "$mode" \
      --limit "${EVAL_LIMIT:-200}" --cache-dir "$out/cache-$model-$mode" \
      --json "$out/eval-$model-$mode.json" > "$out/eval-$model-$mode.log" 2>&1 &
    pids+=($!)
  done
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
tail -n 2 "$out"/eval-*.log
[ "$tests_rc" -eq 0 ] || { echo "run.sh: unit tests failed (exit $tests_rc), see $out/unit_tests.log"; exit 1; }
exit $rc

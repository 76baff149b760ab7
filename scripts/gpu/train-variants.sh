#!/usr/bin/env bash
# Runs the block fine-tuning recipe (training/run.sh) for two model sizes at once on one GPU,
# each time-capped, into /tmp/{l4,l6}: the demo model's architecture (4 layers) and a deeper
# one (6 layers). The GPU is far from busy with one of these small models, so the two share it.
# OUT_DIR gets each run's log and OUT_DIR/{l4,l6}.tgz (checkpoints, training log, summary): the
# device tool returns files at most two folders down, which the checkpoints' folders are not.
# usage (on the GPU machine): scripts/gpu/train-variants.sh OUT_DIR
# Environment: STAGE1_SECONDS (default 320), STAGE2_SECONDS (default 140).
set -euo pipefail
out="${1:?usage: scripts/gpu/train-variants.sh OUT_DIR}"
cd "$(dirname "$0")/../.."
caps="--max-stage1-seconds ${STAGE1_SECONDS:-320} --max-stage2-seconds ${STAGE2_SECONDS:-140}"
common="--stage1-steps 12000 --stage2-steps 5000 --eval-every 2000 --workers 7 $caps"
mkdir -p "$out"
TRAIN_ARGS="$common --layers 4" training/run.sh /tmp/l4 > "$out/l4.log" 2>&1 &
a=$!
TRAIN_ARGS="$common --layers 6 --lr1 1.5e-3" training/run.sh /tmp/l6 > "$out/l6.log" 2>&1 &
b=$!
rc=0
wait "$a" || rc=1
wait "$b" || rc=1
for v in l4 l6; do
  tar -C /tmp/$v -czf "$out/$v.tgz" vanilla blockft train_log.jsonl train_summary.json || rc=1
done
exit $rc

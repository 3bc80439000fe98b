#!/usr/bin/env bash
# E6: k_T and r_T per task, measured on the model that solves it, beside which architecture wins.
# Tiny models (d = 32), attention (+ short conv 3) vs RG-LRU. Writes runs/e6/<task>-<model>/.
set -euo pipefail
OUT=${OUT:-runs/e6}
MODEL=(--set d_model=32 --set n_heads=2 --set vocab_size=32 --set attention.short_conv=3 --set rglru.n_heads=2)
RECIPE=(--batch-size 32 --lr 0.01 --warmup-steps 10)
declare -A TASK=(
  [mqar]="--task mqar --task-set vocab_size=32 --task-set seq_len=16 --task-set n_pairs=2 --steps 150"
  [lag]="--task lag --task-set vocab_size=16 --task-set seq_len=16 --task-set lag=3 --steps 150"
  [induction]="--task induction --task-set vocab_size=16 --task-set seq_len=32 --steps 300"
  [copy]="--task copy --task-set vocab_size=16 --task-set seq_len=32 --task-set n_tokens=4 --steps 300"
  [passkey]="--task passkey --task-set vocab_size=32 --task-set seq_len=32 --steps 300"
)
for task in mqar lag induction copy passkey; do
  for pattern in "A A" "R R"; do
    name="$task-${pattern// /}"
    # shellcheck disable=SC2086
    hybridlm train "$pattern" "${MODEL[@]}" "${RECIPE[@]}" ${TASK[$task]} --log-every 1000 --out "$OUT/$name"
    hybridlm context "$OUT/$name" --eps 0.05 --json > "$OUT/$name/context.json"
  done
done

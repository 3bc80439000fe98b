#!/usr/bin/env bash
# E5: passkey accuracy vs needle depth and length, RoPE vs no positional encoding (NoPE), with a
# pure SSM and a NoPE hybrid. Train at 64 tokens, test at 64..512. Writes runs/e5/<model>/.
set -euo pipefail
OUT=${OUT:-runs/e5}
COMMON=(--set d_model=64 --set n_heads=2 --set vocab_size=64 --set attention.short_conv=3 --set rglru.n_heads=2
        --task passkey --task-set seq_len=64 --steps 400 --batch-size 64 --lr 0.003 --warmup-steps 30 --log-every 400)
hybridlm train "A A" "${COMMON[@]}" --out "$OUT/rope"
hybridlm train "A A" "${COMMON[@]}" --set attention.rope=false --out "$OUT/nope"
hybridlm train "R A" "${COMMON[@]}" --set attention.rope=false --out "$OUT/hybrid-nope"
hybridlm train "R R" "${COMMON[@]}" --out "$OUT/ssm"
for model in rope nope hybrid-nope ssm; do
  hybridlm eval "$OUT/$model" --grid --lengths 64,128,256,512 --batch-size 16 --batches 4 --json > "$OUT/$model/grid.json"
  hybridlm eval "$OUT/$model" --grid --lengths 64,128,256,512 --batch-size 16 --batches 4
done

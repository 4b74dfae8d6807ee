#!/usr/bin/env bash
# The memory plans of WORKSPACE.md ("Device mesh"): Llama-3-8B, Llama-2-7B and GPT2-XL, bf16, batch
# 100, every method, on one device and on 4- and 8-device meshes. Writes
# experiments/results/memory_plan/<model>.json and <model>.txt. Compiles only (no weights).
set -euo pipefail
cd "$(dirname "$0")/../experiments"
MESHES="data:1,model:1 data:1,model:4 data:1,model:8 data:2,model:4 data:8,model:1"
for model in "${@:-llama3_8b llama2_7b gpt2_xl}"; do
  for m in $model; do
    ../.venv/bin/python memory_plan.py --model="$m" --mesh="$MESHES" --batch_size=100 \
      --dtype=bfloat16 --method=MEMIT,ENCORE,AlphaEdit,EMMET \
      --out="results/memory_plan/$m.json" | tee "results/memory_plan/$m.txt"
  done
done

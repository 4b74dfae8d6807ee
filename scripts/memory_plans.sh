#!/usr/bin/env bash
# The memory plans of WORKSPACE.md ("Device mesh"): Llama-3-8B, Llama-2-7B and GPT2-XL, bf16, batch
# 100, every method, on one device and on 4- and 8-device meshes (and one device searching 25
# requests at a time), and MEMIT_lti beside MEMIT_seq on 1 and 8 devices. Writes
# experiments/results/memory_plan/<model>.json and <model>.txt. Compiles only (no weights).
set -euo pipefail
cd "$(dirname "$0")/../experiments"
MESHES="data:1,model:1 data:1,model:4 data:1,model:8 data:2,model:4 data:8,model:1"
for model in "${@:-llama3_8b llama2_7b gpt2_xl}"; do
  for m in $model; do
    ../.venv/bin/python memory_plan.py --model="$m" --mesh="$MESHES" --batch_size=100 \
      --dtype=bfloat16 --method=MEMIT,ENCORE,AlphaEdit,EMMET \
      --out="results/memory_plan/$m.json" | tee "results/memory_plan/$m.txt"
    # One device with the search in chunks of 25 requests (search.max_requests).
    ../.venv/bin/python memory_plan.py --model="$m" --mesh=data:1,model:1 --batch_size=100 \
      --search_requests=25 --dtype=bfloat16 --method=MEMIT,ENCORE,AlphaEdit,EMMET \
      --out="results/memory_plan/${m}_search25.json" | tee "results/memory_plan/${m}_search25.txt"
    # LTI's search (MEMIT_lti: the teacher pass and its distributions) beside sequential MEMIT.
    ../.venv/bin/python memory_plan.py --model="$m" --mesh="data:1,model:1 data:1,model:8" \
      --batch_size=100 --dtype=bfloat16 --method=MEMIT_seq,MEMIT_lti \
      --out="results/memory_plan/${m}_lti.json" | tee "results/memory_plan/${m}_lti.txt"
  done
done

#!/usr/bin/env bash
# 100 sequential ENCORE edits on SmolLM2 with fp32 and with bf16 weights, then the comparison
# (WORKSPACE.md, "Mixed precision"). Resumable: rerun to continue. Usage: scripts/bf16_smollm2.sh RUNDIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/bf16_smollm2.sh RUNDIR (outside the repository)}
DATA=${JAXEDIT_DATA:-../shared/data}
for dt in float32 bfloat16; do
  .venv/bin/python experiments/edit.py --config=configs/encore_smollm2.py \
    --data_path="$DATA/counterfact/counterfact-edit.json" --num_edits=100 --batch_size=10 \
    --dtype=$dt --stats_samples=600 --eval_batches=false --generation_fraction=0 \
    --workdir="$OUT/$dt"
done
.venv/bin/python scripts/compare_runs.py "$OUT/float32" "$OUT/bfloat16"

#!/usr/bin/env bash
# 20 sequential ENCORE edits on SmolLM2 on one device and on a data:2,model:4 mesh of eight CPU
# devices, then the comparison (WORKSPACE.md, "Device mesh"). Resumable: rerun to continue.
# Usage: scripts/mesh_smollm2.sh RUNDIR (outside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/mesh_smollm2.sh RUNDIR (outside the repository)}
DATA=${JAXEDIT_DATA:-../shared/data}
run() {  # $1 = run name, then extra flags
  local name=$1; shift
  .venv/bin/python experiments/edit.py --config=configs/encore_smollm2.py \
    --data_path="$DATA/counterfact/counterfact-edit.json" --num_edits=20 --batch_size=10 \
    --stats_samples=600 --eval_batches=false --final_fraction=1 --generation_fraction=0 \
    --workdir="$OUT/$name" "$@"
}
run single
XLA_FLAGS=--xla_force_host_platform_device_count=8 run mesh_2x4 --mesh=data:2,model:4
PYTHONPATH=. .venv/bin/python scripts/compare_runs.py "$OUT/single" "$OUT/mesh_2x4"

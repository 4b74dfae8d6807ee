#!/usr/bin/env bash
# The issue-4 reproduction on SmolLM2-135M: 1,000 sequential CounterFact edits in batches of 100 for
# MEMIT (sequential), MEMIT+MPES, MEMIT+norm, ENCORE and AlphaEdit; downstream tasks every 200 edits;
# final ES/PS/NS/S on all 1,000 edited records and GE on a seeded 20 %. Downstream tasks: SST-2, RTE and
# MMLU, where the unedited model is above chance (on MRPC, CoLA and NLI it answers one class: f1 0.333,
# MCC 0, in baseline.json), so only those can show degradation; TASKS=... overrides. Every run is resumable: rerun
# this script after an interruption and it continues where each run stopped (finished runs are skipped).
#
#   bash scripts/repro_smollm2.sh [RUNS_DIR]        (default: ../runs/repro_smollm2)
#   then: .venv/bin/python experiments/summarize.py --runs="$RUNS_DIR/*" --out=experiments/results/repro_smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-../runs/repro_smollm2}
NUM=${NUM_EDITS:-1000}
DATA=${JAXEDIT_DATA:-../shared/data}
mkdir -p "$RUNS"
common=(--data_path="$DATA/counterfact/counterfact-edit.json" --num_edits="$NUM" --batch_size=100
        --downstream=${TASKS:-sst2,rte,mmlu} --downstream_every=2 --downstream_tests=100
        --final_fraction=1.0 --generation_fraction=0.2 --activation_texts=32)
# Order: the paper's main comparison (ENCORE, MEMIT, AlphaEdit) first, then the two ablations.
for run in encore:encore memit:memit_seq alphaedit:alphaedit memit_mpes:memit_mpes memit_norm:memit_norm; do
  name=${run%%:*}; cfg=${run##*:}
  [[ -f "$RUNS/$name/final.json" ]] && { echo "$name: done"; continue; }
  base=()
  [[ $name != encore && -f "$RUNS/encore/baseline.json" ]] && base=(--baseline="$RUNS/encore/baseline.json")
  echo "== $name ($(date))"
  .venv/bin/python experiments/edit.py --config="configs/${cfg}_smollm2.py" "${common[@]}" "${base[@]}" \
      --workdir="$RUNS/$name" 2>&1 | tee -a "$RUNS/$name.log" | grep -E "batch [0-9]+:|downstream after|editing metrics|error" || true
done

#!/usr/bin/env bash
# Issue 13's comparison on SmolLM2-135M: ENCORE and sequential MEMIT (the tuned configs), 1,000
# CounterFact edits (records 0-999) in batches of 100, and every 200 edits (and on the unedited model)
# all the degradation measures: held-out WikiText-2 validation NLL/perplexity and drift from the
# unedited model (KL, top-1 agreement) on 200 paragraphs, the six downstream tasks scored by
# likelihood on the first 300 test items of each (MRPC 248 and RTE 252: all of them; every item of
# all six, 5,965, costs about 11 min per point on 2 cores, so DOWNSTREAM_TESTS=300 keeps a point
# near 4 min) with paired differences and McNemar against the unedited model, and the
# retention of every earlier batch (ES/PS of 20 seeded records each). Final ES/PS/NS/S with CIs on all
# 1,000 records, GE on a seeded 20 %. Resumable: rerun after an interruption (finished runs are skipped).
#
#   bash scripts/degradation_smollm2.sh [RUNS_DIR]     (default: ../runs/degradation_smollm2)
#   then: .venv/bin/python experiments/summarize.py --runs="$RUNS_DIR/*" \
#             --out=experiments/results/degradation_smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-../runs/degradation_smollm2}
NUM=${NUM_EDITS:-1000}
DATA=${JAXEDIT_DATA:-../shared/data}
mkdir -p "$RUNS"
# shellcheck source=scripts/_protocol.sh
source scripts/_protocol.sh  # `common`: the protocol's flags
for run in encore:encore memit:memit_seq; do
  name=${run%%:*}; cfg=${run##*:}
  [[ -f "$RUNS/$name/final.json" ]] && { echo "$name: done"; continue; }
  base=()
  [[ $name != encore && -f "$RUNS/encore/baseline.json" ]] && base=(--baseline="$RUNS/encore/baseline.json")
  echo "== $name ($(date))"
  .venv/bin/python experiments/edit.py --config="configs/${cfg}_smollm2.py" "${common[@]}" "${base[@]}" \
      --workdir="$RUNS/$name" 2>&1 | tee -a "$RUNS/$name.log" \
      | grep -E "batch [0-9]+:|downstream|heldout|retention|editing metrics|error|Error" || true
done

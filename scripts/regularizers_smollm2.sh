#!/usr/bin/env bash
# Issue 14's comparison on SmolLM2-135M: the paper's rival regularizers against ENCORE, with the
# protocol and measures of scripts/degradation_smollm2.sh (1,000 CounterFact edits, records 0-999,
# batches of 100; held-out perplexity and drift, the six downstream tasks by likelihood on <= 300
# items each, retention, every 200 edits; final ES/PS/NS/S/GE with CIs). ENCORE and sequential MEMIT
# are that script's runs (pass its run directory as DEGRADATION); this one adds
#
#   memit_mpes            MEMIT + MPES (early stopping only: the base of the official _prune/_rect)
#   memit_prune           MEMIT + MPES + PRUNE as the official code runs it (after the last batch:
#                         the last batch's update restrained against the weights before it, ln,
#                         added on top)
#   memit_prune_original  MEMIT + MPES + PRUNE as Ma et al. define it (after the last batch: the
#                         total update restrained against the unedited weights, log base 1.2)
#   memit_rect            MEMIT + MPES + RECT (keep the top 40 % of each update by relative change)
#   memit_lti             MEMIT + LTI, teacher read at the official code's positions (the default)
#   memit_lti_aligned     MEMIT + LTI, teacher read at the positions of the prefixed prompts
#   memit_lti_bounded     MEMIT + LTI (official positions) with MEMIT's own search bounds (clamp
#                         0.75, weight decay 0.5, 25 steps) instead of the official LTI JSON's
#                         looser ones (4, 1e-3, 30): separates the KL terms from the looser search
#
# Both PRUNE runs apply PRUNE after the last batch only, so their first 900 edits are memit_mpes's
# own: they are forked from its checkpoint after batch 9 (experiments/edit.py --fork_from, which
# refuses a fork whose first batches would differ) and run the last batch, PRUNE and the last
# evaluation point themselves. Resumable: rerun after an interruption (finished runs are skipped).
#
#   bash scripts/regularizers_smollm2.sh [RUNS_DIR] [DEGRADATION_DIR]
#        (defaults: ../runs/regularizers_smollm2, ../runs/degradation_smollm2)
#   then: .venv/bin/python experiments/summarize.py \
#             --runs="$DEGRADATION/encore,$DEGRADATION/memit,$RUNS/*" \
#             --out=experiments/results/regularizers_smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-../runs/regularizers_smollm2}
DEG=${2:-../runs/degradation_smollm2}
NUM=${NUM_EDITS:-1000}
DATA=${JAXEDIT_DATA:-../shared/data}
ONLY=${ONLY:-}  # e.g. ONLY=memit_lti,memit_rect runs just those
mkdir -p "$RUNS"
# shellcheck source=scripts/_protocol.sh
source scripts/_protocol.sh  # `common`: the protocol's flags
last=$(( (NUM + 99) / 100 - 1 ))  # the fork point: every batch but the last
runs=(
  "memit_mpes|memit_mpes|"
  "memit_prune|memit_prune|--fork_from=$RUNS/memit_mpes --fork_at=$last"
  "memit_prune_original|memit_prune_original|--fork_from=$RUNS/memit_mpes --fork_at=$last"
  "memit_lti|memit_lti|"
  "memit_rect|memit_rect|"
  "memit_lti_aligned|memit_lti|--config.search.teacher_positions=aligned --label=MEMIT+LTI(aligned)"
  "memit_lti_bounded|memit_lti|--config.search.clamp_norm_factor=0.75 --config.search.weight_decay=0.5 --config.search.num_steps=25 --label=MEMIT+LTI(MEMIT-bounds)"
)
for entry in "${runs[@]}"; do
  IFS='|' read -r name cfg extra <<< "$entry"
  [[ -n $ONLY && ",$ONLY," != *",$name,"* ]] && continue
  [[ -f "$RUNS/$name/final.json" ]] && { echo "$name: done"; continue; }
  base=()
  [[ -f "$DEG/encore/baseline.json" && $extra != *fork_from* ]] && base=(--baseline="$DEG/encore/baseline.json")
  # shellcheck disable=SC2086  # $extra holds whole flags
  [[ -d "$RUNS/$name" ]] && extra=$(sed 's/--fork_from=[^ ]*//; s/--fork_at=[^ ]*//' <<< "$extra")  # resumed: no new fork
  echo "== $name ($(date))"
  # shellcheck disable=SC2086
  .venv/bin/python experiments/edit.py --config="configs/${cfg}_smollm2.py" "${common[@]}" "${base[@]}" \
      $extra --workdir="$RUNS/$name" 2>&1 | tee -a "$RUNS/$name.log" \
      | grep -E "batch [0-9]+:|forked|downstream after|held-out after|editing metrics|error|Error" || true
  [[ -f "$RUNS/$name/final.json" ]] || { echo "$name: did not finish (see $RUNS/$name.log)"; exit 1; }
done

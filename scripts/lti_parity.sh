#!/usr/bin/env bash
# The LTI parity check of issue 14: jaxedit's official-mode LTI search against the official
# repository's MEMIT_lti `compute_z`, on SmolLM2-135M, on CounterFact records the golden fixtures and
# the tuning never used. Outside the test suite: it needs the official code and PyTorch.
#
#   bash scripts/lti_parity.sh OFFICIAL WORK [START] [NUM]
#
# OFFICIAL  a checkout, or a bare git directory, of scalable-model-editing/knowledge-editing-regularization
#           (checked at commit 6e3ba9a)
# WORK      a scratch directory outside the repository; steps already done there are skipped
# START NUM the records of counterfact-edit.json to search (default 100 20: case ids 229..275)
# F64=ID,.. also run the official code in float64 for these case ids (the rounding reference)
#
# Steps: copy the official code to WORK/official and apply scripts/lti_parity/official.patch
# (CPU instead of CUDA, record the stop step, decoder-layer outputs of transformers >= 4.5x); a venv
# WORK/venv with torch 2.13.0 (CPU); the inputs (scripts/lti_parity/make_inputs.py); jaxedit's run
# (experiments/edit.py --hparams_json --templates --dump_dir, one batch); the official search
# (run_official.py); the comparison (compare.py -> WORK/compare.json and its table).
set -euo pipefail
cd "$(dirname "$0")/.."
OFFICIAL=$1
WORK=$2
START=${3:-100}
NUM=${4:-20}
SHARED=${JAXEDIT_SHARED:-../shared}
HERE=scripts/lti_parity
PY=.venv/bin/python
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
if [[ ! -d $WORK/official ]]; then
  rm -rf "$WORK/official.tmp" && mkdir "$WORK/official.tmp"
  if [[ -f $OFFICIAL/memit_lti/compute_z.py ]]; then
    cp -r "$OFFICIAL"/. "$WORK/official.tmp"
  else
    git --git-dir="$OFFICIAL" archive HEAD | tar -x -C "$WORK/official.tmp"
  fi
  patch -s -d "$WORK/official.tmp" -p1 < "$HERE/official.patch"
  mv "$WORK/official.tmp" "$WORK/official"
fi
if [[ ! -x $WORK/venv/bin/python ]]; then
  python3.11 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q torch==2.13.0 transformers==5.24.0 gguf==0.19.0 accelerate \
    numpy pyyaml tqdm
fi
"$PY" "$HERE/make_inputs.py" "$WORK/official" "$SHARED" "$WORK" "$START" "$NUM"
if [[ ! -f $WORK/jaxedit_dump/batch_000.npz ]]; then
  rm -rf "$WORK/jaxedit_run" "$WORK/jaxedit_dump"
  "$PY" experiments/edit.py --hparams_json="$WORK/memit_lti_smollm2.json" --method=MEMIT_seq \
    --model=smollm2-135m --requests="$WORK/requests.json" --templates="$WORK/templates.json" \
    --batch_size="$NUM" --evaluate=false --workdir="$WORK/jaxedit_run" \
    --dump_dir="$WORK/jaxedit_dump" > "$WORK/jaxedit.log" 2>&1
fi
if [[ ! -f $WORK/official_z.npz ]]; then
  WORK=$WORK "$WORK/venv/bin/python" "$HERE/run_official.py" > "$WORK/official.log" 2>&1
fi
if [[ -n ${F64:-} && ! -f $WORK/official_z_f64.npz ]]; then
  WORK=$WORK DTYPE=float64 ONLY=$F64 OUT=official_z_f64.npz \
    "$WORK/venv/bin/python" "$HERE/run_official.py" > "$WORK/official_f64.log" 2>&1
fi
"$PY" "$HERE/compare.py" "$WORK" "$WORK/compare.json"

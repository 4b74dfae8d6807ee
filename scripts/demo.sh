#!/usr/bin/env bash
# Sets everything up (venv, install, SmolLM2 fetch) and runs the main job on its embedded default.
# Extra arguments are passed to experiments/demo.py (e.g. --model=path/to/hf_dir).
# --verbose also shows pip's output while the venv is set up (as JAXEDIT_VERBOSE=1 does).
for arg in "$@"; do
  case "$arg" in --verbose | --verbose=true) export JAXEDIT_VERBOSE=1 ;; esac
done
EXTRAS="experiments" source "$(dirname "$0")/_venv.sh"
exec "$PY" experiments/demo.py "$@"

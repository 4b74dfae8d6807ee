#!/usr/bin/env bash
# Sets everything up (venv, install, SmolLM2 fetch) and runs the main job on its embedded default.
# Extra arguments are passed to experiments/demo.py (e.g. --model=path/to/hf_dir).
EXTRAS="experiments" source "$(dirname "$0")/_venv.sh"
exec "$PY" experiments/demo.py "$@"

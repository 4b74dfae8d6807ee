#!/usr/bin/env bash
# Sets up the venv with the test extras (pytest, the CPU torch wheel for parity tests) and runs the
# default test suite (slow tests excluded; run them with: scripts/test.sh -m slow).
EXTRAS="test,parity,dev" source "$(dirname "$0")/_venv.sh"
exec "$PY" -m pytest "$@"

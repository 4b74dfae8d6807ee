#!/usr/bin/env bash
# The at-width benchmark (WORKSPACE.md, "Device mesh"): a Llama-3-8B-shaped model with 4 blocks in
# bf16, ENCORE, on a data:1,model:8 mesh of eight CPU devices and on one device, each beside its
# memory plan. Writes experiments/results/width/width_{8dev,1dev}.json. One at a time (memory).
set -euo pipefail
cd "$(dirname "$0")/../experiments"
../.venv/bin/python bench_width.py --mesh=data:1,model:8 --out=results/width/width_8dev.json "$@"
../.venv/bin/python bench_width.py --mesh= --out=results/width/width_1dev.json "$@"

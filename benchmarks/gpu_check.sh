#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA and bf16 paths on random Pythia-1.4b- and 2.8b-shaped models,
# offline, at most about 8 minutes on one GPU; writes benchmarks/out/gpu_check.json. On a machine without a GPU:
#   bash benchmarks/gpu_check.sh --smoke      # the same stages at tiny shapes on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3  # a GPU machine's own Python with PyTorch (no .venv there): the library from lib/
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"

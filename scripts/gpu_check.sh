#!/usr/bin/env bash
# GPU checks for a machine with CUDA GPUs (see README, "What has run on a GPU").
# Chained training per engine setting: seconds per step, peak memory, the PPO ratio at step 1.
# Extra arguments go to scripts/gpu_check_train.py (e.g. --model, --dataset, --steps).
set -euo pipefail
cd "$(dirname "$0")/.."
default_python=python
[ -x .venv/bin/python ] && default_python=.venv/bin/python
python="${PYTHON:-$default_python}"
HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" "$python" scripts/gpu_check_train.py "$@"

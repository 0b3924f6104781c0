#!/usr/bin/env bash
# GPU checks for a machine with CUDA GPUs (see README, "What has run on a GPU"). Three parts:
#
#   train   chained training per engine setting (scripts/gpu_check_train.py): seconds per step,
#           the update's peak memory and the PPO ratio at step 1 for the HF engine, vLLM
#           colocated with sleep mode (when installed) and, with two GPUs, DDP and FSDP.
#   replay  the CUDA-only exactness tests (FlexAttention's packed logprobs equal per-path
#           logprobs in float32), then one `treerpo bench replay` table: the packed update with a
#           block-sparse FlexAttention tree mask against the paths and groups baselines, timed
#           under bf16 autocast at Qwen2.5-0.5B shapes (24 x 896, 151,936 vocab), 4 trees.
#   follow  `train --follow` and one `generate --follow-policy` worker (vLLM when installed) on
#           one GPU for a few steps (scripts/gpu_check_follow.py): staleness, waits, PPO ratio.
#
#     scripts/gpu_check.sh                          # both parts
#     scripts/gpu_check.sh train --model Qwen/Qwen2.5-0.5B-Instruct --dataset openai/gsm8k
#     PYTHON=.venv/bin/python scripts/gpu_check.sh replay --num-trees 8
#
# Arguments after the part's name go to that part.
set -euo pipefail
cd "$(dirname "$0")/.."
default_python=python
[ -x .venv/bin/python ] && default_python=.venv/bin/python
PYTHON="${PYTHON:-$default_python}"
part="${1:-all}"
[ $# -gt 0 ] && shift

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU: this check needs one")'

if [ "$part" = train ] || [ "$part" = all ]; then
  "$PYTHON" scripts/gpu_check_train.py "$@"
fi
if [ "$part" = follow ] || [ "$part" = all ]; then
  "$PYTHON" scripts/gpu_check_follow.py "$@"
fi
if [ "$part" = replay ] || [ "$part" = all ]; then
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_training_packing.py \
      tests/test_tree_attention.py -k cuda
  "$PYTHON" -m treerpo.cli bench replay --device cuda --bf16 \
      --attn-implementation flex_attention --num-trees 4 \
      --hidden-size 896 --layers 24 --vocab-size 151936 "$@"
fi

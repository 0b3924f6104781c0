#!/usr/bin/env bash
# GPU check for issue 17: the replay ratios with FlexAttention and bf16 autocast on one CUDA GPU.
#
# Run from the repository root on a machine with a CUDA GPU and treerpo installed:
#
#     scripts/gpu_check.sh                 # Qwen2.5-0.5B shapes (24 x 896, 151,936 vocab), 4 trees
#     PYTHON=.venv/bin/python scripts/gpu_check.sh --num-trees 8
#
# It first runs the CUDA-only exactness tests (FlexAttention's packed logprobs equal per-path
# logprobs in float32), then prints one `treerpo bench replay` table: the packed update with a
# block-sparse FlexAttention tree mask against the paths and groups baselines (both sdpa), timed
# under bf16 autocast, exactness checked in float32, peak memory from the CUDA allocator.
# Extra arguments go to `bench replay` (e.g. --attn-implementation tree, --layers 8).
set -euo pipefail

PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU: this check needs one")'

"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_training_packing.py \
    tests/test_tree_attention.py -k cuda

exec "$PYTHON" -m treerpo.cli bench replay --device cuda --bf16 \
    --attn-implementation flex_attention --num-trees 4 \
    --hidden-size 896 --layers 24 --vocab-size 151936 "$@"

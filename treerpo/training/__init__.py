"""Training: tree-packed forward and the TreeRPO (PPO-clipped, sibling-group) loss.

- `packing`: a tree as one packed sequence (tree attention mask, path position ids, targets).
- `packed_forward`: per-token logprobs of packed trees through a Hugging Face causal LM.
- `loss`: the PPO-clipped surrogate aggregated per sibling group (the algorithm's docstring).
- `naive`: the per-sibling-group reference the packed path is tested and benchmarked against.
"""

from treerpo.training.loss import aggregation_weights, ppo_tree_loss
from treerpo.training.naive import naive_token_logprobs, naive_tree_loss
from treerpo.training.packed_forward import packed_token_logprobs, packed_tree_loss
from treerpo.training.packing import (
    PackedSequence,
    PackingStats,
    TrainedTokenFields,
    dense_attention_mask,
    pack_tree,
    packing_stats,
    trained_token_fields,
    tree_mask_mod,
)

__all__ = [
    "PackedSequence",
    "PackingStats",
    "TrainedTokenFields",
    "aggregation_weights",
    "dense_attention_mask",
    "naive_token_logprobs",
    "naive_tree_loss",
    "pack_tree",
    "packed_token_logprobs",
    "packed_tree_loss",
    "packing_stats",
    "ppo_tree_loss",
    "trained_token_fields",
    "tree_mask_mod",
]

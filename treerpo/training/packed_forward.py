"""The tree-packed forward: per-token logprobs of whole trees, each unique token forwarded once.

`packed_token_logprobs` runs a Hugging Face causal LM on each `PackedSequence` with its
`position_ids` and the tree attention mask, and returns, per trained token, the logprob under
log_softmax(logits / logprob_temperature), computed in float32 whatever the model's dtype. That is
the transform the engines store as behaviour logprobs (see `treerpo.training.loss`).

How the mask reaches the model (transformers 5.x, checked on 5.24): `create_causal_mask` returns
an attention mask that is already 4-D `(batch, 1, q_len, kv_len)` as-is ("custom mask"), and the
attention function receives it unchanged. What it must look like depends on the attention
implementation in `model.config._attn_implementation`:

- "tree" (the training default on CPU, `treerpo.engines.tree_attention`): no dense mask; the
  pack's tile layout goes to the model as the `tree_layout` keyword, with a zero-memory
  placeholder as the 4-D mask, and attention costs what each token can see;
- "flex_attention" (the training default on CUDA): a FlexAttention `BlockMask` built with
  `create_block_mask` from a `mask_mod` over the pack's compact representation (segment ids and
  the ancestor matrix), so masked-out blocks (other branches of the tree) are skipped rather
  than computed, and memory grows with the kept blocks, not L^2. torch's FlexAttention has no
  CPU backward, so this path trains only on CUDA (`scripts/gpu_check.sh`); on CPU the tests run
  its forward uncompiled;
- "sdpa": a dense boolean `(1, 1, L, L)` mask, True = attend, handed to
  `torch.nn.functional.scaled_dot_product_attention` (every L^2 pair is computed);
- "eager": the same as an additive float mask (0 / most negative value), added to the scores.

Flash-attention implementations take no arbitrary mask and are refused with a clear error.

Only the rows that predict a trained token go through the LM head (`logits_to_keep` with the
predictor indices), so the (L, V) logits of the prompt are never materialised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from treerpo.engines.tree_attention import (
    TREE_ATTENTION,
    tree_attention_layout,
    tree_placeholder_mask,
)
from treerpo.training.loss import Aggregation, ppo_tree_loss
from treerpo.training.packing import (
    PackedSequence,
    dense_attention_mask,
    pack_tree,
    trained_token_fields,
    tree_mask_mod,
)
from treerpo.trees import Tree

TREE_MASK_IMPLEMENTATIONS = (TREE_ATTENTION, "flex_attention", "sdpa", "eager")


def packed_token_logprobs(
    *, model, packs: list[PackedSequence], logprob_temperature: float = 1.0
) -> list[Tensor]:
    """Per pack, the logprob of each trained token, in the pack's target order: (N,) float32."""
    if logprob_temperature <= 0.0:
        raise ValueError(f"logprob_temperature must be positive, got {logprob_temperature}")
    device = model.device
    results = []
    for pack in packs:
        input_ids = pack.input_ids.to(device)  # (L,)
        predictor_indices = pack.predictor_indices.to(device)  # (N,)
        output = model(
            input_ids=input_ids[None],  # (1, L)
            position_ids=pack.position_ids.to(device)[None],  # (1, L)
            logits_to_keep=predictor_indices,
            use_cache=False,
            **_tree_attention_arguments(model=model, pack=pack, device=device),
        )
        target_ids = input_ids[pack.trained_token_indices.to(device)]  # (N,)
        results.append(target_token_logprobs(logits=output.logits[0], target_ids=target_ids,
                                             logprob_temperature=logprob_temperature))  # (N,)
    return results


def target_token_logprobs(
    *, logits: Tensor, target_ids: Tensor, logprob_temperature: float | Tensor = 1.0
) -> Tensor:
    """log_softmax(logits / logprob_temperature)[target] in float32: (N, V), (N,) -> (N,).

    Written as a cross-entropy, whose backward is one fused pass over the (N, V) logits (softmax
    minus one-hot) instead of separate gather, logsumexp and division backwards: with a 32k
    vocabulary those (N, V) passes cost as much as a few decoder layers. A temperature of 1 skips
    the division. `logprob_temperature` may be a scalar or (N,) per token.
    """
    logits = logits.float()  # (N, V)
    if isinstance(logprob_temperature, Tensor):
        logits = logits / logprob_temperature[:, None]  # (N, V)
    elif logprob_temperature != 1.0:
        logits = logits / logprob_temperature  # (N, V)
    return -torch.nn.functional.cross_entropy(logits, target_ids, reduction="none")  # (N,)


def packed_tree_loss(
    *,
    model,
    trees: list[Tree],
    max_packed_tokens: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "group",
    ref_model=None,
    beta: float = 0.0,
    packs_per_tree: list | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The TreeRPO loss of a batch of scored trees from one packed forward per (sub-)tree.

    `packs_per_tree`: each tree's `pack_tree(tree, max_packed_tokens)`, when the caller has
    packed them already (the trainer does, to count forwards under DDP/FSDP).

    The logprob transform is each tree's own `logprob_temperature` (the one its behaviour logprobs
    were stored under). Tokens of nodes without an advantage are dropped. `ref_model` is needed
    only when beta > 0; its logprobs come from the same packs, without gradient. A batch without
    any trained token gives a zero loss that is not attached to the model (nothing to backprop).
    """
    if beta > 0.0 and ref_model is None:
        raise ValueError("beta > 0 needs a frozen reference model")
    new_parts, behaviour_parts, advantage_parts, group_parts, ref_parts = [], [], [], [], []
    visit_parts = []
    group_id_base = 0
    if packs_per_tree is not None and len(packs_per_tree) != len(trees):
        raise ValueError("packs_per_tree: one list of packs per tree")
    for tree_number, tree in enumerate(trees):
        visit_shares = torch.tensor(tree.group_visit_shares(), dtype=torch.float32)  # (nodes,)
        packs = (packs_per_tree[tree_number] if packs_per_tree is not None
                 else pack_tree(tree=tree, max_packed_tokens=max_packed_tokens))
        new_logprobs = packed_token_logprobs(
            model=model, packs=packs, logprob_temperature=tree.logprob_temperature
        )
        ref_logprobs = None
        if beta > 0.0:
            with torch.no_grad():
                ref_logprobs = packed_token_logprobs(
                    model=ref_model, packs=packs, logprob_temperature=tree.logprob_temperature
                )
        for pack_number, pack in enumerate(packs):
            fields = trained_token_fields(tree=tree, pack=pack, group_id_base=group_id_base)
            keep = fields.has_advantage.to(new_logprobs[pack_number].device)  # (N,)
            new_parts.append(new_logprobs[pack_number][keep])
            behaviour_parts.append(fields.behaviour_logprobs[fields.has_advantage])
            advantage_parts.append(fields.advantages[fields.has_advantage])
            group_parts.append(fields.group_ids[fields.has_advantage])
            visit_parts.append(visit_shares[pack.trained_nodes[fields.has_advantage]])
            if ref_logprobs is not None:
                ref_parts.append(ref_logprobs[pack_number][keep])
        group_id_base += len(tree.nodes)
    device = model.device
    return ppo_tree_loss(
        new_logprobs=_concat(new_parts, device=device),
        behaviour_logprobs=_concat(behaviour_parts, device=device),
        advantages=_concat(advantage_parts, device=device),
        group_ids=_concat(group_parts, device=device, dtype=torch.int64),
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        aggregation=aggregation,
        ref_logprobs=_concat(ref_parts, device=device) if beta > 0.0 else None,
        beta=beta,
        group_visits=_concat(visit_parts, device=device),
    )


def _tree_attention_arguments(*, model, pack: PackedSequence, device: torch.device) -> dict:
    """The model-call keyword arguments that carry the tree attention of `pack` in the form
    `model`'s attention implementation takes (module docstring)."""
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return {"attention_mask": dense_attention_mask(pack=pack, dtype=torch.bool,
                                                       device=device)}  # (1, 1, L, L)
    if implementation == "eager":
        return {"attention_mask": dense_attention_mask(pack=pack, dtype=model.dtype,
                                                       device=device)}  # (1, 1, L, L)
    if implementation == "flex_attention":
        return {"attention_mask": _flex_block_mask(pack=pack, device=device)}
    if implementation == TREE_ATTENTION:
        return {"attention_mask": tree_placeholder_mask(length=pack.num_tokens, device=device),
                "tree_layout": tree_attention_layout(
                    segment_ids=pack.segment_ids,
                    ancestor_or_self=pack.ancestor_or_self).to(device)}
    raise ValueError(
        f"attention implementation {implementation!r} takes no custom tree mask; load the model "
        f"with attn_implementation set to one of {TREE_MASK_IMPLEMENTATIONS}"
    )


def _flex_block_mask(*, pack: PackedSequence, device: torch.device):
    """A sparse FlexAttention `BlockMask` of the tree attention (GPU path, see module docstring)."""
    from torch.nn.attention.flex_attention import create_block_mask

    length = pack.num_tokens
    mask_mod = tree_mask_mod(
        segment_ids=pack.segment_ids.to(device),
        ancestor_or_self=pack.ancestor_or_self.to(device),
    )
    return create_block_mask(mask_mod, B=1, H=None, Q_LEN=length, KV_LEN=length, device=device)


def _concat(parts: list[Tensor], *, device, dtype: torch.dtype = torch.float32) -> Tensor:
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat([part.to(device) for part in parts])

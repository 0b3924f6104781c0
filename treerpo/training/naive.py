"""The straightforward reference: every sibling group forwarded with its whole prefix.

For each parent node, its children are forwarded as one right-padded batch of full sequences
(prompt + ancestors' segments + the child's segment), and each child's tokens are scored with the
logits of the position before them. Shared prefixes are recomputed for every child; nothing about
tree attention or packed targets is involved, so this is the ground truth that the tree-packed
forward is tested against, and the baseline that `treerpo bench replay` times it against.

`naive_tree_loss` also writes out the loss of `treerpo.training.loss` the long way (explicit
loops over sibling groups), so the packed loss is checked against an independent computation.
The logprob transform is the same: float32 log_softmax(logits / logprob_temperature).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from treerpo.training.loss import AGGREGATIONS, Aggregation, aggregation_weights
from treerpo.trees import Tree


def naive_token_logprobs(*, model, tree: Tree, logprob_temperature: float = 1.0) -> list[Tensor]:
    """Per node (indexed like `tree.nodes`), the logprobs of its tokens: (T,) float32.

    The root's entry is empty. One forward per sibling group (its children, right-padded).
    """
    logprobs: list[Tensor] = [torch.zeros(0, device=model.device)] * len(tree.nodes)
    for parent in tree.nodes:
        if parent.children:
            group = _sibling_group_logprobs(
                model=model,
                tree=tree,
                parent_index=parent.index,
                logprob_temperature=logprob_temperature,
            )
            for child_index, child_logprobs in zip(parent.children, group, strict=True):
                logprobs[child_index] = child_logprobs
    return logprobs


def naive_tree_loss(
    *,
    model,
    trees: list[Tree],
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "group",
    ref_model=None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The TreeRPO loss of `trees`, group by group (same definition as `ppo_tree_loss`).

    Uses each tree's `logprob_temperature`; nodes without an advantage are skipped.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    group_losses: list[Tensor] = []  # per group: sum of per-token losses
    group_sizes: list[int] = []
    group_visits: list[float] = []  # per group: leaves below its parent / leaves of its tree
    for tree in trees:
        leaves_below = [0] * len(tree.nodes)
        for node in reversed(tree.nodes[1:]):
            leaves_below[node.index] += 1 if node.is_leaf else 0
            leaves_below[node.parent] += leaves_below[node.index]
        for parent in tree.nodes:
            children = _trained_children(tree, parent.index)
            if not children:
                continue
            new = _sibling_group_logprobs(
                model=model,
                tree=tree,
                parent_index=parent.index,
                logprob_temperature=tree.logprob_temperature,
            )
            new_by_child = dict(zip(parent.children, new, strict=True))
            ref_by_child = {}
            if beta > 0.0:
                with torch.no_grad():
                    ref = _sibling_group_logprobs(
                        model=ref_model,
                        tree=tree,
                        parent_index=parent.index,
                        logprob_temperature=tree.logprob_temperature,
                    )
                ref_by_child = dict(zip(parent.children, ref, strict=True))
            group_sum = torch.zeros((), device=model.device)
            group_size = 0
            for child_index in children:
                child = tree.nodes[child_index]
                new_logprobs = new_by_child[child_index]  # (T,)
                behaviour = torch.from_numpy(child.logprobs).to(new_logprobs)  # (T,)
                token_losses = _clipped_surrogate(
                    new_logprobs=new_logprobs, behaviour=behaviour,
                    advantages=float(child.advantage), epsilon=epsilon,
                    epsilon_high=epsilon_high)  # (T,)
                if beta > 0.0:
                    ref_minus_new = ref_by_child[child_index] - new_logprobs  # (T,)
                    token_losses = token_losses + beta * (
                        torch.exp(ref_minus_new) - ref_minus_new - 1.0
                    )  # (T,)
                group_sum = group_sum + token_losses.sum()
                group_size += child.num_tokens
            group_losses.append(group_sum)
            group_sizes.append(group_size)
            group_visits.append(leaves_below[parent.index] / leaves_below[0])
    num_tokens = sum(group_sizes)
    if aggregation == "group":
        loss = sum(s / n for s, n in zip(group_losses, group_sizes, strict=True)) / max(
            len(group_losses), 1
        )
    elif aggregation == "leaf":
        loss = sum(v * s / n for s, n, v in zip(group_losses, group_sizes, group_visits,
                                                 strict=True)) / sum(group_visits)
    else:
        loss = sum(group_losses) / max(num_tokens, 1)
    loss = torch.as_tensor(loss, device=model.device)
    return loss, {"num_tokens": float(num_tokens), "num_groups": float(len(group_losses))}


def _trained_children(tree: Tree, parent_index: int) -> list[int]:
    """The children of a node that are trained: an advantage and at least one token."""
    return [i for i in tree.nodes[parent_index].children
            if tree.nodes[i].advantage is not None and tree.nodes[i].num_tokens > 0]


def _clipped_surrogate(*, new_logprobs: Tensor, behaviour: Tensor, advantages: Tensor | float,
                       epsilon: float, epsilon_high: float) -> Tensor:
    """-min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) per token: (T,)."""
    ratio = torch.exp(new_logprobs - behaviour)  # (T,)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)  # (T,)
    return -torch.minimum(ratio * advantages, clipped * advantages)  # (T,)


def _sibling_group_logprobs(
    *, model, tree: Tree, parent_index: int, logprob_temperature: float
) -> list[Tensor]:
    """Logprobs of each child's tokens of `parent_index`, from one batch of full paths."""
    prefix = np.concatenate([node.token_ids for node in tree.path(parent_index)])  # (P,)
    children = [tree.nodes[i] for i in tree.nodes[parent_index].children]
    sequences = [np.concatenate([prefix, child.token_ids]) for child in children]
    longest = max(len(sequence) for sequence in sequences)
    # Right padding: under causal attention real tokens never see the pads after them.
    input_ids = torch.zeros((len(children), longest), dtype=torch.int64)  # (B, T)
    attention_mask = torch.zeros((len(children), longest), dtype=torch.int64)  # (B, T)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.from_numpy(sequence.astype(np.int64))
        attention_mask[row, : len(sequence)] = 1
    output = model(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        use_cache=False,
    )
    logprobs = torch.log_softmax(output.logits.float() / logprob_temperature, dim=-1)  # (B, T, V)
    results = []
    for row, child in enumerate(children):
        start = len(prefix)
        positions = torch.arange(start - 1, start - 1 + child.num_tokens, device=model.device)
        targets = input_ids[row, start : start + child.num_tokens].to(model.device)  # (T,)
        results.append(logprobs[row, positions, targets])  # (T,)
    return results


def naive_tree_update(
    *,
    model,
    trees: list[Tree],
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "group",
) -> float:
    """`naive_tree_loss`'s loss and gradient, with one backward per sibling group.

    The same forwards (every child with its whole prefix, a full log-softmax over every position),
    but only one group's graph is alive at a time, as a trainer accumulating gradients would do.
    The per-token weights come from `aggregation_weights` over the whole batch, so the groups'
    losses sum to the batch loss. Gradients accumulate into `model`; returns the batch loss.
    """
    groups = []  # (tree, parent index, trained children)
    group_ids, visits = [], []
    for tree in trees:
        shares = tree.group_visit_shares()
        for parent in tree.nodes:
            children = _trained_children(tree, parent.index)
            if not children:
                continue
            groups.append((tree, parent.index, children))
            tokens = sum(tree.nodes[i].num_tokens for i in children)
            group_ids.append(torch.full((tokens,), len(groups) - 1, dtype=torch.int64))
            visits.append(torch.full((tokens,), shares[children[0]]))
    if not groups:
        return 0.0
    weights = aggregation_weights(group_ids=torch.cat(group_ids), aggregation=aggregation,
                                  group_visits=torch.cat(visits))  # (N,)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    total, offset = 0.0, 0
    for tree, parent_index, children in groups:
        new = dict(zip(tree.nodes[parent_index].children, _sibling_group_logprobs(
            model=model, tree=tree, parent_index=parent_index,
            logprob_temperature=tree.logprob_temperature), strict=True))
        new_logprobs = torch.cat([new[i] for i in children])  # (n,)
        behaviour = torch.from_numpy(np.concatenate(
            [tree.nodes[i].logprobs for i in children])).to(new_logprobs)  # (n,)
        advantages = torch.cat([torch.full((tree.nodes[i].num_tokens,), float(
            tree.nodes[i].advantage)) for i in children]).to(new_logprobs)  # (n,)
        token_losses = _clipped_surrogate(new_logprobs=new_logprobs, behaviour=behaviour,
                                          advantages=advantages, epsilon=epsilon,
                                          epsilon_high=epsilon_high)  # (n,)
        group_weights = weights[offset: offset + len(new_logprobs)].to(token_losses)  # (n,)
        loss = (group_weights * token_losses).sum()
        loss.backward()
        total += float(loss.detach())
        offset += len(new_logprobs)
    return total

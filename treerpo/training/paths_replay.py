"""The fair baseline of tree-packed replay: every root-to-leaf path in a right-padded batch.

This is what a competent TRL-style trainer does with a tree (DESIGN, "Performance targets"): each
leaf's path (prompt + every segment down to the leaf) is one row of a right-padded batch, the
decoder runs causally over every row, and the LM head and log-softmax run only at the positions
that predict a trained token. Each tree token is trained exactly once, on the first path (in
`tree.leaves()` order) that holds its node, so the loss is the same TreeRPO loss as the packed
update's (`treerpo.training.loss`, per-token weights from `aggregation_weights`) and the gradients
agree. Shared prefixes are forwarded once per path: path tokens / unique tokens is the speed-up
limit of any packing.

`max_batch_tokens` turns on length-bucketed micro-batches: rows sorted by length are grouped so
that rows x longest row stays within the budget, and each micro-batch is forwarded and
backpropagated on its own (its slice of the batch's token weights makes the micro-batch losses
sum to the batch loss). That trims padding and peak memory at the cost of smaller matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from treerpo.training.loss import Aggregation, aggregation_weights, ppo_tree_loss
from treerpo.training.packed_forward import target_token_logprobs
from treerpo.trees import Tree


@dataclass(frozen=True)
class PathRow:
    """One root-to-leaf path and the tokens trained on it (N = trained tokens of the row)."""

    input_ids: np.ndarray  # (T,) int64, the whole path
    predictor_positions: np.ndarray  # (N,) int64, row position whose logits predict the token
    target_ids: np.ndarray  # (N,) int64
    behaviour_logprobs: np.ndarray  # (N,) float32
    advantages: np.ndarray  # (N,) float32
    group_ids: np.ndarray  # (N,) int64, unique across the batch's trees
    group_visits: np.ndarray  # (N,) float32, visitation share of the token's group
    nodes: np.ndarray  # (N,) int64, tree node of each trained token
    offsets: np.ndarray  # (N,) int64, offset in its node
    tree_index: int
    logprob_temperature: float


def path_rows(*, trees: list[Tree]) -> list[PathRow]:
    """The root-to-leaf rows of `trees`, each trained token on exactly one row.

    Tokens of nodes without an advantage carry no loss and are not trained (as in the packed
    update); a leaf whose path trains nothing still yields a row (a trainer would forward it).
    """
    rows = []
    group_id_base = 0
    for tree_index, tree in enumerate(trees):
        visit_shares = tree.group_visit_shares()
        trained_nodes: set[int] = set()
        for leaf in tree.leaves():
            path = tree.path(leaf.index)
            input_ids = np.concatenate([node.token_ids for node in path]).astype(np.int64)
            predictors, targets, behaviour, advantages, groups, visits = [], [], [], [], [], []
            nodes, offsets = [], []
            start = 0
            for node in path:
                length = node.num_tokens
                if (node.parent is not None and node.index not in trained_nodes
                        and node.advantage is not None and length > 0):
                    trained_nodes.add(node.index)
                    positions = np.arange(start, start + length, dtype=np.int64)
                    predictors.append(positions - 1)
                    targets.append(input_ids[positions])
                    behaviour.append(node.logprobs.astype(np.float32))
                    advantages.append(np.full(length, node.advantage, dtype=np.float32))
                    groups.append(np.full(length, group_id_base + node.parent, dtype=np.int64))
                    visits.append(np.full(length, visit_shares[node.index], dtype=np.float32))
                    nodes.append(np.full(length, node.index, dtype=np.int64))
                    offsets.append(np.arange(length, dtype=np.int64))
                start += length

            def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
                return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

            rows.append(PathRow(
                input_ids=input_ids,
                predictor_positions=cat(predictors, np.int64),
                target_ids=cat(targets, np.int64),
                behaviour_logprobs=cat(behaviour, np.float32),
                advantages=cat(advantages, np.float32),
                group_ids=cat(groups, np.int64),
                group_visits=cat(visits, np.float32),
                nodes=cat(nodes, np.int64),
                offsets=cat(offsets, np.int64),
                tree_index=tree_index,
                logprob_temperature=tree.logprob_temperature,
            ))
        group_id_base += len(tree.nodes)
    return rows


def micro_batches(*, rows: list[PathRow], max_batch_tokens: int | None) -> list[list[int]]:
    """Row indices per micro-batch: all rows at once, or longest-first groups whose padded size
    (rows x longest row) stays within `max_batch_tokens` (a longer row goes alone)."""
    if max_batch_tokens is None:
        return [list(range(len(rows)))]
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * len(rows[batches[-1][0]].input_ids) \
                <= max_batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def path_token_logprobs(*, model, rows: list[PathRow]) -> Tensor:
    """Logprobs of the rows' trained tokens, rows concatenated in order: (N,) float32.

    One right-padded causal forward of the decoder; the LM head runs only on the N predictor
    rows, and the log-softmax is float32 of logits / each tree's logprob temperature (the packed
    forward's `target_token_logprobs`).
    """
    device = model.device
    longest = max(len(row.input_ids) for row in rows)
    input_ids = torch.zeros((len(rows), longest), dtype=torch.int64)  # (B, T)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.int64)  # (B, T)
    for number, row in enumerate(rows):
        input_ids[number, : len(row.input_ids)] = torch.from_numpy(row.input_ids)
        attention_mask[number, : len(row.input_ids)] = 1
    hidden = model.base_model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).last_hidden_state  # (B, T, W)
    batch_index = torch.cat([
        torch.full((len(row.predictor_positions),), number, dtype=torch.int64)
        for number, row in enumerate(rows)
    ]).to(device)  # (N,)
    positions = torch.from_numpy(np.concatenate([r.predictor_positions for r in rows])).to(device)
    temperatures = torch.from_numpy(np.concatenate([
        np.full(len(r.target_ids), r.logprob_temperature, dtype=np.float32) for r in rows
    ])).to(device)  # (N,)
    targets = torch.from_numpy(np.concatenate([r.target_ids for r in rows])).to(device)  # (N,)
    logits = model.get_output_embeddings()(hidden[batch_index, positions])  # (N, V)
    if bool((temperatures == 1.0).all()):
        return target_token_logprobs(logits=logits, target_ids=targets)  # (N,)
    return target_token_logprobs(logits=logits, target_ids=targets,
                                 logprob_temperature=temperatures)  # (N,)


def paths_update(
    *,
    model,
    trees: list[Tree],
    max_batch_tokens: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "group",
) -> float:
    """Forward and backpropagate the TreeRPO loss of `trees` path by path (module docstring);
    gradients accumulate into `model`'s parameters. Returns the batch loss."""
    rows = path_rows(trees=trees)

    def cat(field: str, dtype=None) -> Tensor:
        values = np.concatenate([getattr(row, field) for row in rows])
        return torch.from_numpy(values if dtype is None else values.astype(dtype))

    weights = aggregation_weights(group_ids=cat("group_ids"), aggregation=aggregation,
                                  group_visits=cat("group_visits"))  # (N_total,)
    row_starts = np.concatenate([[0], np.cumsum([len(r.target_ids) for r in rows])])
    total = 0.0
    for batch in micro_batches(rows=rows, max_batch_tokens=max_batch_tokens):
        batch_rows = [rows[i] for i in batch]
        if not any(len(row.target_ids) for row in batch_rows):
            continue
        token_slice = torch.from_numpy(np.concatenate([
            np.arange(row_starts[i], row_starts[i + 1]) for i in batch
        ]))  # (n,)
        new_logprobs = path_token_logprobs(model=model, rows=batch_rows)  # (n,)
        device = new_logprobs.device
        loss, _ = ppo_tree_loss(
            new_logprobs=new_logprobs,
            behaviour_logprobs=torch.from_numpy(
                np.concatenate([r.behaviour_logprobs for r in batch_rows])).to(device),
            advantages=torch.from_numpy(
                np.concatenate([r.advantages for r in batch_rows])).to(device),
            group_ids=torch.from_numpy(np.concatenate([r.group_ids for r in batch_rows])).to(
                device),
            epsilon=epsilon,
            epsilon_high=epsilon_high,
            token_weights=weights[token_slice].to(device),
        )
        loss.backward()
        total += float(loss.detach())
    return total

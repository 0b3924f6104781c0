"""Tree packing: every token of a reasoning tree in one sequence, forwarded once.

A tree is laid out as one sequence of *segments* (the root's prompt tokens, then every node's
segment) in depth-first pre-order, so parents come before children and every subtree is
contiguous. Attention follows the tree instead of the sequence:

- a token attends to itself, to earlier tokens of its own segment and to every token of its
  ancestors' segments, never to a sibling's or cousin's tokens;
- position ids restart along each path: a node's first position is its parent's last position + 1
  (the root starts at 0), so every token sees exactly the positions it saw during generation.

With that mask and those positions the logits at a packed index equal the logits of the same token
forwarded on its own root-to-node path. The *targets* are the one place where packing differs from
a plain sequence: the token at packed index i is predicted by the logits at packed index i - 1,
except a node's first token, which is predicted by the logits at its parent's **last** token, which
is not adjacent in the packed sequence (it sits before the parent's other descendants).

Trained tokens are every token of every non-root node, the first one included (the token siblings
differ in). Which of them carry a loss (a node with no advantage, e.g. a single child, carries
none) is the caller's choice: the pack only says which node and which offset each target is.

A tree longer than `max_packed_tokens` is split into sub-packs. Each sub-pack is a rooted subtree:
it repeats the ancestor path of the nodes it trains as context only, and every trained token
appears in exactly one sub-pack. The split is greedy over the pre-order, which keeps subtrees
together and so repeats little context.

The attention structure is kept compact (`segment_ids` per token and an ancestor-or-self matrix
per segment): `dense_attention_mask` expands it into the `(1, 1, L, L)` mask that sdpa and eager
attention take, and `tree_mask_mod` turns it into a FlexAttention `mask_mod` for a sparse
`BlockMask` on GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from treerpo.trees import Tree


@dataclass(frozen=True)
class PackedSequence:
    """One packed (sub-)tree: tokens, positions, tree attention and targets (all on CPU).

    L = packed tokens, S = segments (tree nodes in this pack), N = trained tokens.
    """

    input_ids: Tensor  # (L,) int64
    position_ids: Tensor  # (L,) int64, restarting along each root-to-node path
    segment_ids: Tensor  # (L,) int64, index into `segment_nodes` of each token's segment
    segment_nodes: Tensor  # (S,) int64, tree node index of each segment, parents first
    segment_trained: Tensor  # (S,) bool, False for context-only segments (root, repeated ancestors)
    ancestor_or_self: Tensor  # (S, S) bool, [s, t]: segment t is segment s or one of its ancestors
    trained_token_indices: Tensor  # (N,) int64, packed index of each trained token
    predictor_indices: Tensor  # (N,) int64, packed index whose logits predict that token
    trained_nodes: Tensor  # (N,) int64, tree node index of each trained token
    trained_offsets: Tensor  # (N,) int64, offset of each trained token in its node's segment

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_trained_tokens(self) -> int:
        return int(self.trained_token_indices.shape[0])


@dataclass(frozen=True)
class PackingStats:
    """How much a tree's packing forwards compared with its unique tokens."""

    num_packs: int
    packed_tokens: int  # sum of L over the packs: tokens actually forwarded
    unique_tokens: int  # sum of node lengths, root included: tokens the tree holds
    trained_tokens: int  # sum of N over the packs: every non-root token exactly once

    @property
    def packed_per_unique(self) -> float:
        return self.packed_tokens / self.unique_tokens if self.unique_tokens else 0.0


def pack_tree(*, tree: Tree, max_packed_tokens: int | None) -> list[PackedSequence]:
    """Pack `tree` into one sequence, or into sub-packs of at most `max_packed_tokens` tokens.

    Returns no pack for a tree with nothing to train (a root without children). Raises ValueError
    when the root holds no token (a first child would have no predictor) or when one root-to-node
    path alone is longer than `max_packed_tokens`.
    """
    if max_packed_tokens is not None and max_packed_tokens < 1:
        raise ValueError(f"max_packed_tokens must be positive, got {max_packed_tokens}")
    if tree.root.num_tokens == 0:
        raise ValueError("the root of a tree must hold the prompt tokens, found none")
    if len(tree.nodes) == 1:
        return []
    preorder = _preorder(tree)
    path_start = _path_starts(tree)  # (num_nodes,) tokens on the path above each node
    if max_packed_tokens is None:
        layouts = [(preorder, set(preorder[1:]))]
    else:
        layouts = _split_into_subtrees(
            tree=tree,
            preorder=preorder,
            path_start=path_start,
            max_packed_tokens=max_packed_tokens,
        )
    return [
        _build_pack(tree=tree, members=members, trained=trained, path_start=path_start)
        for members, trained in layouts
    ]


def packing_stats(*, tree: Tree, packs: list[PackedSequence]) -> PackingStats:
    return PackingStats(
        num_packs=len(packs),
        packed_tokens=sum(pack.num_tokens for pack in packs),
        unique_tokens=sum(node.num_tokens for node in tree.nodes),
        trained_tokens=sum(pack.num_trained_tokens for pack in packs),
    )


@dataclass(frozen=True)
class TrainedTokenFields:
    """What the loss needs for each trained token of a pack, read from the tree (N tokens)."""

    behaviour_logprobs: Tensor  # (N,) float32, stored at generation time
    advantages: Tensor  # (N,) float32, the node's advantage; 0 where it has none
    has_advantage: Tensor  # (N,) bool, False for nodes without one (single children, unscored)
    group_ids: Tensor  # (N,) int64, group_id_base + parent node index: the sibling group


def trained_token_fields(
    *, tree: Tree, pack: PackedSequence, group_id_base: int = 0
) -> TrainedTokenFields:
    """Behaviour logprobs, advantages and sibling-group ids of `pack`'s trained tokens.

    Group ids are `group_id_base + parent index`; give each tree of a batch its own base (e.g. the
    running total of `len(tree.nodes)`) so groups stay unique across trees.
    """
    nodes = pack.trained_nodes.numpy()  # (N,)
    offsets = pack.trained_offsets.numpy()  # (N,)
    behaviour = np.zeros(len(nodes), dtype=np.float32)  # (N,)
    advantages = np.zeros(len(nodes), dtype=np.float32)  # (N,)
    has_advantage = np.zeros(len(nodes), dtype=bool)  # (N,)
    group_ids = np.zeros(len(nodes), dtype=np.int64)  # (N,)
    for node_index in np.unique(nodes).tolist():
        node = tree.nodes[node_index]
        if node.logprobs.shape[0] != node.num_tokens:
            raise ValueError(
                f"node {node_index} has {node.num_tokens} tokens but "
                f"{node.logprobs.shape[0]} behaviour logprobs"
            )
        rows = nodes == node_index  # (N,)
        behaviour[rows] = node.logprobs[offsets[rows]]
        if node.advantage is not None:
            advantages[rows] = node.advantage
            has_advantage[rows] = True
        group_ids[rows] = group_id_base + node.parent
    return TrainedTokenFields(
        behaviour_logprobs=torch.from_numpy(behaviour),
        advantages=torch.from_numpy(advantages),
        has_advantage=torch.from_numpy(has_advantage),
        group_ids=torch.from_numpy(group_ids),
    )


def dense_attention_mask(
    *, pack: PackedSequence, dtype: torch.dtype = torch.bool, device: torch.device | str = "cpu"
) -> Tensor:
    """The tree attention mask as a `(1, 1, L, L)` tensor (query rows, key columns).

    Boolean (`True` = attend) for sdpa; any floating dtype gives the additive form (0 where a token
    may attend, the dtype's most negative finite value elsewhere) that eager attention adds to the
    scores. Every row has at least its diagonal allowed, so no row is fully masked.
    """
    segment_ids = pack.segment_ids.to(device)  # (L,)
    ancestor_or_self = pack.ancestor_or_self.to(device)  # (S, S)
    length = segment_ids.shape[0]
    positions = torch.arange(length, device=device)  # (L,)
    # Ancestor segments always precede a segment in the pack, so `key <= query` only bites within
    # a segment, where it is the ordinary causal mask.
    allowed = ancestor_or_self[segment_ids[:, None], segment_ids[None, :]]  # (L, L)
    allowed = allowed & (positions[None, :] <= positions[:, None])  # (L, L)
    allowed = allowed[None, None]  # (1, 1, L, L)
    if dtype == torch.bool:
        return allowed
    blocked_value = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, blocked_value
    )  # (1, 1, L, L)


def tree_mask_mod(
    *, segment_ids: Tensor, ancestor_or_self: Tensor
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """A FlexAttention `mask_mod(batch, head, q_idx, kv_idx)` for the tree attention of one pack.

    `segment_ids` (L,) and `ancestor_or_self` (S, S) must already be on the attention's device. The
    function is pure tensor indexing, so it also evaluates on broadcast index tensors (the tests
    compare it with `dense_attention_mask` on CPU).
    """

    def mask_mod(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        same_path = ancestor_or_self[segment_ids[q_idx], segment_ids[kv_idx]]
        return same_path & (kv_idx <= q_idx)

    return mask_mod


def _preorder(tree: Tree) -> list[int]:
    """Node indexes in depth-first pre-order, children by ordinal: parents first, subtrees whole."""
    order: list[int] = []
    stack = [0]
    while stack:
        index = stack.pop()
        order.append(index)
        stack.extend(reversed(tree.nodes[index].children))
    return order


def _path_starts(tree: Tree) -> list[int]:
    """For each node, the number of tokens on the path above it (= its first position id)."""
    starts = [0] * len(tree.nodes)
    for node in tree.nodes[1:]:
        parent = tree.nodes[node.parent]
        starts[node.index] = starts[parent.index] + parent.num_tokens
    return starts


def _ancestors(tree: Tree, index: int) -> list[int]:
    """Strict ancestors of `index`, root first."""
    ancestors = []
    parent = tree.nodes[index].parent
    while parent is not None:
        ancestors.append(parent)
        parent = tree.nodes[parent].parent
    return ancestors[::-1]


def _split_into_subtrees(
    *, tree: Tree, preorder: list[int], path_start: list[int], max_packed_tokens: int
) -> list[tuple[list[int], set[int]]]:
    """Greedy sub-packs over the pre-order: (members parents-first, trained nodes) per pack."""
    layouts: list[tuple[list[int], set[int]]] = []
    members: list[int] = []
    in_pack: set[int] = set()
    trained: set[int] = set()
    size = 0
    for index in preorder[1:]:
        node_tokens = tree.nodes[index].num_tokens
        missing = [a for a in _ancestors(tree, index) if a not in in_pack]
        cost = sum(tree.nodes[a].num_tokens for a in missing) + node_tokens
        if trained and size + cost > max_packed_tokens:
            layouts.append((members, trained))
            members, in_pack, trained, size = [], set(), set(), 0
            missing = _ancestors(tree, index)
            cost = path_start[index] + node_tokens
        if cost > max_packed_tokens:
            raise ValueError(
                f"the path from the root to node {index} holds {path_start[index] + node_tokens} "
                f"tokens, more than max_packed_tokens={max_packed_tokens}: it cannot be packed"
            )
        members.extend([*missing, index])
        in_pack.update([*missing, index])
        trained.add(index)
        size += cost
    layouts.append((members, trained))
    return layouts


def _build_pack(
    *, tree: Tree, members: list[int], trained: set[int], path_start: list[int]
) -> PackedSequence:
    """Lay out `members` (an ancestor-closed node list, parents first) as one packed sequence."""
    segment_of = {node_index: segment for segment, node_index in enumerate(members)}
    lengths = np.array([tree.nodes[i].num_tokens for i in members], dtype=np.int64)  # (S,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (S,)
    num_segments = len(members)

    input_ids = np.concatenate([tree.nodes[i].token_ids for i in members]).astype(np.int64)  # (L,)
    position_ids = np.concatenate(
        [
            np.arange(n, dtype=np.int64) + path_start[i]
            for i, n in zip(members, lengths, strict=True)
        ]
    )  # (L,)
    segment_ids = np.repeat(np.arange(num_segments, dtype=np.int64), lengths)  # (L,)

    ancestor_or_self = np.eye(num_segments, dtype=bool)  # (S, S)
    # Packed index of the last token on the path ending at each segment: the predictor of its
    # children's first tokens (an empty segment hands on its parent's).
    last_on_path = np.zeros(num_segments, dtype=np.int64)  # (S,)
    trained_token_indices, predictor_indices, trained_nodes, trained_offsets = [], [], [], []
    for segment, node_index in enumerate(members):
        node = tree.nodes[node_index]
        start, length = int(starts[segment]), int(lengths[segment])
        parent_segment = None if node.parent is None else segment_of[node.parent]
        if parent_segment is not None:
            ancestor_or_self[segment] |= ancestor_or_self[parent_segment]
        if length > 0:
            last_on_path[segment] = start + length - 1
        elif parent_segment is not None:
            last_on_path[segment] = last_on_path[parent_segment]
        if node_index not in trained or length == 0:
            continue
        token_indices = np.arange(start, start + length, dtype=np.int64)  # (T,)
        predictors = token_indices - 1  # (T,)
        predictors[0] = last_on_path[parent_segment]
        trained_token_indices.append(token_indices)
        predictor_indices.append(predictors)
        trained_nodes.append(np.full(length, node_index, dtype=np.int64))
        trained_offsets.append(np.arange(length, dtype=np.int64))

    def concat(parts: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

    return PackedSequence(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        segment_ids=torch.from_numpy(segment_ids),
        segment_nodes=torch.tensor(members, dtype=torch.int64),
        segment_trained=torch.tensor([i in trained for i in members], dtype=torch.bool),
        ancestor_or_self=torch.from_numpy(ancestor_or_self),
        trained_token_indices=concat(trained_token_indices),
        predictor_indices=concat(predictor_indices),
        trained_nodes=concat(trained_nodes),
        trained_offsets=concat(trained_offsets),
    )

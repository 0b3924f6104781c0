"""Tree attention on CPU whose cost follows what each token can see: the "tree" implementation.

A packed tree (see `treerpo.training.packing`, which builds the segment structure this module
reads: each token's segment and each segment's ancestors) lets a token attend to its own
segment's earlier tokens and to its ancestors' tokens. The dense `(L, L)` mask that sdpa and
eager attention take computes every pair and throws most away: on a seed-shaped tree a token
sees about a fifth of the pack. This module computes only what a token sees:

1. Each segment is cut into query *tiles* of at most `tile_size` tokens (evenly: a 150-token
   segment with tile_size 128 gives two tiles of 75).
2. A tile's keys are gathered: every token of the segment's ancestors (in packed order), then its
   own segment's tokens up to the tile's end. Query i of a tile (at offset a + i in its segment)
   may attend to gathered key k iff k <= ancestor_tokens + a + i, so the tile mask is a causal
   mask shifted by one integer, and the padding keys at the end are never visible.
3. Tiles are sorted by key count and grouped into buckets whose key counts differ by at most
   `bucket_ratio`; each bucket is one batched `scaled_dot_product_attention` call (batch = tiles,
   keys right-padded to the bucket's largest), so padding wastes at most ~1 - bucket_ratio.
4. The outputs of every tile's real query rows are scattered back to packed order.

Work is sum over tiles of (tile tokens x visible tokens), not L^2. The gathers are plain
differentiable indexing, and torch's CPU sdpa kernel recomputes attention in its backward, so
the memory kept for the backward is the gathered keys/values, not a score matrix.

Hooking it into transformers: `register_tree_attention()` registers the name "tree" with
transformers' `AttentionInterface` (the function) and `AttentionMaskInterface` (sdpa's mask).
A model loaded with `attn_implementation="tree"` behaves exactly like sdpa in every call that
does not carry a `tree_layout` keyword argument (generation, plain forwards). The packed forward
passes its `TreeAttentionLayout` as `tree_layout=` through the model call (transformers hands
model keyword arguments down to the attention function), plus a zero-memory 4-D placeholder as
`attention_mask` so that no dense mask is ever built. A model whose code drops the keyword gets
the placeholder without a layout, which is refused with an error rather than run unmasked.

On CUDA, FlexAttention with a block-sparse mask does the same job in one fused kernel (see
`treerpo.training.packed_forward`); torch's FlexAttention has no CPU backward (torch 2.13 raises
"FlexAttention does not support backward on CPU"), hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

TREE_ATTENTION = "tree"
DEFAULT_TILE_SIZE = 128
DEFAULT_BUCKET_RATIO = 0.8


@dataclass(frozen=True)
class AttentionBucket:
    """Tiles attended in one batched sdpa call (Q = tiles, T = longest tile, K = most keys)."""

    query_index: Tensor  # (Q, T) int64 packed index of each query slot (padding repeats one)
    key_index: Tensor  # (Q, K) int64 packed index of each key slot (padding repeats one)
    mask: Tensor  # (Q, 1, T, K) bool, True = attend
    valid_slots: Tensor  # (R,) int64 flat index into (Q * T) of the real query rows


@dataclass(frozen=True)
class TreeAttentionLayout:
    """Everything the tree attention needs about one pack, built once, used by every layer."""

    num_tokens: int  # L
    buckets: tuple[AttentionBucket, ...]
    output_order: Tensor  # (L,) int64: packed token i's row in the bucket outputs concatenated
    attended_pairs: int  # (query, key) pairs computed, padding included
    visible_pairs: int  # (query, key) pairs the tree mask allows

    def to(self, device: torch.device | str) -> TreeAttentionLayout:
        return TreeAttentionLayout(
            num_tokens=self.num_tokens,
            buckets=tuple(
                AttentionBucket(
                    query_index=b.query_index.to(device),
                    key_index=b.key_index.to(device),
                    mask=b.mask.to(device),
                    valid_slots=b.valid_slots.to(device),
                )
                for b in self.buckets
            ),
            output_order=self.output_order.to(device),
            attended_pairs=self.attended_pairs,
            visible_pairs=self.visible_pairs,
        )


def tree_attention_layout(
    *,
    segment_ids: Tensor,
    ancestor_or_self: Tensor,
    tile_size: int = DEFAULT_TILE_SIZE,
    bucket_ratio: float = DEFAULT_BUCKET_RATIO,
) -> TreeAttentionLayout:
    """Query tiles, gathered keys and buckets of one pack (module docstring, steps 1-3).

    `segment_ids` (L,): each token's segment, segments contiguous and parents first;
    `ancestor_or_self` (S, S) bool: [s, t] when segment t is s or one of its ancestors.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0.0 < bucket_ratio <= 1.0:
        raise ValueError(f"bucket_ratio must be in (0, 1], got {bucket_ratio}")
    segment_ids = segment_ids.cpu().numpy()  # (L,)
    ancestor_or_self = ancestor_or_self.cpu().numpy()  # (S, S)
    num_segments = ancestor_or_self.shape[0]
    lengths = np.bincount(segment_ids, minlength=num_segments).astype(np.int64)  # (S,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (S,)

    # Per tile: packed query indices and gathered key indices (ancestors first, packed order).
    tiles: list[tuple[np.ndarray, np.ndarray, int]] = []  # (queries, keys, visible ancestors)
    visible_pairs = 0
    for segment in range(num_segments):
        length = int(lengths[segment])
        if length == 0:
            continue
        ancestors = np.flatnonzero(ancestor_or_self[segment])
        ancestors = ancestors[ancestors != segment]  # parents first = packed order
        ancestor_keys = np.concatenate(
            [np.arange(starts[a], starts[a] + lengths[a]) for a in ancestors]
        ).astype(np.int64) if len(ancestors) else np.zeros(0, dtype=np.int64)
        num_tiles = -(-length // tile_size)
        bounds = np.linspace(0, length, num_tiles + 1).round().astype(np.int64)
        start = int(starts[segment])
        for first, end in zip(bounds[:-1], bounds[1:], strict=True):
            queries = np.arange(start + first, start + end, dtype=np.int64)
            keys = np.concatenate([ancestor_keys, np.arange(start, start + end, dtype=np.int64)])
            tiles.append((queries, keys, len(ancestor_keys) + int(first)))
        visible_pairs += length * len(ancestor_keys) + length * (length + 1) // 2

    tiles.sort(key=lambda tile: -len(tile[1]))
    groups: list[list[tuple[np.ndarray, np.ndarray, int]]] = []
    for tile in tiles:
        if groups and len(tile[1]) >= bucket_ratio * len(groups[-1][0][1]):
            groups[-1].append(tile)
        else:
            groups.append([tile])

    buckets, order_parts, attended_pairs = [], [], 0
    for group in groups:
        rows = max(len(queries) for queries, _, _ in group)
        cols = len(group[0][1])
        query_index = np.zeros((len(group), rows), dtype=np.int64)  # (Q, T)
        key_index = np.zeros((len(group), cols), dtype=np.int64)  # (Q, K)
        shift = np.zeros(len(group), dtype=np.int64)  # (Q,)
        valid = np.zeros((len(group), rows), dtype=bool)  # (Q, T)
        for row, (queries, keys, first_visible) in enumerate(group):
            query_index[row, : len(queries)] = queries
            query_index[row, len(queries):] = queries[-1]
            key_index[row, : len(keys)] = keys
            key_index[row, len(keys):] = keys[-1]
            shift[row] = first_visible
            valid[row, : len(queries)] = True
            order_parts.append(queries)
        # Query slot i of a tile sees gathered keys 0 .. shift + i (module docstring, step 2).
        mask = (
            np.arange(cols)[None, None, :] <= shift[:, None, None] + np.arange(rows)[None, :, None]
        )  # (Q, T, K)
        attended_pairs += len(group) * rows * cols
        buckets.append(
            AttentionBucket(
                query_index=torch.from_numpy(query_index),
                key_index=torch.from_numpy(key_index),
                mask=torch.from_numpy(mask[:, None]),
                valid_slots=torch.from_numpy(np.flatnonzero(valid.reshape(-1))),
            )
        )
    concatenated = np.concatenate(order_parts) if order_parts else np.zeros(0, dtype=np.int64)
    output_order = np.empty(len(concatenated), dtype=np.int64)
    output_order[concatenated] = np.arange(len(concatenated))
    return TreeAttentionLayout(
        num_tokens=len(segment_ids),
        buckets=tuple(buckets),
        output_order=torch.from_numpy(output_order),
        attended_pairs=attended_pairs,
        visible_pairs=visible_pairs,
    )


def tree_attention(
    *,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: TreeAttentionLayout,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """Attention of one pack under the tree mask: (1, H, L, D) query, (1, Hkv, L, D) key/value
    -> (1, L, H, D), the layout transformers' attention functions return."""
    if query.shape[0] != 1:
        raise ValueError(f"tree attention takes one pack per call, got batch {query.shape[0]}")
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    outputs = []
    for bucket in layout.buckets:
        tiles, rows = bucket.query_index.shape
        bucket_query = query[0][:, bucket.query_index].transpose(0, 1)  # (Q, H, T, D)
        bucket_key = key[0][:, bucket.key_index].transpose(0, 1)  # (Q, Hkv, K, D)
        bucket_value = value[0][:, bucket.key_index].transpose(0, 1)  # (Q, Hkv, K, D)
        if num_kv_heads != num_heads:
            groups = num_heads // num_kv_heads
            bucket_key = bucket_key.repeat_interleave(groups, dim=1)  # (Q, H, K, D)
            bucket_value = bucket_value.repeat_interleave(groups, dim=1)  # (Q, H, K, D)
        attended = torch.nn.functional.scaled_dot_product_attention(
            bucket_query, bucket_key, bucket_value, attn_mask=bucket.mask,
            dropout_p=dropout, scale=scaling,
        )  # (Q, H, T, D)
        flat = attended.transpose(1, 2).reshape(tiles * rows, num_heads, -1)  # (Q*T, H, D)
        outputs.append(flat[bucket.valid_slots])  # (R, H, D)
    if not outputs:
        return query.new_zeros(1, 0, num_heads, query.shape[-1])
    return torch.cat(outputs)[layout.output_order][None]  # (1, L, H, D)


def _tree_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, **kwargs):
    """transformers' attention-function signature; sdpa for calls without a `tree_layout`."""
    layout = kwargs.pop("tree_layout", None)
    if layout is None and is_tree_placeholder(attention_mask):
        raise ValueError(
            f"{type(module).__name__} did not hand the `tree_layout` keyword down to its "
            "attention: this model cannot use the tree attention; load it with "
            "attn_implementation sdpa (dense tree mask) instead"
        )
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError("tree attention supports neither sliding windows nor logit soft-capping")
    if query.shape[2] != layout.num_tokens or key.shape[2] != layout.num_tokens:
        raise ValueError("tree attention: the layout does not match the forwarded pack")
    output = tree_attention(query=query, key=key, value=value, layout=layout, scaling=scaling,
                            dropout=dropout if module.training else 0.0)
    return output, None


def tree_placeholder_mask(*, length: int, device: torch.device | str) -> Tensor:
    """The `attention_mask` that goes with `tree_layout`: 4-D, so transformers' mask creation
    passes it through untouched, and zero-stride (no memory). A constant L x L mask (L > 1) is
    never a real causal mask, so a model that drops `tree_layout` is caught, not run unmasked."""
    return torch.ones((), dtype=torch.bool, device=device).expand(1, 1, length, length)


def is_tree_placeholder(attention_mask) -> bool:
    return (isinstance(attention_mask, Tensor) and attention_mask.dim() == 4
            and attention_mask.shape[-1] > 1 and attention_mask.shape[-2] > 1
            and all(stride == 0 for stride in attention_mask.stride()))


def register_tree_attention() -> None:
    """Make `attn_implementation="tree"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TREE_ATTENTION, _tree_attention_forward)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)

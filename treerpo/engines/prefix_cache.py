"""The HF engine's prefix cache: the KV of the rows one `generate` call finished, for the next.

Why: tree growth sends, in wave w + 1, requests whose contexts extend a prefix of some row of wave
w (an alternative child: path + segment[:t] + [forced token]; a coverage child: path +
segment[:cut]). Without a cache each of them forwards its whole path (prompt and ancestors) again
before it decodes a token; with it, only the tokens no stored row holds (one, in tree growth).
This is vLLM's `enable_prefix_caching`, for the engine that decodes by hand.

What a row holds: its tokens (context + every generated token but the last, whose KV was never
computed) and the keys and values of every layer at them, `(layers, 2, kv_heads, n, head_dim)`.
The engine gives a context's token i position i whatever the padding of its batch, so a stored
K/V is the K/V of the same token at the same index of any context that shares the prefix (also
for models with absolute position embeddings, whose K/V depend on the position).

Lookup: a row is indexed by the chained hashes of its full blocks of `BLOCK_SIZE` tokens (as
vLLM's block hashes). A context walks its own block hashes down to the deepest one a row shares,
then takes the longest common prefix with those rows, to the token (not to the block). A match
needs one full block in common and never covers a context's last token: its logits are what
decoding starts from, so it is always forwarded.

Memory policy: at most `max_tokens` tokens of KV are held at any moment (a token costs layers x 2 x
kv_heads x head_dim values of the model's dtype); a finished row, or a context the engine prefills
once for its identical requests, that does not fit is not stored. The rows of the previous call live
only as long as this call needs them: `plan` drops the rows no request reuses, and `release` drops a
row once the last request reusing it has been prefilled. Between calls the cache therefore holds (up
to `max_tokens`) the rows the last call finished, which is what the next wave of tree growth
extends.

The cache knows nothing of weights: the engine clears it when they may have changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_SIZE = 16  # tokens per hashed block: a match needs one full block in common


@dataclass(eq=False)
class CachedRow:
    serial: int
    token_ids: np.ndarray  # (n,) int64, the tokens whose KV is held
    kv: torch.Tensor  # (layers, 2, kv_heads, n, head_dim): keys at [:, 0], values at [:, 1]
    block_hashes: list[int]
    consumers: int = 0  # requests of the current call that reuse this row


@dataclass(frozen=True)
class PrefixMatch:
    row: CachedRow | None
    length: int  # leading context tokens whose KV `row` holds; 0 without a row


NO_MATCH = PrefixMatch(row=None, length=0)


def chained_block_hashes(token_ids: np.ndarray) -> Iterator[int]:
    """Hash of each full block together with every block before it: equal hashes at block j mean
    (up to a hash collision, which `PrefixCache` rules out by comparing tokens) equal first j+1
    blocks."""
    chained = 0
    for start in range(0, len(token_ids) - BLOCK_SIZE + 1, BLOCK_SIZE):
        chained = hash((chained, token_ids[start : start + BLOCK_SIZE].tobytes()))
        yield chained


class PrefixCache:
    """Stored rows, their block index and the token budget (module doc)."""

    def __init__(self, *, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.num_tokens = 0  # tokens of KV held, over all rows
        self._rows: dict[int, CachedRow] = {}  # by serial
        self._index: dict[int, dict[int, CachedRow]] = {}  # block hash -> rows sharing it
        self._serials = itertools.count()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()
        self._index.clear()
        self.num_tokens = 0

    def fits(self, *row_lengths: int) -> bool:
        """Whether rows of these lengths would all be stored (a row under a block never matches)."""
        return (
            all(length >= BLOCK_SIZE for length in row_lengths)
            and self.num_tokens + sum(row_lengths) <= self.max_tokens
        )

    def add(self, token_ids: np.ndarray, kv: torch.Tensor) -> None:
        """Store a row (the caller checked `fits`); it can be matched from the next `plan` on."""
        if not self.fits(len(token_ids)):
            raise ValueError(f"a row of {len(token_ids)} tokens does not fit the prefix cache")
        row = CachedRow(
            serial=next(self._serials),
            token_ids=token_ids,
            kv=kv,
            block_hashes=list(chained_block_hashes(token_ids)),
        )
        self._rows[row.serial] = row
        self.num_tokens += len(token_ids)
        for block_hash in row.block_hashes:
            self._index.setdefault(block_hash, {})[row.serial] = row

    def plan(self, contexts: Sequence[np.ndarray]) -> list[PrefixMatch]:
        """The longest stored prefix of each context, counted as one consumer of its row; rows
        no context reuses are dropped (memory policy, module doc)."""
        matches = [self._longest_prefix(context) for context in contexts]
        for row in self._rows.values():
            row.consumers = 0
        for match in matches:
            if match.row is not None:
                match.row.consumers += 1
        for row in [row for row in self._rows.values() if row.consumers == 0]:
            self._drop(row)
        return matches

    def release(self, match: PrefixMatch) -> None:
        """One consumer of `match.row` has copied its KV: drop the row after its last one."""
        row = match.row
        if row is None:
            return
        row.consumers -= 1
        if row.consumers <= 0:
            self._drop(row)

    def _drop(self, row: CachedRow) -> None:
        del self._rows[row.serial]
        self.num_tokens -= len(row.token_ids)
        for block_hash in row.block_hashes:
            rows = self._index[block_hash]
            del rows[row.serial]
            if not rows:
                del self._index[block_hash]

    def _longest_prefix(self, context: np.ndarray) -> PrefixMatch:
        usable = len(context) - 1  # the last token is always forwarded
        candidates, shared_blocks = None, 0
        for block, block_hash in enumerate(chained_block_hashes(context[:usable]), start=1):
            rows = self._index.get(block_hash)
            if rows is None:
                break
            candidates, shared_blocks = rows, block
        if candidates is None:
            return NO_MATCH
        # Every candidate shares the first `shared_blocks` blocks; none shares the next full one,
        # so each extends the match by less than a block.
        start = shared_blocks * BLOCK_SIZE
        best_row, best_length = None, -1
        for row in candidates.values():
            end = min(len(row.token_ids), usable)
            same = row.token_ids[start:end] == context[start:end]  # (end - start,)
            length = end if bool(same.all()) else start + int(np.argmin(same))
            if length > best_length:
                best_row, best_length = row, length
        if not np.array_equal(best_row.token_ids[:start], context[:start]):
            return NO_MATCH  # a hash collision
        return PrefixMatch(row=best_row, length=best_length)

"""Where a tree branches and how alternatives are drawn (DESIGN steps 2, 4 and 6).

Pure functions over arrays and per-token texts; the grower applies them to generated segments.

Per-token text: each token id is decoded on its own (`tokenizer.decode([token_id])`). Every
delimiter test only looks at how a text *ends*, and the delimiters are ASCII, so decoding tokens
one by one gives the same answer as decoding the segment: a byte-level BPE token that ends with
`.` decodes to a string ending with `.`, and SentencePiece's dropped leading space of a lone
token does not touch its end. Tokens that decode to the empty string (a SentencePiece `▁`, a
fragment of a multi-byte character in some decoders) add nothing to the text, so "the text so
far ends with a delimiter" looks through them to the last characters before them. Character
counts (the coverage cut) are measured on the concatenated per-token texts; they equal the
segment's decoded text for ASCII text and differ by a few characters where a multi-byte
character is split across tokens.

Entropies and alternatives use the untempered (raw) top-k logprobs the engine reports, renormalised
over the top k (DESIGN step 10): the default threshold 1.0 nat was calibrated on that.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def topk_entropy(topk_logprobs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the top-k distribution renormalised over the k candidates.

    `topk_logprobs` is (..., K) raw logprobs; `-inf` entries (impossible tokens, padding) carry no
    mass. Returns (...) float64.
    """
    logprobs = np.asarray(topk_logprobs, dtype=np.float64)  # (..., K)
    peak = np.max(logprobs, axis=-1, keepdims=True)  # (..., 1)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    shifted = logprobs - peak  # (..., K), max 0
    log_normaliser = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))  # (..., 1)
    renormalised = shifted - log_normaliser  # (..., K) log p over the top k
    probs = np.exp(renormalised)  # (..., K)
    finite_logprobs = np.where(probs > 0.0, renormalised, 0.0)  # 0 log 0 = 0, not 0 * -inf
    return -np.sum(probs * finite_logprobs, axis=-1)  # (...)


def sample_alternative(
    *,
    topk_token_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    exclude: Collection[int],
    temperature: float,
    generator: np.random.Generator,
) -> tuple[int, float] | None:
    """Draw an alternative token from the top-k candidates minus `exclude` (DESIGN step 2).

    The probability of candidate i is proportional to exp(topk_logprobs[i] / temperature) over the
    candidates left (temperature 0: the most likely one left). `topk_token_ids` and `topk_logprobs`
    are (K,). Returns the token and its raw logprob, or None when no candidate with non-zero
    probability is left. Consumes exactly one uniform draw from `generator` when it samples.
    """
    token_ids = np.asarray(topk_token_ids, dtype=np.int64)  # (K,)
    logprobs = np.asarray(topk_logprobs, dtype=np.float64)  # (K,)
    not_excluded = np.fromiter(
        (token_id not in exclude for token_id in token_ids.tolist()),
        dtype=bool,
        count=len(token_ids),
    )  # (K,)
    allowed = np.isfinite(logprobs) & not_excluded & (token_ids >= 0)  # (K,)
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        return None
    candidate_logprobs = logprobs[candidates]  # (C,)
    if temperature == 0.0:
        chosen = candidates[int(np.argmax(candidate_logprobs))]
    else:
        scaled = (candidate_logprobs - candidate_logprobs.max()) / temperature
        weights = np.exp(scaled)  # (C,), the largest is 1, so the sum is >= 1
        cumulative = np.cumsum(weights)
        draw = generator.random() * cumulative[-1]
        position = min(int(np.searchsorted(cumulative, draw, side="right")), candidates.size - 1)
        chosen = candidates[position]
    return int(token_ids[chosen]), float(logprobs[chosen])


def find_entropy_split(
    *,
    token_texts: Sequence[str],
    entropies: np.ndarray,
    min_segment_len: int,
    delimiters: Sequence[str],
    threshold: float,
) -> int | None:
    """The first position t of a segment where the node splits before t (DESIGN step 4), or None.

    t qualifies when: t >= `min_segment_len` (that many tokens of the segment precede it); the
    text of tokens [0, t) ends with a delimiter (empty token texts add nothing to it); token t's
    own text does not end with one; and `entropies[t]` > `threshold`. `token_texts` are the
    segment's per-token texts and `entropies` (T,) the top-k entropy at each position (NaN where
    unknown, which never qualifies).
    """
    delimiter_endings = tuple(delimiters)
    longest_delimiter = max(len(delimiter) for delimiter in delimiter_endings)
    text_so_far_tail = ""  # the last characters of the segment text before `position`
    for position, text in enumerate(token_texts):
        if (
            position >= min_segment_len
            and text_so_far_tail.endswith(delimiter_endings)
            and not text.endswith(delimiter_endings)
            and entropies[position] > threshold
        ):
            return position
        text_so_far_tail = (text_so_far_tail + text)[-longest_delimiter:]
    return None


def find_coverage_cut(
    *,
    token_texts: Sequence[str],
    delimiters: Sequence[str],
    coverage_min_chars: int,
    min_segment_len: int,
) -> int | None:
    """Where a finished node's segment is cut for the coverage split (DESIGN step 6), or None.

    Finds the last delimiter before character len(text) - `coverage_min_chars` that ends at a
    token boundary: the last token j with non-empty text such that the text of tokens [0, j]
    ends with a delimiter and at least `coverage_min_chars` characters follow it. Returns
    k = j + 1, the number of tokens kept (the cut falls between tokens j and j + 1), when
    k >= `min_segment_len`, else None: earlier delimiters would keep even less. The part after
    the cut is never empty. A delimiter inside a token cannot be cut at a token boundary and is
    not a cut point.
    """
    delimiter_endings = tuple(delimiters)
    longest_delimiter = max(len(delimiter) for delimiter in delimiter_endings)
    text_lengths = np.fromiter((len(text) for text in token_texts), dtype=np.int64)  # (T,)
    characters_after = np.sum(text_lengths) - np.cumsum(text_lengths)  # (T,) after token j
    for position in range(len(token_texts) - 2, -1, -1):  # the last token cannot end the kept part
        if characters_after[position] < coverage_min_chars or not token_texts[position]:
            continue
        # The kept text's end: this token, preceded by enough earlier text for any delimiter.
        kept_tail = token_texts[position]
        earlier = position - 1
        while len(kept_tail) < longest_delimiter and earlier >= 0:
            kept_tail = token_texts[earlier] + kept_tail
            earlier -= 1
        if kept_tail.endswith(delimiter_endings):
            kept_tokens = position + 1
            return kept_tokens if kept_tokens >= min_segment_len else None
    return None

"""A deterministic stand-in for an `Engine`, driven by a scripted policy, and a fake tokenizer.

The vocabulary has 24 tokens with chosen texts (some end with a split delimiter, one decodes to
the empty string); `EOS` ends a completion (the engine's `eos_token_ids` can add more stop
tokens) and `SEP` ends every prompt, so the policy sees the completion as the tokens after the
last `SEP` of a context.

A policy maps the completion so far to (next token, raw logits over the vocabulary). The engine
returns that token, its behaviour logprob log_softmax(logits / logprob_temperature)[token], and the
top-k of log_softmax(logits), exactly what the `Engine` protocol promises. Sampling settings are
ignored: the script decides every token, so tests know where splits must land.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from treerpo.engines.base import GenerationRequest, GenerationResult, SamplingSettings

TOKEN_TEXTS = (
    "<eos>", "<sep>", ".", "\n", "a", "bb", " c", "d;", "", "e?", "ff", "g",
    "h!", "i", "jj:", " k", "l", "m", "nn", "o.", "p", " q", "r", "s",
)  # fmt: skip
VOCAB_SIZE = len(TOKEN_TEXTS)
TOKEN_ID = {text: token_id for token_id, text in enumerate(TOKEN_TEXTS)}
EOS = TOKEN_ID["<eos>"]
SEP = TOKEN_ID["<sep>"]
EMPTY = TOKEN_ID[""]
COMPLETION_TOKENS = tuple(token_id for token_id in range(VOCAB_SIZE) if token_id != SEP)

Policy = Callable[[tuple[int, ...]], tuple[int, np.ndarray]]
"""completion so far -> (next token, raw logits (V,))."""

HIGH_ENTROPY_BOOST = 0.5  # the chosen token is barely preferred: top-k entropy ~ ln(k)
LOW_ENTROPY_BOOST = 15.0  # the chosen token takes ~all the mass: top-k entropy ~ 0


def ids(*texts: str) -> list[int]:
    return [TOKEN_ID[text] for text in texts]


class FakeTokenizer:
    eos_token_id = EOS

    def decode(self, token_ids: Sequence[int], **_: object) -> str:
        return "".join(TOKEN_TEXTS[int(token_id)] for token_id in token_ids)


def peaked_logits(*, token: int, high_entropy: bool) -> np.ndarray:
    """Logits that put `token` first; near-uniform (high entropy) or near one-hot (low)."""
    logits = np.zeros(VOCAB_SIZE)  # (V,)
    logits[SEP] = -np.inf  # a prompt marker is never generated nor drawn as an alternative
    logits[token] += HIGH_ENTROPY_BOOST if high_entropy else LOW_ENTROPY_BOOST
    return logits


def stream_policy(
    *,
    stream: Sequence[int],
    high_entropy_positions: Collection[int],
    vary_with_context: bool = False,
) -> Policy:
    """Position p of the completion gets stream[p] (EOS past the end) and high entropy iff p is in
    `high_entropy_positions`. With `vary_with_context` the stream is read at
    (p + sum of the completion) mod its length instead, so branches that differ in one token
    continue differently."""
    high_positions = frozenset(high_entropy_positions)

    def policy(completion: tuple[int, ...]) -> tuple[int, np.ndarray]:
        position = len(completion)
        if vary_with_context:
            token = stream[(position + sum(completion)) % len(stream)]
        else:
            token = stream[position] if position < len(stream) else EOS
        return token, peaked_logits(token=token, high_entropy=position in high_positions)

    return policy


def log_softmax(logits: np.ndarray) -> np.ndarray:
    finite_peak = np.max(logits)
    shifted = logits - finite_peak
    return shifted - np.log(np.sum(np.exp(shifted)))


def completion_of(context: Sequence[int]) -> tuple[int, ...]:
    context = list(context)
    last_sep = len(context) - 1 - context[::-1].index(SEP)
    return tuple(context[last_sep + 1 :])


class ScriptedEngine:
    """Implements `treerpo.engines.base.Engine` from a policy; records every call."""

    def __init__(
        self,
        policy: Policy,
        *,
        logprob_temperature: float = 1.0,
        eos_token_ids: Sequence[int] = (EOS,),
    ) -> None:
        self.policy = policy
        self.logprob_temperature = logprob_temperature
        self.eos_token_ids = tuple(eos_token_ids)
        self.calls: list[list[GenerationRequest]] = []

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        sampling: SamplingSettings,
        topk: int,
    ) -> list[GenerationResult]:
        self.calls.append(list(requests))
        return [self._continue(request, topk=topk) for request in requests]

    def raw_logprob(self, *, completion: tuple[int, ...], token: int) -> float:
        """The policy's raw logprob of `token` after `completion` (what a trainer recomputes)."""
        _, logits = self.policy(completion)
        return float(log_softmax(logits)[token])

    def _continue(self, request: GenerationRequest, *, topk: int) -> GenerationResult:
        completion = completion_of(request.context_token_ids)
        token_ids, logprobs, topk_token_ids, topk_logprobs = [], [], [], []
        finish_reason = "budget"
        for _ in range(request.max_new_tokens):
            token, logits = self.policy(completion)
            raw_logprobs = log_softmax(logits)  # (V,)
            ranked = np.argsort(-raw_logprobs, kind="stable")[:topk]  # (K,)
            token_ids.append(token)
            logprobs.append(log_softmax(logits / self.logprob_temperature)[token])
            topk_token_ids.append(ranked)
            topk_logprobs.append(raw_logprobs[ranked])
            completion = (*completion, token)
            if token in self.eos_token_ids:
                finish_reason = "eos"
                break
        return GenerationResult(
            token_ids=np.asarray(token_ids, dtype=np.int32),
            logprobs=np.asarray(logprobs, dtype=np.float32),
            topk_token_ids=np.asarray(topk_token_ids, dtype=np.int32),
            topk_logprobs=np.asarray(topk_logprobs, dtype=np.float32),
            finish_reason=finish_reason,
        )

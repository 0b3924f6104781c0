"""The engine protocol: continue many token sequences at once and report what was sampled.

Both engines (Hugging Face transformers and vLLM) implement `Engine.generate`. Tree growth only
needs this: given a batch of contexts (prompt + path so far), sample a continuation of each and
return, per generated position,

- the sampled token,
- its behaviour logprob: log_softmax(logits / logprob_temperature) of the policy, before any
  sampling transform (repetition penalty, temperature, top-k/top-p/min-p truncation). With the
  default `logprob_temperature = 1.0` this is vLLM's default ("raw") logprob, and the trainer
  recomputes exactly this quantity, so the PPO ratio of an unchanged policy is 1;
- the top-`topk` candidates of the untempered (raw) distribution at that position, as token ids
  and logprobs sorted by decreasing logprob. Split entropies and alternative first tokens are
  computed from them (DESIGN steps 2 and 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    """How continuations are sampled. `None` disables a transform (greedy when temperature == 0)."""

    temperature: float = 0.6
    top_p: float | None = 0.85
    top_k: int | None = 25
    min_p: float | None = None
    repetition_penalty: float | None = 1.1


@dataclass(frozen=True)
class GenerationRequest:
    context_token_ids: Sequence[int]  # prompt + everything already on the path
    max_new_tokens: int  # > 0


@dataclass
class GenerationResult:
    token_ids: np.ndarray  # (T,) int32, the sampled continuation (EOS included when it stopped)
    logprobs: np.ndarray  # (T,) float32, behaviour logprob of each sampled token
    topk_token_ids: np.ndarray  # (T, K) int32, raw top-K candidates per position
    topk_logprobs: np.ndarray  # (T, K) float32, their raw logprobs, decreasing
    finish_reason: Literal["eos", "budget"]


class Engine(Protocol):
    """A policy that continues token sequences."""

    logprob_temperature: float

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        sampling: SamplingSettings,
        topk: int,
    ) -> list[GenerationResult]:
        """Sample one continuation per request, in request order. Deterministic under the
        engine's seed for the same sequence of calls."""
        ...

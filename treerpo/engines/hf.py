"""The Hugging Face transformers engine: batched, KV-cached sampling written by hand.

Why not `model.generate`: tree growth needs, at every generated position, the raw logprob of the
sampled token and the raw top-k candidates, from the full float32 logits. So decoding is a plain
loop: one prefill forward over the left-padded contexts, then one forward per step on the sampled
tokens with the KV cache (`past_key_values`), the growing `attention_mask` and explicit
`position_ids` (a left-padded row's first real token has position 0).

Per step, for the rows still running (finished rows are dropped from the batch and its cache):

1. `raw = log_softmax(logits)` in float32: the top-`topk` candidates come from it;
2. behaviour logprob = `log_softmax(logits / logprob_temperature)[sampled token]`, before any
   sampling transform (see `treerpo.engines.base`);
3. the sampling logits, transformed in the order of Hugging Face's `generate`: repetition penalty
   over context + generated tokens (positive logits divided, negative multiplied), temperature,
   top-k, top-p, min-p. Temperature 0 is greedy: the argmax of the penalised logits. (vLLM
   applies min-p before top-k/top-p; the two orders differ only when min-p and top-p are both on.
   Top-k keeps exactly k candidates, where HF would also keep ties with the k-th logit.)
4. a token is drawn with `probs / Exponential(1)` noise and argmax (the Gumbel-max trick vLLM
   uses), from the engine's own `torch.Generator`: the same seed and the same calls give the same
   tokens, on CPU or GPU, whatever else uses the global RNG.

A row finishes at an EOS id (the tokenizer's and the generation config's; finish reason "eos",
EOS included) or after its own `max_new_tokens` (finish reason "budget"). Requests are sorted by
context length and decoded in batches of up to `batch_size`, to limit padding.

Prefix cache (`prefix_cache=True`, `treerpo.engines.prefix_cache`): the KV of every finished row
is kept for the next call, and a request reuses the longest stored prefix of its context and
forwards only the rest. The prefill then sees, per row, the reused K/V left-padded to the
longest reuse of the batch, followed by the left-padded rest of the context, at positions
`reused .. len(context) - 1`. Identical contexts of one call that the cache does not cover (the
samples of a flat rollout) are prefilled once first. Reuse changes no result beyond float noise:
batches, their order and the random draws are those of the uncached engine, so greedy and seeded
samples are the same tokens (a sampled token could differ only where float noise of ~1e-6 in the
logits flips a draw) and logprobs agree to ~1e-6.

A stored K/V is valid only for the weights that computed it. `load_weights` and
`reset_prefix_cache()` clear the cache, and every `generate` call first compares a fingerprint of
the parameters with the one the cache was filled under, clearing the cache on any difference:
each parameter's storage address and autograd version counter (bumped by every in-place update
autograd sees: torch's optimizers but the fused ones, `load_state_dict`, `copy_` under no_grad)
and its float32 sum (for updates autograd does not see: `.data` writes, fused optimizers). So a
trainer that shares the model object (chained training) needs no call; the sums cost one read of
the weights per call. Models whose cache is not plain full-attention `DynamicLayer`s
(sliding-window layers drop old tokens), and transformers without them, run without it.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # older transformers keep no per-layer cache objects: no prefix cache
    DynamicLayer = None

from treerpo.engines.base import GenerationRequest, GenerationResult, SamplingSettings
from treerpo.engines.loading import eos_token_ids as collect_eos_token_ids
from treerpo.engines.prefix_cache import NO_MATCH, PrefixCache, PrefixMatch

# KV tokens the prefix cache may hold: 1 GiB for the bench's random model (4 KiB per token),
# 7 GiB for Qwen2.5-1.5B in bfloat16 (28 KiB per token).
DEFAULT_PREFIX_CACHE_TOKENS = 1 << 18


def apply_repetition_penalty(
    logits: torch.Tensor, *, seen_token_mask: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every token already in the context or generated (HF/vLLM convention)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen_token_mask, penalised, logits)  # (B, V)


def truncate_logits(
    logits: torch.Tensor, *, top_p: float | None, min_p: float | None
) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the top-p nucleus, then those under min-p.

    The most likely token is always kept. `logits` may hold a subset of the vocabulary (the
    top-k candidates): both rules only compare a token with the others in its row.
    """
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_ids = torch.sort(logits, dim=-1)  # (B, C) ascending
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, C)
        remove_sorted = cumulative_probs <= 1.0 - top_p  # (B, C)
        remove_sorted[:, -1] = False
        remove = remove_sorted.scatter(1, sorted_ids, remove_sorted)  # (B, C) in input order
        logits = logits.masked_fill(remove, float("-inf"))
    if min_p is not None and min_p > 0.0:
        probs = logits.softmax(dim=-1)  # (B, C)
        threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,
    *,
    sampling: SamplingSettings,
    seen_token_mask: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """One token per row from float32 `logits` (B, V) under `sampling`; returns (B,) int64.

    Top-k keeps exactly k candidates (ties at the k-th logit are broken by `torch.topk`), and
    top-p/min-p then run on those k only, which is what makes a large vocabulary cheap: after
    top-k every other token has probability 0 anyway.
    """
    penalty = sampling.repetition_penalty
    if penalty is not None and penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen_token_mask=seen_token_mask, penalty=penalty)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / sampling.temperature  # (B, V)
    candidate_ids = None
    top_k = sampling.top_k
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        logits, candidate_ids = torch.topk(logits, top_k, dim=-1)  # (B, k) each
    logits = truncate_logits(logits, top_p=sampling.top_p, min_p=sampling.min_p)  # (B, C)
    probs = logits.softmax(dim=-1)  # (B, C)
    noise = torch.empty_like(probs).exponential_(generator=generator)  # (B, C)
    choice = (probs / noise).argmax(dim=-1)  # (B,)
    if candidate_ids is None:
        return choice
    return candidate_ids.gather(1, choice[:, None])[:, 0]  # (B,)


class HFEngine:
    """`Engine` over a transformers causal LM (CPU or GPU), batched and KV-cached."""

    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        seed: int,
        logprob_temperature: float = 1.0,
        batch_size: int = 64,
        eos_token_ids: Iterable[int] | None = None,
        prefix_cache: bool = True,
        prefix_cache_max_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
    ) -> None:
        if logprob_temperature <= 0:
            raise ValueError(f"logprob_temperature must be > 0, got {logprob_temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefix_cache_max_tokens < 0:
            raise ValueError(f"prefix_cache_max_tokens must be >= 0, got {prefix_cache_max_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.logprob_temperature = float(logprob_temperature)
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        if eos_token_ids is None:
            eos_token_ids = collect_eos_token_ids(
                tokenizer, getattr(model, "generation_config", None)
            )
        self.eos_token_ids = tuple(eos_token_ids)
        self._eos_ids = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        self._pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        # Older transformers spell it `num_logits_to_keep`; without either, prefill computes
        # logits for every context position and only the last is used.
        parameters = inspect.signature(model.forward).parameters
        self._logits_to_keep_keyword = next(
            (name for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), None
        )
        # transformers >= 5.x renamed `past_key_values` to `cache` (the old name warns).
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self.prefix_cache = (
            PrefixCache(max_tokens=prefix_cache_max_tokens) if prefix_cache else None
        )
        self._prefix_cache_weights: tuple | None = None  # fingerprint the cache was filled under
        # Context tokens over the engine's life: KV taken from the prefix cache, and forwarded.
        self.context_tokens_reused = 0
        self.context_tokens_forwarded = 0

    def reseed(self, seed: int) -> None:
        """Restart the sampling draws at `seed`: the calls that follow sample exactly as a fresh
        engine seeded `seed` would (generate reseeds per batch, so a resume repeats them)."""
        self._generator.manual_seed(seed)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy updated weights (e.g. the trainer's `named_parameters()`) into the model."""
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = parameters[name]
                if tensor.data_ptr() != target.data_ptr():
                    target.copy_(tensor)
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """Forget every stored KV row (e.g. after an optimizer step; `generate` also notices)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self._prefix_cache_weights = None

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        sampling: SamplingSettings,
        topk: int,
    ) -> list[GenerationResult]:
        for request in requests:
            if len(request.context_token_ids) == 0:
                raise ValueError("a generation request needs at least one context token")
            if request.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        contexts = [np.asarray(r.context_token_ids, dtype=np.int64) for r in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda index: -len(contexts[index]))
        # A trainer may share this model: sample without dropout, then give its mode back.
        was_training = self.model.training
        self.model.eval()
        try:
            matches = self._plan_prefix_reuse(contexts)
            for start in range(0, len(order), self.batch_size):
                batch_indices = order[start : start + self.batch_size]
                batch_results = self._generate_batch(
                    [requests[index] for index in batch_indices],
                    contexts=[contexts[index] for index in batch_indices],
                    matches=[matches[index] for index in batch_indices],
                    sampling=sampling,
                    topk=topk,
                )
                for index, result in zip(batch_indices, batch_results, strict=True):
                    results[index] = result
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _forward(self, **inputs):
        return self.model(use_cache=True, return_dict=True, **inputs)

    # ---- prefix cache ----

    def _weights_fingerprint(self) -> tuple:
        """Changes whenever the weights may have (module doc)."""
        parameters = list(self.model.parameters())
        with torch.no_grad():
            sums = torch.stack([p.detach().sum(dtype=torch.float32) for p in parameters])  # (P,)
        identities = tuple((p.data_ptr(), p._version) for p in parameters)
        return identities, sums.cpu().numpy().tobytes()

    def _plan_prefix_reuse(self, contexts: Sequence[np.ndarray]) -> list[PrefixMatch]:
        """The stored prefix each context reuses, after dropping a stale cache and prefilling
        the identical contexts it does not cover once."""
        cache = self.prefix_cache
        if cache is None:
            return [NO_MATCH] * len(contexts)
        fingerprint = self._weights_fingerprint()
        if fingerprint != self._prefix_cache_weights:
            cache.clear()
            self._prefix_cache_weights = fingerprint
        matches = cache.plan(contexts)
        copies = Counter(context.tobytes() for context in contexts)
        uncovered: dict[bytes, tuple[np.ndarray, PrefixMatch]] = {}
        for context, match in zip(contexts, matches, strict=True):
            key = context.tobytes()
            if copies[key] < 2 or match.length == len(context) - 1 or key in uncovered:
                continue
            if cache.fits(*(len(primed) for primed, _ in uncovered.values()), len(context)):
                uncovered[key] = (context, match)
        if not uncovered:
            return matches
        to_prime = sorted(uncovered.values(), key=lambda item: -len(item[0]))
        for start in range(0, len(to_prime), self.batch_size):
            batch = to_prime[start : start + self.batch_size]
            self._prime_batch([context for context, _ in batch], [match for _, match in batch])
        return cache.plan(contexts)  # counts the consumers afresh, primed rows included

    @torch.inference_mode()
    def _prime_batch(self, contexts: Sequence[np.ndarray], matches: Sequence[PrefixMatch]):
        outputs, attention_mask, _ = self._prefill(contexts, matches)
        cache = getattr(outputs, self._cache_keyword)
        for row, context in enumerate(contexts):
            self._store_row(cache, row=row, attention_mask=attention_mask[row], token_ids=context)

    def _store_row(
        self, cache, *, row: int, attention_mask: torch.Tensor, token_ids: np.ndarray
    ) -> None:
        """Keep the K/V of batch row `row` (its unmasked columns hold `token_ids`), if it fits."""
        if self.prefix_cache is None or not self.prefix_cache.fits(len(token_ids)):
            return
        if not (
            DynamicLayer is not None
            and type(cache) is DynamicCache
            and all(type(layer) is DynamicLayer for layer in cache.layers)
        ):
            self.prefix_cache = None  # module doc: sliding-window or other special layers
            return
        columns = attention_mask.nonzero().squeeze(1)  # (n,)
        kv = torch.stack(
            [
                torch.stack([layer.keys[row][:, columns], layer.values[row][:, columns]])
                for layer in cache.layers
            ]
        )  # (layers, 2, kv_heads, n, head_dim)
        self.prefix_cache.add(token_ids, kv)

    def _reused_kv(self, matches: Sequence[PrefixMatch], past_length: int) -> DynamicCache:
        """The stored K/V of each row's match, left-padded to `past_length`."""
        stored = next(match.row.kv for match in matches if match.row is not None)
        num_layers, _, kv_heads, _, head_dim = stored.shape
        past = stored.new_zeros((num_layers, 2, len(matches), kv_heads, past_length, head_dim))
        for row, match in enumerate(matches):
            if match.row is not None:
                past[:, :, row, :, past_length - match.length :] = match.row.kv[
                    :, :, :, : match.length
                ]
        cache = DynamicCache()
        for layer in range(num_layers):
            cache.update(past[layer, 0], past[layer, 1], layer)
        return cache

    # ---- decoding ----

    def _prefill(self, contexts: Sequence[np.ndarray], matches: Sequence[PrefixMatch]):
        """Forward every context but its reused prefix; returns the outputs, the attention mask
        over the cache (B, P + S) and each row's last position (B, 1)."""
        batch_size = len(contexts)
        reused = [match.length for match in matches]
        rest_lengths = [
            len(context) - length for context, length in zip(contexts, reused, strict=True)
        ]
        past_length, rest_length = max(reused), max(rest_lengths)  # P, S
        input_ids = torch.full((batch_size, rest_length), self._pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((batch_size, rest_length), dtype=torch.long)
        attention_mask = torch.zeros((batch_size, past_length + rest_length), dtype=torch.long)
        for row, (context, length) in enumerate(zip(contexts, reused, strict=True)):
            rest = len(context) - length
            input_ids[row, rest_length - rest :] = torch.from_numpy(context[length:])
            position_ids[row, rest_length - rest :] = torch.arange(length, len(context))
            attention_mask[row, past_length - length : past_length] = 1
            attention_mask[row, past_length + rest_length - rest :] = 1
        inputs = {}
        if self._logits_to_keep_keyword is not None:
            inputs[self._logits_to_keep_keyword] = 1
        if past_length:
            inputs[self._cache_keyword] = self._reused_kv(matches, past_length)
        position_ids, attention_mask = position_ids.to(self.device), attention_mask.to(self.device)
        outputs = self._forward(
            input_ids=input_ids.to(self.device),  # (B, S)
            attention_mask=attention_mask,  # (B, P + S)
            position_ids=position_ids,  # (B, S)
            **inputs,
        )
        self.context_tokens_reused += sum(reused)
        self.context_tokens_forwarded += sum(rest_lengths)
        return outputs, attention_mask, position_ids[:, -1:]

    @torch.inference_mode()
    def _generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        contexts: Sequence[np.ndarray],
        matches: Sequence[PrefixMatch],
        sampling: SamplingSettings,
        topk: int,
    ) -> list[GenerationResult]:
        device = self.device
        batch_size = len(requests)
        outputs, attention_mask, last_positions = self._prefill(contexts, matches)
        if self.prefix_cache is not None:
            for match in matches:
                self.prefix_cache.release(match)
        cache = getattr(outputs, self._cache_keyword)
        vocab_size = outputs.logits.shape[-1]
        topk = min(topk, vocab_size)

        # The tokens already in each context, for the repetition penalty.
        context_rows = torch.repeat_interleave(
            torch.arange(batch_size), torch.tensor([len(context) for context in contexts])
        )
        seen_token_mask = torch.zeros((batch_size, vocab_size), dtype=torch.bool, device=device)
        seen_token_mask[
            context_rows.to(device), torch.from_numpy(np.concatenate(contexts)).to(device)
        ] = True  # (B, V)

        budgets = torch.tensor([r.max_new_tokens for r in requests], device=device)  # (B,)
        max_steps = int(budgets.max())
        out_token_ids = torch.zeros((batch_size, max_steps), dtype=torch.long, device=device)
        out_logprobs = torch.zeros((batch_size, max_steps), dtype=torch.float32, device=device)
        out_topk_ids = torch.zeros((batch_size, max_steps, topk), dtype=torch.long, device=device)
        out_topk_logprobs = torch.zeros(
            (batch_size, max_steps, topk), dtype=torch.float32, device=device
        )
        num_generated = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        stopped_at_eos = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (B,)

        live_rows = torch.arange(batch_size, device=device)  # (b,) batch row of each live row
        for step in range(max_steps):
            logits = outputs.logits[:, -1, :].float()  # (b, V)
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # (b, V)
            if self.logprob_temperature == 1.0:
                behaviour_logprobs = raw_logprobs
            else:
                behaviour_logprobs = torch.log_softmax(logits / self.logprob_temperature, dim=-1)
            topk_logprobs, topk_ids = torch.topk(raw_logprobs, topk, dim=-1)  # (b, K), sorted
            token_ids = sample_tokens(
                logits,
                sampling=sampling,
                seen_token_mask=seen_token_mask,
                generator=self._generator,
            )  # (b,)
            out_token_ids[live_rows, step] = token_ids
            out_logprobs[live_rows, step] = behaviour_logprobs.gather(1, token_ids[:, None])[:, 0]
            out_topk_ids[live_rows, step] = topk_ids
            out_topk_logprobs[live_rows, step] = topk_logprobs
            num_generated[live_rows] = step + 1
            is_eos = torch.isin(token_ids, self._eos_ids)  # (b,)
            stopped_at_eos[live_rows] = is_eos
            finished = is_eos | (budgets[live_rows] <= step + 1)  # (b,)
            num_finished = int(finished.sum())  # the one host sync per step
            if num_finished and self.prefix_cache is not None:
                # The cache holds each row's context and the tokens sampled before this step.
                for row in finished.nonzero().squeeze(1).tolist():
                    batch_row = int(live_rows[row])
                    held_ids = out_token_ids[batch_row, :step].cpu().numpy()
                    self._store_row(
                        cache,
                        row=row,
                        attention_mask=attention_mask[row],
                        token_ids=np.concatenate([contexts[batch_row], held_ids]),
                    )
            if num_finished == len(live_rows):
                break
            if num_finished:
                keep = (~finished).nonzero().squeeze(1)  # (b',)
                live_rows, token_ids = live_rows[keep], token_ids[keep]
                attention_mask, last_positions = attention_mask[keep], last_positions[keep]
                seen_token_mask = seen_token_mask[keep]
                cache.batch_select_indices(keep)
            seen_token_mask[torch.arange(len(live_rows), device=device), token_ids] = True
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(live_rows), 1))], dim=1
            )  # (b, P + S + step + 1)
            last_positions = last_positions + 1  # (b, 1)
            outputs = self._forward(
                input_ids=token_ids[:, None],
                attention_mask=attention_mask,
                position_ids=last_positions,
                **{self._cache_keyword: cache},
            )

        lengths = num_generated.cpu().numpy()
        eos_flags = stopped_at_eos.cpu().numpy()
        token_array = out_token_ids.cpu().numpy().astype(np.int32)
        logprob_array = out_logprobs.cpu().numpy()
        topk_id_array = out_topk_ids.cpu().numpy().astype(np.int32)
        topk_logprob_array = out_topk_logprobs.cpu().numpy()
        return [
            GenerationResult(
                token_ids=token_array[row, : lengths[row]].copy(),
                logprobs=logprob_array[row, : lengths[row]].copy(),
                topk_token_ids=topk_id_array[row, : lengths[row]].copy(),
                topk_logprobs=topk_logprob_array[row, : lengths[row]].copy(),
                finish_reason="eos" if eos_flags[row] else "budget",
            )
            for row in range(batch_size)
        ]

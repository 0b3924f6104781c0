"""The HF engine against a plain full forward pass of the same tiny model (float32, CPU).

What a user would notice if these broke: stored behaviour logprobs that do not match what the
trainer recomputes (PPO ratio != 1), rows corrupted by their neighbours' padding or by rows that
finished early, sampling that ignores its settings or its seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from treerpo.engines.base import GenerationRequest, SamplingSettings
from treerpo.engines.hf import HFEngine, apply_repetition_penalty, sample_tokens, truncate_logits
from treerpo.engines.loading import load_policy, load_tokenizer

UNTRUNCATED = SamplingSettings(temperature=1.0, top_p=None, top_k=None, repetition_penalty=None)
GREEDY = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=None)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def gpt2_model(tokenizer):
    """A random GPT-2: learned absolute position embeddings, so wrong position ids under left
    padding change its outputs (RoPE models like Qwen2 are blind to a per-row position shift)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def contexts(tokenizer) -> list[list[int]]:
    """Three contexts of very different lengths, so one batch carries a lot of left padding."""
    texts = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "3 * 4 =",
        "Let x be the number.",
    ]
    token_lists = [tokenizer.encode(text) for text in texts]
    token_lists.append(token_lists[1][:1])  # a one-token context
    return token_lists


def full_forward_logits(model, context, generated) -> torch.Tensor:
    """Raw float32 logits predicting each generated token, from one unpadded forward: (T, V)."""
    sequence = torch.tensor([list(context) + [int(t) for t in generated]])  # (1, C + T)
    with torch.no_grad():
        logits = model(sequence).logits[0].float()  # (C + T, V)
    return logits[len(context) - 1 : len(context) - 1 + len(generated)]  # (T, V)


def make_engine(model, tokenizer, **kwargs) -> HFEngine:
    kwargs.setdefault("seed", 0)
    return HFEngine(model, tokenizer, **kwargs)


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_logprobs_and_topk_equal_a_full_forward_pass_under_left_padding(
    architecture, model, gpt2_model, tokenizer, contexts
):
    model = {"qwen2": model, "gpt2": gpt2_model}[architecture]
    engine = make_engine(model, tokenizer, batch_size=16, eos_token_ids=())
    budgets = [12, 20, 7, 16]
    requests = [GenerationRequest(c, n) for c, n in zip(contexts, budgets, strict=True)]
    assert len({len(c) for c in contexts}) == len(contexts)  # padding differs per row

    results = engine.generate(requests, sampling=UNTRUNCATED, topk=5)

    for context, budget, result in zip(contexts, budgets, results, strict=True):
        assert len(result.token_ids) == budget
        assert result.token_ids.dtype == np.int32 and result.logprobs.dtype == np.float32
        reference = torch.log_softmax(full_forward_logits(model, context, result.token_ids), -1)
        positions = torch.arange(budget)
        expected = reference[positions, torch.as_tensor(result.token_ids, dtype=torch.long)]
        np.testing.assert_allclose(result.logprobs, expected.numpy(), atol=TOLERANCE, rtol=0)

        assert result.topk_token_ids.shape == result.topk_logprobs.shape == (budget, 5)
        assert np.all(np.diff(result.topk_logprobs, axis=1) <= 0)  # decreasing
        reference_top = torch.topk(reference, 5, dim=-1)
        np.testing.assert_allclose(
            result.topk_logprobs, reference_top.values.numpy(), atol=TOLERANCE, rtol=0
        )
        at_returned_ids = reference.gather(1, torch.as_tensor(result.topk_token_ids).long())
        np.testing.assert_allclose(
            result.topk_logprobs, at_returned_ids.numpy(), atol=TOLERANCE, rtol=0
        )


def test_greedy_is_the_argmax_of_the_forward_pass(model, tokenizer, contexts):
    engine = make_engine(model, tokenizer, eos_token_ids=())
    results = engine.generate([GenerationRequest(c, 15) for c in contexts], sampling=GREEDY, topk=1)
    for context, result in zip(contexts, results, strict=True):
        logits = full_forward_logits(model, context, result.token_ids)
        np.testing.assert_array_equal(result.token_ids, logits.argmax(-1).numpy())
        np.testing.assert_array_equal(result.topk_token_ids[:, 0], result.token_ids)


def test_rows_finish_independently_and_come_back_in_request_order(model, tokenizer, contexts):
    """Batched greedy decoding, with rows leaving the batch at different steps, equals decoding
    each request alone; a batch size below the request count keeps request order."""
    budgets = [3, 25, 9, 14]
    requests = [GenerationRequest(c, n) for c, n in zip(contexts, budgets, strict=True)]
    sampling = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=1.3)
    batched = make_engine(model, tokenizer, batch_size=3, eos_token_ids=()).generate(
        requests, sampling=sampling, topk=4
    )
    alone = make_engine(model, tokenizer, batch_size=1, eos_token_ids=())
    for request, result in zip(requests, batched, strict=True):
        (solo,) = alone.generate([request], sampling=sampling, topk=4)
        np.testing.assert_array_equal(result.token_ids, solo.token_ids)
        np.testing.assert_allclose(result.logprobs, solo.logprobs, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(result.topk_logprobs, solo.topk_logprobs, atol=TOLERANCE)


def test_budget_stops_after_exactly_max_new_tokens(model, tokenizer, contexts):
    engine = make_engine(model, tokenizer, eos_token_ids=())
    results = engine.generate(
        [GenerationRequest(contexts[0], 1), GenerationRequest(contexts[1], 11)],
        sampling=SamplingSettings(),
        topk=3,
    )
    assert [len(r.token_ids) for r in results] == [1, 11]
    assert [r.finish_reason for r in results] == ["budget", "budget"]


def test_eos_stops_a_row_and_is_included(model, tokenizer, contexts):
    # A penalised greedy run, so that its tokens vary; one of its later tokens becomes the EOS.
    sampling = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=5.0)
    greedy = make_engine(model, tokenizer, eos_token_ids=())
    (free_run,) = greedy.generate([GenerationRequest(contexts[0], 10)], sampling=sampling, topk=2)
    first_new = next(
        i for i, t in enumerate(free_run.token_ids) if i > 1 and t not in free_run.token_ids[:i]
    )
    eos_id = int(free_run.token_ids[first_new])

    engine = make_engine(model, tokenizer, eos_token_ids=[eos_id])
    stopped, other = engine.generate(
        [GenerationRequest(contexts[0], 10), GenerationRequest(contexts[2], 10)],
        sampling=sampling,
        topk=2,
    )
    assert stopped.finish_reason == "eos"
    np.testing.assert_array_equal(stopped.token_ids, free_run.token_ids[: first_new + 1])
    assert eos_id not in other.token_ids[:-1]
    assert other.finish_reason == ("eos" if other.token_ids[-1] == eos_id else "budget")
    assert len(other.token_ids) == 10 or other.finish_reason == "eos"


def test_default_eos_ids_are_the_tokenizer_and_generation_config_ones(model, tokenizer):
    engine = make_engine(model, tokenizer)
    assert tokenizer.eos_token_id in engine.eos_token_ids
    config_eos = model.generation_config.eos_token_id
    config_eos = [config_eos] if isinstance(config_eos, int) else config_eos
    assert set(config_eos) <= set(engine.eos_token_ids)


def test_same_seed_same_samples_and_different_seed_different(model, tokenizer, contexts):
    requests = [GenerationRequest(c, 20) for c in contexts]
    sampling = SamplingSettings(temperature=1.0, top_p=0.95, top_k=50, repetition_penalty=1.1)

    def sample(seed, *, global_seed):
        torch.manual_seed(global_seed)  # the engine's own generator ignores the global RNG
        engine = make_engine(model, tokenizer, seed=seed, eos_token_ids=())
        return [r.token_ids for r in engine.generate(requests, sampling=sampling, topk=3)]

    first = sample(7, global_seed=1)
    again = sample(7, global_seed=2)
    other = sample(8, global_seed=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_consecutive_calls_draw_fresh_samples(model, tokenizer, contexts):
    engine = make_engine(model, tokenizer, eos_token_ids=())
    request = [GenerationRequest(contexts[0], 20)]
    (first,) = engine.generate(request, sampling=UNTRUNCATED, topk=1)
    (second,) = engine.generate(request, sampling=UNTRUNCATED, topk=1)
    assert not np.array_equal(first.token_ids, second.token_ids)


def test_top_k_one_sampling_is_greedy(model, tokenizer, contexts):
    requests = [GenerationRequest(c, 15) for c in contexts]
    top_one = SamplingSettings(temperature=0.7, top_p=0.9, top_k=1, repetition_penalty=1.2)
    greedy = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=1.2)
    sampled = make_engine(model, tokenizer, seed=3, eos_token_ids=()).generate(
        requests, sampling=top_one, topk=2
    )
    argmax = make_engine(model, tokenizer, seed=4, eos_token_ids=()).generate(
        requests, sampling=greedy, topk=2
    )
    for a, b in zip(sampled, argmax, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)


def test_repetition_penalty_changes_samples_not_behaviour_logprobs(model, tokenizer, contexts):
    context = contexts[0]
    request = [GenerationRequest(context, 25)]
    penalised_settings = SamplingSettings(
        temperature=0.0, top_p=None, top_k=None, repetition_penalty=3.0
    )
    (plain,) = make_engine(model, tokenizer, eos_token_ids=()).generate(
        request, sampling=GREEDY, topk=3
    )
    (penalised,) = make_engine(model, tokenizer, eos_token_ids=()).generate(
        request, sampling=penalised_settings, topk=3
    )
    assert not np.array_equal(plain.token_ids, penalised.token_ids)

    logits = full_forward_logits(model, context, penalised.token_ids)  # (T, V)
    raw = torch.log_softmax(logits, -1)
    tokens = torch.as_tensor(penalised.token_ids, dtype=torch.long)
    np.testing.assert_allclose(
        penalised.logprobs, raw[torch.arange(len(tokens)), tokens].numpy(), atol=TOLERANCE
    )
    np.testing.assert_allclose(
        penalised.topk_logprobs, torch.topk(raw, 3).values.numpy(), atol=TOLERANCE
    )
    # Each greedy choice is the argmax of the logits penalised over context + tokens so far.
    for step, token in enumerate(penalised.token_ids):
        seen = torch.zeros(logits.shape[-1], dtype=torch.bool)
        seen[torch.as_tensor(list(context) + penalised.token_ids[:step].tolist())] = True
        row = logits[step]
        expected = torch.where(seen, torch.where(row > 0, row / 3.0, row * 3.0), row)
        assert int(expected.argmax()) == int(token)


def test_logprob_temperature_tempers_behaviour_logprobs_only(model, tokenizer, contexts):
    engine = make_engine(model, tokenizer, logprob_temperature=0.5, eos_token_ids=())
    (result,) = engine.generate(
        [GenerationRequest(contexts[1], 12)], sampling=SamplingSettings(), topk=4
    )
    logits = full_forward_logits(model, contexts[1], result.token_ids)
    tokens = torch.as_tensor(result.token_ids, dtype=torch.long)
    tempered = torch.log_softmax(logits / 0.5, -1)[torch.arange(len(tokens)), tokens]
    np.testing.assert_allclose(result.logprobs, tempered.numpy(), atol=TOLERANCE, rtol=0)
    raw_top = torch.topk(torch.log_softmax(logits, -1), 4).values
    np.testing.assert_allclose(result.topk_logprobs, raw_top.numpy(), atol=TOLERANCE, rtol=0)


def test_load_weights_changes_what_the_engine_samples(tiny_model_dir, tokenizer, contexts):
    policy = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")
    engine = make_engine(policy, tokenizer, eos_token_ids=())
    request = [GenerationRequest(contexts[0], 8)]
    (before,) = engine.generate(request, sampling=GREEDY, topk=1)
    updated = {
        name: torch.randn_like(p, generator=torch.Generator().manual_seed(5))
        for name, p in policy.named_parameters()
    }
    engine.load_weights(updated.items())
    for name, parameter in policy.named_parameters():
        torch.testing.assert_close(parameter.detach(), updated[name])
    (after,) = engine.generate(request, sampling=GREEDY, topk=1)
    assert not np.array_equal(before.token_ids, after.token_ids)


# ---- the sampling transforms, on hand-made logits ----


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    penalised = apply_repetition_penalty(logits, seen_token_mask=seen, penalty=2.0)
    torch.testing.assert_close(penalised, torch.tensor([[1.0, -4.0, 2.0, -2.0]]))


def test_top_p_and_min_p_keep_the_expected_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept_by_top_p = truncate_logits(logits, top_p=0.75, min_p=None).isfinite()
    assert kept_by_top_p.tolist() == [[True, True, False, False]]
    kept_by_min_p = truncate_logits(logits, top_p=None, min_p=0.25).isfinite()
    assert kept_by_min_p.tolist() == [[True, True, True, False]]
    assert truncate_logits(logits, top_p=0.01, min_p=None).isfinite().sum() == 1


def test_sampled_frequencies_follow_the_truncated_distribution():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    num_draws = 40_000
    logits = probs.log().expand(num_draws, 4).contiguous()  # (N, 4) one draw per row
    no_seen = torch.zeros_like(logits, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)

    def frequencies(sampling):
        tokens = sample_tokens(
            logits, sampling=sampling, seen_token_mask=no_seen, generator=generator
        )
        return torch.bincount(tokens, minlength=4).float() / num_draws

    plain = frequencies(UNTRUNCATED)
    torch.testing.assert_close(plain, probs, atol=0.01, rtol=0)
    top_two = frequencies(SamplingSettings(temperature=1.0, top_p=None, top_k=2, min_p=None))
    torch.testing.assert_close(top_two, torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.01, rtol=0)
    cold = frequencies(SamplingSettings(temperature=0.5, top_p=None, top_k=None))
    tempered = probs**2 / (probs**2).sum()
    torch.testing.assert_close(cold, tempered, atol=0.01, rtol=0)

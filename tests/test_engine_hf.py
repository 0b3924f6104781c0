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


# ---- the prefix cache: KV reused between calls ----


def uncached_engine(model, tokenizer, **kwargs) -> HFEngine:
    return make_engine(model, tokenizer, prefix_cache=False, **kwargs)


def assert_same_results(cached, uncached) -> None:
    for result, reference in zip(cached, uncached, strict=True):
        np.testing.assert_array_equal(result.token_ids, reference.token_ids)
        np.testing.assert_allclose(result.logprobs, reference.logprobs, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(
            result.topk_logprobs, reference.topk_logprobs, atol=TOLERANCE, rtol=0
        )
        np.testing.assert_array_equal(result.finish_reason, reference.finish_reason)


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_prefix_cache_reuses_the_previous_rows_and_changes_no_result(
    architecture, model, gpt2_model, tokenizer, contexts
):
    """Requests shaped like tree growth's next wave, a request that leaves a stored row midway
    and one shorter than a stored row reuse exactly their longest stored prefix, and decode what
    the uncached engine decodes (greedy with a repetition penalty, which also sees the reused
    context tokens). GPT-2's absolute positions make a position error in the reused part show."""
    model = {"qwen2": model, "gpt2": gpt2_model}[architecture]
    sampling = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=1.3)
    cached = make_engine(model, tokenizer, batch_size=4, eos_token_ids=())
    uncached = uncached_engine(model, tokenizer, batch_size=4, eos_token_ids=())
    first_wave = [GenerationRequest(c, n) for c, n in zip(contexts, [20, 30, 25, 24], strict=True)]
    rows = [
        list(context) + result.token_ids.tolist()
        for context, result in zip(
            contexts, cached.generate(first_wave, sampling=sampling, topk=3), strict=True
        )
    ]
    uncached.generate(first_wave, sampling=sampling, topk=3)
    long_row = rows[0]
    prompt_length = len(contexts[0])
    assert prompt_length > 17
    diverging = long_row[: prompt_length + 5] + [
        (long_row[prompt_length + 5] + 1) % len(tokenizer),
        7,
        8,
    ]
    second_wave = {  # context -> expected reused tokens
        # alternative children: path + segment[:t] + [another token]
        tuple(long_row[: prompt_length + 9] + [11]): prompt_length + 9,
        tuple(rows[1][:-4] + [12]): len(rows[1]) - 4,
        # coverage children: path + segment[:cut], twice
        tuple(rows[2][:-6]): len(rows[2]) - 7,
        tuple(rows[3][:-2]): len(rows[3]) - 3,
        tuple(diverging): prompt_length + 5,  # shares part of a stored row only
        tuple(long_row[:17]): 16,  # shorter than the stored prompt
        tuple(range(40, 60)): 0,  # shares nothing
    }
    contexts_sent = [*second_wave, tuple(rows[2][:-6])]
    requests = [GenerationRequest(list(c), 6 + i) for i, c in enumerate(contexts_sent)]

    reused_before = cached.context_tokens_reused
    second = cached.generate(requests, sampling=sampling, topk=3)
    reference = uncached.generate(requests, sampling=sampling, topk=3)

    expected_reuse = sum(second_wave.values()) + second_wave[tuple(rows[2][:-6])]
    assert cached.context_tokens_reused - reused_before == expected_reuse
    assert uncached.context_tokens_reused == 0
    assert_same_results(second, reference)

    # A third wave extends rows of the second, whose KV was itself built on reused KV.
    third_requests = [
        GenerationRequest(list(c) + r.token_ids[:-1].tolist() + [5], 5)
        for c, r in zip(contexts_sent, second, strict=True)
    ]
    reused_before = cached.context_tokens_reused
    third = cached.generate(third_requests, sampling=sampling, topk=3)
    assert cached.context_tokens_reused - reused_before == sum(
        len(request.context_token_ids) - 1
        for request in third_requests
        if len(request.context_token_ids) > 17
    )
    assert_same_results(third, uncached.generate(third_requests, sampling=sampling, topk=3))


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_tree_growth_with_the_prefix_cache_grows_the_same_trees(
    architecture, model, gpt2_model, tokenizer, contexts
):
    """Seeded sampling through every wave of tree growth: the same trees, token for token, and
    after the first wave each request forwards only its last context token."""
    from treerpo.growth.grower import grow_trees
    from treerpo.growth.settings import TreeSettings

    model = {"qwen2": model, "gpt2": gpt2_model}[architecture]
    # Two problems share a prefix; all are longer than a cache block.
    prompts = [contexts[0], contexts[0][:20], contexts[0][30:]]
    settings = TreeSettings(
        branching="forced",  # every request after wave 1 then ends with one new (forced) token
        max_depth=3,
        min_segment_len=4,
        entropy_threshold=0.0,
        entropy_topk=8,
        coverage_children_max=3,
        coverage_min_chars=4,
        max_new_tokens=40,
    )
    sampling = SamplingSettings(temperature=1.0, top_p=0.95, top_k=40, repetition_penalty=1.1)
    grown = {}
    for prefix_cache in (True, False):
        engine = make_engine(model, tokenizer, seed=3, batch_size=8, prefix_cache=prefix_cache)
        trees, stats = grow_trees(
            engine=engine,
            tokenizer=tokenizer,
            prompts=prompts,
            settings=settings,
            sampling=sampling,
            seed=3,
        )
        grown[prefix_cache] = (trees, stats, engine.context_tokens_forwarded)
    (trees, stats, forwarded), (reference_trees, reference_stats, _) = grown[True], grown[False]
    assert stats == reference_stats
    assert stats.waves >= 4
    assert forwarded == sum(len(p) for p in prompts) + stats.requests - len(prompts)
    for tree, reference in zip(trees, reference_trees, strict=True):
        assert len(tree.nodes) == len(reference.nodes)
        for node, reference_node in zip(tree.nodes, reference.nodes, strict=True):
            np.testing.assert_array_equal(node.token_ids, reference_node.token_ids)
            np.testing.assert_allclose(
                node.logprobs, reference_node.logprobs, atol=TOLERANCE, rtol=0
            )


def test_identical_contexts_are_prefilled_once(model, tokenizer, contexts):
    """Flat sampling: eight samples of one prompt forward the prompt once, and sample what the
    uncached engine samples."""
    prompt = contexts[0]
    requests = [GenerationRequest(prompt, 10)] * 8 + [GenerationRequest(contexts[1], 10)] * 2
    cached = make_engine(model, tokenizer, seed=5, eos_token_ids=())
    results = cached.generate(requests, sampling=UNTRUNCATED, topk=2)
    reference = uncached_engine(model, tokenizer, seed=5, eos_token_ids=()).generate(
        requests, sampling=UNTRUNCATED, topk=2
    )
    assert_same_results(results, reference)
    # contexts[1] is under one block: it cannot be stored, so both copies forward it whole.
    assert len(contexts[1]) < 16
    assert cached.context_tokens_forwarded == len(prompt) + 8 + 2 * len(contexts[1])
    assert cached.context_tokens_reused == 8 * (len(prompt) - 1)
    assert len({tuple(r.token_ids) for r in results[:8]}) > 1  # still independent samples


def load_scaled_weights(engine, policy) -> None:
    engine.load_weights((name, p.detach() * 1.5) for name, p in policy.named_parameters())


def scale_in_place(engine, policy) -> None:
    """What a trainer sharing the model does: autograd's version counters see it."""
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.mul_(1.5)


def scale_through_data(engine, policy) -> None:
    """`.data` writes bypass the version counters."""
    for parameter in policy.parameters():
        parameter.data.mul_(1.5)


def fused_adamw_step(engine, policy) -> None:
    """Fused optimizers bypass the version counters too."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.05, fused=True)
    policy(torch.tensor([[3, 4, 5]])).logits.sum().backward()
    optimizer.step()


WEIGHT_CHANGES = {
    change.__name__: change
    for change in (load_scaled_weights, scale_in_place, scale_through_data, fused_adamw_step)
}


@pytest.mark.parametrize("change", list(WEIGHT_CHANGES))
def test_a_weight_change_drops_the_prefix_cache(change, tiny_model_dir, tokenizer, contexts):
    policy = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")
    engine = make_engine(policy, tokenizer, eos_token_ids=())
    (first,) = engine.generate([GenerationRequest(contexts[0], 12)], sampling=GREEDY, topk=3)
    extension = [GenerationRequest(list(contexts[0]) + first.token_ids[:-2].tolist(), 6)]
    assert len(engine.prefix_cache) == 1

    WEIGHT_CHANGES[change](engine, policy)
    reused_before = engine.context_tokens_reused
    (after,) = engine.generate(extension, sampling=GREEDY, topk=3)

    assert engine.context_tokens_reused == reused_before  # nothing stale was reused
    (reference,) = uncached_engine(policy, tokenizer, eos_token_ids=()).generate(
        extension, sampling=GREEDY, topk=3
    )
    assert_same_results([after], [reference])


def test_reset_prefix_cache_empties_it(model, tokenizer, contexts):
    engine = make_engine(model, tokenizer, eos_token_ids=())
    engine.generate([GenerationRequest(contexts[0], 5)], sampling=GREEDY, topk=1)
    assert engine.prefix_cache.num_tokens == len(contexts[0]) + 4
    engine.reset_prefix_cache()
    assert len(engine.prefix_cache) == 0 and engine.prefix_cache.num_tokens == 0


def test_the_prefix_cache_holds_the_last_call_within_its_token_budget(
    model, tokenizer, contexts, monkeypatch
):
    """Never more than `prefix_cache_max_tokens` tokens held, the previous call's rows dropped
    once reused, and rows that do not fit are not stored (their requests just forward more)."""
    prompt = contexts[0]
    row_length = len(prompt) + 29  # a row of a 30-token request: its last token has no KV
    budget = len(prompt) + row_length + 5  # room for the primed prompt and one row
    assert budget < 2 * row_length
    engine = make_engine(
        model, tokenizer, batch_size=2, eos_token_ids=(), prefix_cache_max_tokens=budget
    )
    held_after_each_add = []
    add = engine.prefix_cache.add

    def recording_add(token_ids, kv):
        add(token_ids, kv)
        held_after_each_add.append(engine.prefix_cache.num_tokens)
        assert kv.shape[3] == len(token_ids)  # (layers, 2, kv_heads, n, head_dim)

    monkeypatch.setattr(engine.prefix_cache, "add", recording_add)
    first = engine.generate([GenerationRequest(prompt, 30)] * 3, sampling=UNTRUNCATED, topk=1)
    # The prompt is primed (one row), then one finished row fits beside it.
    assert held_after_each_add == [len(prompt), len(prompt) + row_length]

    second_requests = [
        GenerationRequest(list(prompt) + r.token_ids[:10].tolist(), 20) for r in first
    ]
    second = engine.generate(second_requests, sampling=UNTRUNCATED, topk=1)
    # All three requests reuse the one stored row. The first batch's rows do not fit beside
    # it; once the second batch has been prefilled it is dropped, and that batch's row fits.
    assert held_after_each_add[2:] == [row_length]
    assert engine.prefix_cache.num_tokens == row_length

    reference = uncached_engine(model, tokenizer, batch_size=2, eos_token_ids=())
    reference.generate([GenerationRequest(prompt, 30)] * 3, sampling=UNTRUNCATED, topk=1)
    assert_same_results(second, reference.generate(second_requests, sampling=UNTRUNCATED, topk=1))

    # A call that reuses nothing drops the older rows before it decodes.
    engine.generate([GenerationRequest(list(range(100, 130)), 5)], sampling=GREEDY, topk=1)
    assert held_after_each_add[3:] == [30 + 4]
    assert max(held_after_each_add) <= budget


def test_a_zero_budget_or_a_disabled_cache_stores_nothing(model, tokenizer, contexts):
    for engine in (
        make_engine(model, tokenizer, eos_token_ids=(), prefix_cache_max_tokens=0),
        uncached_engine(model, tokenizer, eos_token_ids=()),
    ):
        (result,) = engine.generate([GenerationRequest(contexts[0], 8)], sampling=GREEDY, topk=1)
        extension = list(contexts[0]) + result.token_ids.tolist()
        engine.generate([GenerationRequest(extension, 4)] * 2, sampling=GREEDY, topk=1)
        assert engine.context_tokens_reused == 0
        assert engine.context_tokens_forwarded == len(contexts[0]) + 2 * len(extension)

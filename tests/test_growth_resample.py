"""Resample branching (DESIGN step 2, the default): every further child is a free sample.

Over a scripted engine: what is requested (the same prefix, nothing forced). Over the HF engine
and a tiny model: the root's children are independent draws from the policy, no token excluded,
so siblings share a first token exactly as often as independent samples do.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scripted_engine import EOS, ScriptedEngine, completion_of, ids, stream_policy
from test_growth_grower import PROMPT, SPLIT_STREAM, SPLIT_STREAM_HIGH_ENTROPY, TOKENIZER

from treerpo.engines.base import SamplingSettings
from treerpo.engines.hf import HFEngine
from treerpo.engines.loading import load_policy, load_tokenizer
from treerpo.growth import TreeSettings, grow_trees


def grow_scripted(policy, **overrides):
    values = dict(branching="resample", max_depth=7, min_segment_len=3, entropy_topk=8,
                  coverage_children_max=1, coverage_min_chars=4, max_new_tokens=64)
    values.update(overrides)
    engine = ScriptedEngine(policy)
    trees, stats = grow_trees(engine=engine, tokenizer=TOKENIZER, prompts=[list(PROMPT)],
                              settings=TreeSettings(**values), sampling=SamplingSettings(),
                              seed=0)
    return trees[0], stats, engine


def test_wave_one_sends_every_root_child_from_the_prompt():
    policy = stream_policy(stream=ids("a", "bb", ".") + [EOS], high_entropy_positions=set())
    tree, stats, engine = grow_scripted(policy, root_children=3)
    assert [request.context_token_ids for request in engine.calls[0]] == [list(PROMPT)] * 3
    assert stats.waves == 1
    assert len(tree.root.children) == 3
    assert not any(node.forced for node in tree.nodes)
    assert tree.root.split_entropy is not None


def test_an_entropy_split_resamples_its_second_child_from_the_same_prefix():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    tree, stats, engine = grow_scripted(policy, root_children=2, max_depth=2)
    first = tree.nodes[tree.root.children[0]]
    assert first.kind == "split"
    sampled, resampled = (tree.nodes[child] for child in first.children)
    assert not sampled.forced and not resampled.forced
    # The second child's request is the prompt + the split node's segment: nothing forced.
    split_context = list(PROMPT) + first.token_ids.tolist()
    wave_two = [request.context_token_ids for request in engine.calls[1]]
    assert split_context in wave_two
    # The scripted policy continues deterministically, so the resample equals the sample.
    assert resampled.token_ids.tolist() == sampled.token_ids.tolist()[:resampled.num_tokens]
    assert stats.decoded_tokens == stats.unique_tokens  # generate-then-cut still wastes nothing
    for request in (request for call in engine.calls for request in call):
        assert request.max_new_tokens == 64 - len(completion_of(request.context_token_ids))


def test_resample_accepts_any_logprob_temperature_and_forced_does_not():
    policy = stream_policy(stream=ids("a", "bb", ".") + [EOS], high_entropy_positions={0})
    engine = ScriptedEngine(policy, logprob_temperature=0.7)
    common = dict(tokenizer=TOKENIZER, prompts=[list(PROMPT)], sampling=SamplingSettings(),
                  seed=0)
    grow_trees(engine=engine, settings=TreeSettings(branching="resample", min_segment_len=3),
               **common)
    with pytest.raises(ValueError, match="logprob_temperature 1.0"):
        grow_trees(engine=engine, settings=TreeSettings(branching="forced", min_segment_len=3),
                   **common)


@pytest.mark.parametrize("branching", ["resample", "forced"])
def test_root_children_are_independent_policy_samples_only_when_resampled(
    tiny_model_dir, branching
):
    """Draw 4 root children for 300 copies of one prompt (one token each, temperature 0.07 so
    the mass sits on a few tokens). Resample: each child's first token follows the policy, and
    siblings coincide as often as independent draws (sum_i p_i^2 per pair). Forced: never."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")
    prompt = tokenizer.encode("3 * 4 =")
    sampling = SamplingSettings(temperature=0.07, top_p=None, top_k=None, repetition_penalty=None)
    engine = HFEngine(model, tokenizer, seed=0, batch_size=512, eos_token_ids=())
    settings = TreeSettings(branching=branching, root_children=4, max_new_tokens=1,
                            coverage_children_max=1)
    trees, _ = grow_trees(engine=engine, tokenizer=tokenizer, prompts=[prompt] * 300,
                          settings=settings, sampling=sampling, seed=0)
    first_tokens = np.array([[int(tree.nodes[child].token_ids[0]) for child in tree.root.children]
                             for tree in trees])  # (300, 4)
    coinciding_pairs = sum(int(a == b) for row in first_tokens
                           for a, b in itertools.combinations(row, 2))
    if branching == "forced":
        assert coinciding_pairs == 0
        return
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].float()  # (V,)
    probs = torch.softmax(logits / 0.07, dim=-1).numpy()  # (V,)
    num_draws = first_tokens.size
    for token in np.argsort(-probs)[:3]:  # the likeliest tokens: frequency within 4 sigma
        expected = probs[token]
        sigma = np.sqrt(expected * (1 - expected) / num_draws)
        assert abs(np.mean(first_tokens == token) - expected) < 4 * sigma + 1e-3
    pairs = 300 * 6
    same = float(np.sum(probs**2))
    assert same > 0.05  # the check below has something to see
    assert abs(coinciding_pairs / pairs - same) < 4 * np.sqrt(same * (1 - same) / pairs) + 0.01

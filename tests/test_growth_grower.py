"""Tree growth over a scripted engine: where trees branch, budgets, waves, no waste, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_engine import (
    COMPLETION_TOKENS,
    EOS,
    SEP,
    TOKEN_ID,
    VOCAB_SIZE,
    FakeTokenizer,
    ScriptedEngine,
    completion_of,
    ids,
    log_softmax,
    peaked_logits,
    stream_policy,
)

from treerpo.engines.base import GenerationResult, SamplingSettings
from treerpo.errors import RunFailure
from treerpo.growth import GrowthStats, TreeSettings, WaveProgress, grow_trees
from treerpo.growth.rules import find_coverage_cut, find_entropy_split, topk_entropy
from treerpo.trees import Tree, TreeNode

SAMPLING = SamplingSettings()
TOKENIZER = FakeTokenizer()
PROMPT = ids("a", "bb", "<sep>")

# Positions:        0    1     2    3     4     5    6    7     8     9      10    11   12   13
SPLIT_STREAM = ids("a", "bb", ".", " c", " k", ".", "a", "bb", "\n", "jj:", "ff", "a", ".", "bb",
                   " c") + [EOS]  # fmt: skip
# Positions 14 and 15: " c", EOS.
SPLIT_STREAM_HIGH_ENTROPY = {2, 3, 6, 7, 9, 10, 13, 14}


def small_settings(**overrides) -> TreeSettings:
    """Small trees; coverage off unless a test turns it on. Forced branching (the original
    release's rule) unless a test asks otherwise: resample has its own tests
    (test_growth_resample.py)."""
    values = dict(
        branching="forced",
        max_depth=7,
        min_segment_len=3,
        entropy_topk=8,
        coverage_children_max=1,
        coverage_min_chars=4,
        max_new_tokens=64,
    )
    values.update(overrides)
    return TreeSettings(**values)


def grow(policy, *, prompts=(PROMPT,), seed=0, on_wave=None, **overrides):
    engine = ScriptedEngine(policy)
    trees, stats = grow_trees(
        engine=engine,
        tokenizer=TOKENIZER,
        prompts=[list(prompt) for prompt in prompts],
        settings=small_settings(**overrides),
        sampling=SAMPLING,
        seed=seed,
        on_wave=on_wave,
    )
    return trees, stats, engine


def sampled_chain(tree: Tree) -> list[TreeNode]:
    """The nodes cut from the wave-1 result: the root's first child, then first children."""
    chain = [tree.nodes[tree.root.children[0]]]
    while chain[-1].kind == "split":
        chain.append(tree.nodes[chain[-1].children[0]])
    return chain


def without_eos_alternatives(policy):
    def wrapped(completion):
        token, logits = policy(completion)
        logits = logits.copy()
        logits[EOS] = -np.inf
        return token, logits

    return wrapped


# --- where trees branch -------------------------------------------------------------------------


def test_the_root_children_differ_in_their_first_token():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions={0})
    for seed in range(5):
        (tree,), _, _ = grow(policy, seed=seed, root_children=4)
        first_tokens = [int(tree.nodes[child].token_ids[0]) for child in tree.root.children]
        assert len(first_tokens) == 4
        assert len(set(first_tokens)) == 4
        assert first_tokens[0] == SPLIT_STREAM[0]  # the first child's token was sampled
        assert tree.root.split_entropy > 1.0


def test_an_entropy_split_lands_exactly_at_the_first_qualifying_position():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    (tree,), _, _ = grow(policy)
    chain = sampled_chain(tree)
    # 3: after "abb.". 6: 3 tokens later, after ".". 9 follows "\n" but "jj:" ends with ":", so
    # 10. 13: after ".". The last node starts at 13 and ends with EOS.
    assert [node.token_ids.tolist() for node in chain] == [
        SPLIT_STREAM[0:3],
        SPLIT_STREAM[3:6],
        SPLIT_STREAM[6:10],
        SPLIT_STREAM[10:13],
        SPLIT_STREAM[13:],
    ]
    assert [node.kind for node in chain] == ["split"] * 4 + ["leaf"]
    assert [node.depth for node in chain] == [1, 2, 3, 4, 5]
    assert all(node.split_entropy > 1.0 for node in chain[:-1])
    assert chain[-1].split_entropy is None and chain[-1].finish_reason == "eos"
    for node in chain[:-1]:
        sampled, alternative = (tree.nodes[child] for child in node.children)
        assert sampled.token_ids[0] != alternative.token_ids[0]


def test_no_entropy_split_at_max_depth():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    (tree,), _, _ = grow(policy, max_depth=3)
    chain = sampled_chain(tree)
    assert [node.token_ids.tolist() for node in chain] == [
        SPLIT_STREAM[0:3],
        SPLIT_STREAM[3:6],
        SPLIT_STREAM[6:],
    ]
    assert all(node.depth < 3 for node in tree.nodes if node.kind == "split")


def test_no_split_before_min_segment_len():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    (tree,), _, _ = grow(policy, min_segment_len=5)
    chain = sampled_chain(tree)
    # 5 tokens in: position 6 ("a" after "."); next at >= 11: 13 (after "."); then none.
    assert [node.token_ids.tolist() for node in chain] == [
        SPLIT_STREAM[0:6],
        SPLIT_STREAM[6:13],
        SPLIT_STREAM[13:],
    ]


def test_coverage_split_position_and_children():
    # chars:             1    2    1     2     2     2     2    1    2     1    1    2
    stream = ids("a", "bb", ".", "d;", " c", "ff", "o.", "g", "h!", "l", "m", "nn") + [EOS]
    policy = stream_policy(stream=stream, high_entropy_positions=set())
    (tree,), _, engine = grow(
        policy, coverage_children_max=3, coverage_min_chars=10, min_segment_len=3
    )
    # 10 characters must follow the cut: "h!" leaves "lmnn<eos>" (9), "o." leaves 12: cut after 7.
    first_child = tree.nodes[tree.root.children[0]]
    assert first_child.kind == "coverage"
    assert first_child.token_ids.tolist() == stream[:7]
    assert first_child.split_entropy is None and first_child.finish_reason is None
    coverage_children = [tree.nodes[child] for child in first_child.children]
    assert len(coverage_children) == 3
    assert coverage_children[0].token_ids.tolist() == stream[7:]  # the original continuation
    for child in coverage_children:
        assert child.kind == "leaf" and child.finish_reason == "eos"
        assert child.token_ids.tolist() == stream[7:]  # this policy continues by position
    coverage_requests = [
        request for request in engine.calls[1] if len(completion_of(request.context_token_ids)) == 7
    ]
    assert len(coverage_requests) == 2
    for request in coverage_requests:
        assert list(request.context_token_ids) == PROMPT + stream[:7]
        assert request.max_new_tokens == 64 - 7


def test_no_coverage_split_when_the_kept_part_would_be_too_short():
    stream = ids("a", "bb", ".", "d;", " c", "ff", "o.", "g", "h!", "l", "m", "nn") + [EOS]
    policy = stream_policy(stream=stream, high_entropy_positions=set())
    (tree,), _, _ = grow(policy, coverage_children_max=3, coverage_min_chars=10, min_segment_len=8)
    first_child = tree.nodes[tree.root.children[0]]
    assert first_child.kind == "leaf"
    assert first_child.token_ids.tolist() == stream


def test_coverage_children_never_split():
    stream = ids("a", "bb", ".", "d;", " c", "ff", "o.", "g", "h!", "l", "m", "nn") + [EOS]

    def every_position_high_after_wave_1(progress: WaveProgress) -> None:
        engine.policy = stream_policy(stream=stream, high_entropy_positions=range(100))

    engine = ScriptedEngine(stream_policy(stream=stream, high_entropy_positions=set()))
    (tree,), _ = grow_trees(
        engine=engine,
        tokenizer=TOKENIZER,
        prompts=[PROMPT],
        settings=small_settings(coverage_children_max=3, coverage_min_chars=10, min_segment_len=2),
        sampling=SAMPLING,
        seed=0,
        on_wave=every_position_high_after_wave_1,
    )
    first_child = tree.nodes[tree.root.children[0]]
    assert first_child.kind == "coverage"
    # The new coverage children saw high entropy after "h!" (a qualifying split point) in wave 2.
    assert all(tree.nodes[child].kind == "leaf" for child in first_child.children)
    assert any(node.kind == "split" for node in tree.nodes)  # the root alternative did split


# --- budget -------------------------------------------------------------------------------------


def test_every_path_respects_the_budget():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    (tree,), _, engine = grow(policy, max_new_tokens=8, root_children=3)
    for leaf in tree.leaves():
        path_tokens = sum(node.num_tokens for node in tree.path(leaf.index)[1:])
        assert path_tokens <= 8
        if leaf.finish_reason == "budget":
            assert path_tokens == 8
    for request in (request for call in engine.calls for request in call):
        assert request.max_new_tokens == 8 - len(completion_of(request.context_token_ids))


def test_a_forced_token_that_exhausts_the_budget_is_a_one_token_leaf():
    stream = ids("a", "bb", ".", "a", "bb", ".")
    policy = without_eos_alternatives(stream_policy(stream=stream, high_entropy_positions={3}))
    (tree,), stats, engine = grow(policy, max_new_tokens=4)
    first_child = tree.nodes[tree.root.children[0]]
    sampled, alternative = (tree.nodes[child] for child in first_child.children)
    assert sampled.token_ids.tolist() == stream[3:4] and sampled.finish_reason == "budget"
    assert alternative.num_tokens == 1 and alternative.finish_reason == "budget"
    # Wave 2 only continues the root's alternative; the budget-exhausted child sent no request.
    assert len(engine.calls[1]) == 1
    assert len(completion_of(engine.calls[1][0].context_token_ids)) == 1
    assert stats.decoded_tokens == stats.unique_tokens


@pytest.mark.parametrize("stop_token", [EOS, TOKEN_ID["s"]], ids=["tokenizer-eos", "engine-eos"])
def test_a_stop_token_alternative_is_a_finished_leaf(stop_token):
    stream = ids("a", "bb", ".", "a", "bb", ".") + [EOS]

    def policy(completion):
        position = len(completion)
        token = stream[position]
        if position == 3:  # only the sampled token and the stop token: entropy ln 2
            logits = np.full(VOCAB_SIZE, -np.inf)
            logits[[token, stop_token]] = 0.0
            return token, logits
        logits = peaked_logits(token=token, high_entropy=False)
        if token != EOS:
            logits[[EOS, stop_token]] = -np.inf  # the root's alternative never stops
        return token, logits

    engine = ScriptedEngine(policy, eos_token_ids=(EOS, stop_token))
    (tree,), stats = grow_trees(
        engine=engine,
        tokenizer=TOKENIZER,
        prompts=[PROMPT],
        settings=small_settings(entropy_threshold=0.5),
        sampling=SAMPLING,
        seed=0,
    )
    first_child = tree.nodes[tree.root.children[0]]
    alternative = tree.nodes[first_child.children[1]]
    assert alternative.token_ids.tolist() == [stop_token]
    assert alternative.kind == "leaf" and alternative.finish_reason == "eos"
    assert alternative.logprobs[0] == pytest.approx(np.log(0.5))
    assert stats.waves == 2  # wave 2 is the root's alternative only
    assert len(engine.calls[1]) == 1


# --- waves, batching, waste ---------------------------------------------------------------------


def test_waves_reach_but_never_exceed_max_depth_plus_two():
    stream = ids("a", ".") * 10
    policy = without_eos_alternatives(
        stream_policy(stream=stream, high_entropy_positions=range(99))
    )
    for max_depth in (1, 2, 3):
        _, stats, engine = grow(
            policy,
            max_depth=max_depth,
            min_segment_len=1,
            max_new_tokens=12,
            coverage_children_max=2,
            coverage_min_chars=1,
        )
        # Alternatives one level deeper each wave up to max_depth, then their coverage children.
        assert stats.waves == max_depth + 2
        assert len(engine.calls) == stats.waves


def test_each_wave_is_one_batched_call_across_problems():
    prompts = [ids("a", "<sep>"), ids("bb", "<sep>"), ids("g", "<sep>")]
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    reports: list[WaveProgress] = []
    trees, stats, engine = grow(policy, prompts=prompts, on_wave=reports.append)
    assert len(trees) == 3
    assert [tree.root.token_ids.tolist() for tree in trees] == prompts
    assert [list(request.context_token_ids) for request in engine.calls[0]] == prompts
    assert len(engine.calls) == stats.waves == len(reports)
    assert [report.requests for report in reports] == [len(call) for call in engine.calls]
    assert [report.next_requests for report in reports] == [
        len(call) for call in engine.calls[1:]
    ] + [0]
    assert stats.requests == sum(len(call) for call in engine.calls)
    assert sum(report.decoded_tokens for report in reports) + count_forced(trees) == (
        stats.decoded_tokens
    )
    assert stats.decoded_tokens == stats.unique_tokens


def count_forced(trees: list[Tree]) -> int:
    """Alternative children: every child but the first of a split (root included) node."""
    return sum(
        len(node.children) - 1
        for tree in trees
        for node in tree.nodes
        if node.kind in ("root", "split")
    )


# --- determinism, flat, engine contract ---------------------------------------------------------


def tree_signature(tree: Tree) -> list[tuple]:
    return [
        (
            node.parent,
            node.kind,
            node.token_ids.tolist(),
            node.logprobs.tolist(),
            node.finish_reason,
        )
        for node in tree.nodes
    ]


def test_growth_is_deterministic_under_seed():
    policy = stream_policy(
        stream=SPLIT_STREAM, high_entropy_positions=range(99), vary_with_context=True
    )
    overrides = dict(root_children=3, min_segment_len=2, max_new_tokens=20)
    first, first_stats, _ = grow(policy, seed=7, **overrides)
    again, again_stats, _ = grow(policy, seed=7, **overrides)
    other, _, _ = grow(policy, seed=8, **overrides)
    assert [tree_signature(tree) for tree in first] == [tree_signature(tree) for tree in again]
    assert first_stats == again_stats
    assert [tree_signature(tree) for tree in first] != [tree_signature(tree) for tree in other]


def test_flat_rollout_is_independent_samples_at_the_root():
    prompts = [ids("a", "<sep>"), ids("bb", "<sep>")]
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=SPLIT_STREAM_HIGH_ENTROPY)
    trees, stats, engine = grow(
        policy, prompts=prompts, rollout="flat", num_generations=3, coverage_children_max=4
    )
    assert stats.waves == 1 and len(engine.calls[0]) == 6
    assert (stats.num_trees, stats.num_nodes, stats.num_leaves, stats.max_depth) == (2, 8, 6, 1)
    for tree in trees:
        assert tree.rollout == "flat"
        assert tree.root.kind == "root" and tree.root.split_entropy is None
        assert len(tree.root.children) == 3
        for leaf in tree.leaves():
            assert leaf.kind == "leaf" and leaf.depth == 1 and leaf.finish_reason == "eos"
            assert leaf.token_ids.tolist() == SPLIT_STREAM  # never split, never cut
    assert stats.decoded_tokens == stats.unique_tokens == 6 * len(SPLIT_STREAM)


def test_tree_growth_refuses_a_logprob_temperature_other_than_one():
    policy = stream_policy(stream=SPLIT_STREAM, high_entropy_positions=set())
    engine = ScriptedEngine(policy, logprob_temperature=0.6)
    arguments = dict(
        engine=engine, tokenizer=TOKENIZER, prompts=[PROMPT], sampling=SAMPLING, seed=0
    )
    with pytest.raises(ValueError, match="logprob_temperature 1.0"):
        grow_trees(settings=small_settings(), **arguments)
    (tree,), _ = grow_trees(settings=small_settings(rollout="flat", num_generations=2), **arguments)
    assert tree.logprob_temperature == 0.6  # flat rollout forces no token, any value is exact


def test_a_root_with_few_possible_alternatives_gets_fewer_children():
    def policy(completion):
        token = SPLIT_STREAM[len(completion)]
        logits = np.full(VOCAB_SIZE, -np.inf)
        logits[[token, ids("g")[0]]] = 0.0  # two possible tokens at every position
        return token, logits

    (tree,), _, _ = grow(policy, root_children=4)
    assert [tree.nodes[child].token_ids[0] for child in tree.root.children] == [
        SPLIT_STREAM[0],
        ids("g")[0],
    ]


def test_an_engine_that_overruns_the_budget_is_a_run_failure():
    class OverrunningEngine(ScriptedEngine):
        def generate(self, requests, *, sampling, topk):
            return [
                GenerationResult(
                    token_ids=np.zeros(request.max_new_tokens + 1, dtype=np.int32),
                    logprobs=np.zeros(request.max_new_tokens + 1, dtype=np.float32),
                    topk_token_ids=np.zeros((request.max_new_tokens + 1, topk), dtype=np.int32),
                    topk_logprobs=np.zeros((request.max_new_tokens + 1, topk), dtype=np.float32),
                    finish_reason="budget",
                )
                for request in requests
            ]

    engine = OverrunningEngine(stream_policy(stream=SPLIT_STREAM, high_entropy_positions=set()))
    with pytest.raises(RunFailure, match="tokens for a request"):
        grow_trees(
            engine=engine,
            tokenizer=TOKENIZER,
            prompts=[PROMPT],
            settings=small_settings(),
            sampling=SAMPLING,
            seed=0,
        )


# --- invariants on random scripted streams ------------------------------------------------------


def policy_entropies(engine: ScriptedEngine, *, completion_before: list[int], segment, topk):
    """The top-k entropy the engine reports at each position of `segment`."""
    entropies = []
    for position in range(len(segment)):
        _, logits = engine.policy(tuple(completion_before + list(segment[:position])))
        entropies.append(float(topk_entropy(np.sort(log_softmax(logits))[::-1][:topk])))
    return np.array(entropies)


def assert_tree_invariants(
    tree: Tree, *, prompt: list[int], settings: TreeSettings, engine: ScriptedEngine
) -> None:
    assert tree.root.kind == "root" and tree.root.token_ids.tolist() == prompt
    assert tree.root.logprobs.size == 0
    root_first_tokens = [int(tree.nodes[child].token_ids[0]) for child in tree.root.children]
    forced = settings.branching == "forced"
    if forced:  # alternatives are distinct tokens, and the top-k may run out of them
        assert 2 <= len(root_first_tokens) <= settings.resolved_root_children
        assert len(set(root_first_tokens)) == len(root_first_tokens)
    else:  # free samples: always all of them, first tokens possibly equal
        assert len(root_first_tokens) == settings.resolved_root_children
    # Exactly the further children of the root and of entropy splits are forced, in forced mode.
    assert [tree.nodes[child].forced for child in tree.root.children] == [
        forced and ordinal > 0 for ordinal in range(len(root_first_tokens))]
    rules = dict(delimiters=settings.split_delimiters, min_segment_len=settings.min_segment_len)
    for node in tree.nodes[1:]:
        assert node.parent < node.index and node.depth <= settings.max_depth + 1
        assert node.num_tokens >= 1 and node.logprobs.shape == node.token_ids.shape
        assert node.text == TOKENIZER.decode(node.token_ids)
        assert (node.kind == "leaf") == node.is_leaf == (node.finish_reason is not None)
        assert (node.split_entropy is not None) == (node.kind == "split")
        path = tree.path(node.index)
        completion_before = [int(t) for above in path[1:-1] for t in above.token_ids]
        # Stored logprobs are the policy's raw logprobs along the path: sampled and forced alike.
        for position, token in enumerate(node.token_ids.tolist()):
            expected = engine.raw_logprob(
                completion=tuple(completion_before + node.token_ids[:position].tolist()),
                token=token,
            )
            assert node.logprobs[position] == pytest.approx(expected, abs=1e-5)
        entropies = policy_entropies(
            engine,
            completion_before=completion_before,
            segment=node.token_ids.tolist() + [int(tree.nodes[node.children[0]].token_ids[0])]
            if node.children
            else node.token_ids.tolist(),
            topk=settings.entropy_topk,
        )
        texts = [TOKENIZER.decode([token]) for token in node.token_ids.tolist()]
        parent_kind = tree.nodes[node.parent].kind
        can_split = node.depth < settings.max_depth and parent_kind != "coverage"
        if node.kind == "split":
            sampled, alternative = (tree.nodes[child] for child in node.children)
            assert (sampled.forced, alternative.forced) == (False, forced)
            if forced:
                assert sampled.token_ids[0] != alternative.token_ids[0]
            assert node.split_entropy > settings.entropy_threshold
            first_split = find_entropy_split(
                token_texts=texts + [TOKENIZER.decode(sampled.token_ids[:1])],
                entropies=entropies,
                threshold=settings.entropy_threshold,
                **rules,
            )
            assert can_split and first_split == node.num_tokens
        elif node.kind == "coverage":
            children = [tree.nodes[child] for child in node.children]
            assert len(children) == settings.coverage_children_max >= 2
            assert all(child.kind == "leaf" and not child.forced for child in children)
            tail_texts = [TOKENIZER.decode([token]) for token in children[0].token_ids.tolist()]
            cut = find_coverage_cut(
                token_texts=texts + tail_texts,
                coverage_min_chars=settings.coverage_min_chars,
                **rules,
            )
            assert cut == node.num_tokens
            assert not can_split or (
                find_entropy_split(
                    token_texts=texts + tail_texts,
                    entropies=policy_entropies(
                        engine,
                        completion_before=completion_before,
                        segment=node.token_ids.tolist() + children[0].token_ids.tolist(),
                        topk=settings.entropy_topk,
                    ),
                    threshold=settings.entropy_threshold,
                    **rules,
                )
                is None
            )
        elif parent_kind != "coverage":  # a leaf that finished its own chain: no split was due
            assert not can_split or (
                find_entropy_split(
                    token_texts=texts,
                    entropies=entropies,
                    threshold=settings.entropy_threshold,
                    **rules,
                )
                is None
            )
        if node.kind == "leaf":
            path_tokens = sum(above.num_tokens for above in path[1:])
            assert path_tokens <= settings.max_new_tokens
            if node.finish_reason == "eos":
                assert node.token_ids[-1] == EOS
            else:
                assert path_tokens == settings.max_new_tokens
        eos_positions = np.flatnonzero(node.token_ids == EOS)
        assert eos_positions.size == 0 or (
            node.kind == "leaf" and eos_positions.tolist() == [node.num_tokens - 1]
        )


@settings(max_examples=120, deadline=None)
@given(
    stream_body=st.lists(st.sampled_from(COMPLETION_TOKENS[1:]), min_size=4, max_size=24),
    stream_ends_with_eos=st.booleans(),
    high_entropy_mask=st.lists(st.booleans(), min_size=32, max_size=32),
    vary_with_context=st.booleans(),
    num_problems=st.integers(min_value=1, max_value=3),
    max_depth=st.integers(min_value=1, max_value=4),
    min_segment_len=st.integers(min_value=1, max_value=5),
    max_new_tokens=st.one_of(
        st.integers(min_value=1, max_value=4), st.integers(min_value=12, max_value=40)
    ),
    coverage_min_chars=st.integers(min_value=1, max_value=8),
    coverage_children_max=st.integers(min_value=1, max_value=3),
    root_children=st.integers(min_value=2, max_value=4),
    entropy_topk=st.integers(min_value=4, max_value=8),
    branching=st.sampled_from(["resample", "forced"]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_invariants_hold_on_random_scripted_streams(
    stream_body,
    stream_ends_with_eos,
    high_entropy_mask,
    vary_with_context,
    num_problems,
    max_depth,
    min_segment_len,
    max_new_tokens,
    coverage_min_chars,
    coverage_children_max,
    root_children,
    entropy_topk,
    branching,
    seed,
):
    tree_settings = TreeSettings(
        branching=branching,
        max_depth=max_depth,
        min_segment_len=min_segment_len,
        max_new_tokens=max_new_tokens,
        coverage_min_chars=coverage_min_chars,
        coverage_children_max=coverage_children_max,
        root_children=root_children,
        entropy_topk=entropy_topk,
    )
    prompts = [[COMPLETION_TOKENS[index], SEP] for index in range(num_problems)]
    stream = stream_body + [EOS] if stream_ends_with_eos else stream_body
    engine = ScriptedEngine(
        stream_policy(
            stream=stream,
            high_entropy_positions=np.flatnonzero(high_entropy_mask).tolist(),
            vary_with_context=vary_with_context,
        )
    )
    trees, stats = grow_trees(
        engine=engine,
        tokenizer=TOKENIZER,
        prompts=prompts,
        settings=tree_settings,
        sampling=SAMPLING,
        seed=seed,
    )
    for tree, prompt in zip(trees, prompts, strict=True):
        assert_tree_invariants(tree, prompt=prompt, settings=tree_settings, engine=engine)
    assert stats.decoded_tokens == stats.unique_tokens  # no decoded token is thrown away
    assert stats.waves <= max_depth + 2
    assert len(engine.calls) == stats.waves
    assert stats == GrowthStats(
        num_trees=num_problems,
        num_nodes=sum(len(tree.nodes) for tree in trees),
        num_leaves=sum(len(tree.leaves()) for tree in trees),
        max_depth=max(tree.max_depth for tree in trees),
        decoded_tokens=stats.decoded_tokens,
        unique_tokens=sum(tree.num_completion_tokens for tree in trees),
        waves=stats.waves,
        requests=sum(len(call) for call in engine.calls),
    )
    for request in (request for call in engine.calls for request in call):
        completion = completion_of(request.context_token_ids)
        assert request.max_new_tokens == max_new_tokens - len(completion) >= 1

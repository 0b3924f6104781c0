"""Tree packing: layout, tree attention, targets, sub-packs, and packed == per-path logprobs.

The core property (DESIGN, "Tree-packed training"): for every token of every non-root node, the
logprob from one packed forward of the whole tree equals the logprob from forwarding that node's
root-to-node path on its own (fp32, |delta| <= 1e-5), child-first tokens included.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treerpo.training.naive import naive_token_logprobs
from treerpo.training.packed_forward import _flex_block_mask, packed_token_logprobs
from treerpo.training.packing import (
    dense_attention_mask,
    pack_tree,
    packing_stats,
    trained_token_fields,
    tree_mask_mod,
)
from treerpo.trees import Tree, build_tree

TOLERANCE = 1e-5


def make_tree(
    *, parents: list[int | None], token_ids: list[list[int]], logprob_temperature: float = 1.0
) -> Tree:
    """A tree with the given shape and tokens; behaviour logprobs are -0.1 * (offset + 1)."""
    return build_tree(
        parents=parents,
        kinds=["root"] + ["split"] * (len(parents) - 1),
        token_ids=[np.array(ids) for ids in token_ids],
        logprobs=[np.zeros(0)] + [-0.1 * np.arange(1, len(ids) + 1) for ids in token_ids[1:]],
        texts=[""] * len(parents),
        logprob_temperature=logprob_temperature,
    )


def hand_tree() -> Tree:
    """root(3) -> A(2) -> {C(3), D(1)}; root -> B(1). Pre-order: root, A, C, D, B."""
    return make_tree(
        parents=[None, 0, 0, 1, 1],
        token_ids=[[10, 11, 12], [20, 21], [30], [40, 41, 42], [50]],
    )


@st.composite
def random_trees(draw, *, vocab_size: int, max_nodes: int = 10, max_segment: int = 6) -> Tree:
    """Random shapes (chains to bushes), segment lengths 0..max (1 often), random token ids."""
    num_nodes = draw(st.integers(2, max_nodes))
    parents: list[int | None] = [None]
    for index in range(1, num_nodes):
        parents.append(draw(st.one_of(st.just(index - 1), st.integers(0, index - 1))))
    segment_lengths = st.one_of(st.just(1), st.integers(0, max_segment))
    lengths = [draw(st.integers(1, 8))] + [draw(segment_lengths) for _ in range(1, num_nodes)]
    token_ids = [
        draw(st.lists(st.integers(0, vocab_size - 1), min_size=n, max_size=n)) for n in lengths
    ]
    temperature = draw(st.sampled_from([1.0, 0.7]))
    return make_tree(parents=parents, token_ids=token_ids, logprob_temperature=temperature)


def longest_path_tokens(tree: Tree) -> int:
    return max(sum(node.num_tokens for node in tree.path(leaf.index)) for leaf in tree.nodes)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.config._attn_implementation == "sdpa"
    return model.eval()


# --- layout on a hand-built tree -----------------------------------------------------------


def test_hand_tree_layout_positions_and_targets():
    (pack,) = pack_tree(tree=hand_tree(), max_packed_tokens=None)
    # packed index:          0   1   2   3   4   5   6   7   8   9
    assert pack.input_ids.tolist() == [10, 11, 12, 20, 21, 40, 41, 42, 50, 30]
    assert pack.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 3]
    assert pack.segment_nodes.tolist() == [0, 1, 3, 4, 2]
    assert pack.segment_trained.tolist() == [False, True, True, True, True]
    assert pack.trained_token_indices.tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert pack.trained_nodes.tolist() == [1, 1, 3, 3, 3, 4, 2]
    assert pack.trained_offsets.tolist() == [0, 1, 0, 1, 2, 0, 0]
    # A node's first token is predicted by its parent's LAST token, not by its packed neighbour:
    # C (index 5) by A's last (4), D (index 8) by A's last (4), B (index 9) by the root's last (2).
    assert pack.predictor_indices.tolist() == [2, 3, 4, 5, 6, 4, 2]
    assert pack.position_ids[pack.predictor_indices].tolist() == [
        p - 1 for p in pack.position_ids[pack.trained_token_indices].tolist()
    ]
    stats = packing_stats(tree=hand_tree(), packs=[pack])
    assert (stats.num_packs, stats.packed_tokens, stats.unique_tokens) == (1, 10, 10)
    assert stats.trained_tokens == 7 and stats.packed_per_unique == 1.0


def test_hand_tree_attention_mask():
    (pack,) = pack_tree(tree=hand_tree(), max_packed_tokens=None)
    mask = dense_attention_mask(pack=pack)  # (1, 1, L, L)
    assert mask.shape == (1, 1, 10, 10) and mask.dtype == torch.bool

    def attends(query: int) -> list[int]:
        return torch.nonzero(mask[0, 0, query]).flatten().tolist()

    assert attends(0) == [0]
    assert attends(2) == [0, 1, 2]
    assert attends(4) == [0, 1, 2, 3, 4]  # A's last token: root + A
    assert attends(6) == [0, 1, 2, 3, 4, 5, 6]  # C: root + A + C so far
    assert attends(8) == [0, 1, 2, 3, 4, 8]  # D: not its sibling C
    assert attends(9) == [0, 1, 2, 9]  # B: not A's subtree

    additive = dense_attention_mask(pack=pack, dtype=torch.float32)  # (1, 1, L, L)
    assert torch.equal(additive == 0, mask)
    assert torch.all(additive[~mask] == torch.finfo(torch.float32).min)


def test_trained_token_fields_map_to_the_tree():
    tree = hand_tree()
    for node, advantage in zip(tree.nodes, [None, 0.5, -0.5, 0.25, -0.25], strict=True):
        node.advantage = advantage
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    fields = trained_token_fields(tree=tree, pack=pack, group_id_base=100)
    assert fields.advantages.tolist() == [0.5, 0.5, 0.25, 0.25, 0.25, -0.25, -0.5]
    assert fields.group_ids.tolist() == [100, 100, 101, 101, 101, 101, 100]
    assert fields.has_advantage.all()
    expected = [-0.1, -0.2, -0.1, -0.2, -0.3, -0.1, -0.1]
    assert torch.allclose(fields.behaviour_logprobs, torch.tensor(expected))

    tree.nodes[2].advantage = None
    fields = trained_token_fields(tree=tree, pack=pack)
    assert fields.has_advantage.tolist() == [True] * 6 + [False]


def test_sub_packs_repeat_ancestors_as_context_only():
    packs = pack_tree(tree=hand_tree(), max_packed_tokens=8)
    assert [p.segment_nodes.tolist() for p in packs] == [[0, 1, 3], [0, 1, 4, 2]]
    assert [p.segment_trained.tolist() for p in packs] == [
        [False, True, True],
        [False, False, True, True],
    ]
    second = packs[1]
    assert second.input_ids.tolist() == [10, 11, 12, 20, 21, 50, 30]
    assert second.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 3]
    assert second.trained_nodes.tolist() == [4, 2]
    assert second.predictor_indices.tolist() == [4, 2]
    stats = packing_stats(tree=hand_tree(), packs=packs)
    assert (stats.packed_tokens, stats.unique_tokens, stats.trained_tokens) == (15, 10, 7)


def test_a_path_longer_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="node 3 holds 8 tokens, more than max_packed_tokens=7"):
        pack_tree(tree=hand_tree(), max_packed_tokens=7)


def test_degenerate_trees():
    assert (
        pack_tree(tree=make_tree(parents=[None], token_ids=[[1, 2]]), max_packed_tokens=None) == []
    )
    with pytest.raises(ValueError, match="root"):
        pack_tree(tree=make_tree(parents=[None, 0], token_ids=[[], [1]]), max_packed_tokens=None)
    with pytest.raises(ValueError, match="positive"):
        pack_tree(tree=hand_tree(), max_packed_tokens=0)


# --- structural properties on random trees (no model) ----------------------------------------


@settings(max_examples=100, deadline=None)
@given(tree=random_trees(vocab_size=50, max_nodes=14), extra=st.integers(0, 20))
def test_packing_invariants_on_random_trees(tree, extra):
    limit = longest_path_tokens(tree) + extra
    for max_packed_tokens in (None, limit):
        packs = pack_tree(tree=tree, max_packed_tokens=max_packed_tokens)
        seen: list[tuple[int, int]] = []
        for pack in packs:
            if max_packed_tokens is not None:
                assert pack.num_tokens <= max_packed_tokens
            members = pack.segment_nodes.tolist()
            for node_index in members[1:]:  # ancestor-closed, parents first
                assert tree.nodes[node_index].parent in members[: members.index(node_index)]
            mask = dense_attention_mask(pack=pack)[0, 0]  # (L, L)
            trained, predictors = pack.trained_token_indices, pack.predictor_indices  # (N,)
            for node_index, offset, index, predictor in zip(
                pack.trained_nodes.tolist(),
                pack.trained_offsets.tolist(),
                trained.tolist(),
                predictors.tolist(),
                strict=True,
            ):
                node = tree.nodes[node_index]
                path_position = sum(n.num_tokens for n in tree.path(node_index)[:-1]) + offset
                assert pack.input_ids[index] == node.token_ids[offset]
                assert pack.position_ids[index] == path_position
                assert pack.position_ids[predictor] == path_position - 1
                assert mask[index, predictor]
                seen.append((node_index, offset))
            # Exactly the ancestors' and own earlier tokens are visible to each token.
            for index in range(pack.num_tokens):
                visible = pack.position_ids[mask[index]].tolist()
                assert visible == list(range(int(pack.position_ids[index]) + 1))
        expected = [(n.index, j) for n in tree.nodes[1:] for j in range(n.num_tokens)]
        assert sorted(seen) == sorted(expected)  # every trained token exactly once
        stats = packing_stats(tree=tree, packs=packs)
        if max_packed_tokens is None and packs:
            assert stats.packed_tokens == stats.unique_tokens


@settings(max_examples=40, deadline=None)
@given(tree=random_trees(vocab_size=50, max_nodes=10))
def test_flex_mask_mod_equals_dense_mask(tree):
    for pack in pack_tree(tree=tree, max_packed_tokens=None):
        length = pack.num_tokens
        mask_mod = tree_mask_mod(
            segment_ids=pack.segment_ids, ancestor_or_self=pack.ancestor_or_self
        )
        queries = torch.arange(length)[:, None]  # (L, 1)
        keys = torch.arange(length)[None, :]  # (1, L)
        zero = torch.tensor(0)
        assert torch.equal(
            mask_mod(zero, zero, queries, keys), dense_attention_mask(pack=pack)[0, 0]
        )


def test_flex_block_mask_skips_other_branches():
    """Two long sibling branches: the CPU-built BlockMask keeps only the blocks the tree needs."""
    rng = np.random.default_rng(0)
    tree = make_tree(
        parents=[None, 0, 0],
        token_ids=[rng.integers(0, 50, n).tolist() for n in (128, 256, 256)],
    )
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    block_mask = _flex_block_mask(pack=pack, device="cpu")
    dense = dense_attention_mask(pack=pack)[0, 0]  # (L, L)
    blocks = dense.reshape(5, 128, 5, 128).any(dim=(1, 3))  # (5, 5) any token pair visible
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), blocks)
    assert not blocks[3:, 1:3].any()  # the second branch never looks at the first


# --- packed logprobs == per-path logprobs ------------------------------------------------------


def assert_packed_equals_per_path(*, model, tree: Tree, max_packed_tokens: int | None) -> int:
    packs = pack_tree(tree=tree, max_packed_tokens=max_packed_tokens)
    temperature = tree.logprob_temperature
    with torch.no_grad():
        packed = packed_token_logprobs(model=model, packs=packs, logprob_temperature=temperature)
        per_path = naive_token_logprobs(model=model, tree=tree, logprob_temperature=temperature)
    checked = 0
    for pack, logprobs in zip(packs, packed, strict=True):
        assert logprobs.dtype == torch.float32 and logprobs.shape == (pack.num_trained_tokens,)
        expected = (
            torch.stack(
                [
                    per_path[node][offset]
                    for node, offset in zip(
                        pack.trained_nodes.tolist(), pack.trained_offsets.tolist(), strict=True
                    )
                ]
            )
            if pack.num_trained_tokens
            else torch.zeros(0)
        )  # (N,)
        assert torch.allclose(logprobs, expected, rtol=0.0, atol=TOLERANCE), (
            (logprobs - expected).abs().max()
        )
        checked += pack.num_trained_tokens
    assert checked == tree.num_completion_tokens
    return checked


def test_packed_equals_per_path_on_the_hand_tree(model):
    assert assert_packed_equals_per_path(model=model, tree=hand_tree(), max_packed_tokens=None) == 7
    assert assert_packed_equals_per_path(model=model, tree=hand_tree(), max_packed_tokens=8) == 7


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_packed_logprobs_equal_per_path_logprobs(model, data):
    tree = data.draw(random_trees(vocab_size=model.config.vocab_size, max_nodes=12))
    assert_packed_equals_per_path(model=model, tree=tree, max_packed_tokens=None)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_sub_packed_logprobs_equal_per_path_logprobs(model, data):
    tree = data.draw(random_trees(vocab_size=model.config.vocab_size, max_nodes=12))
    limit = longest_path_tokens(tree) + data.draw(st.integers(0, 6))
    assert_packed_equals_per_path(model=model, tree=tree, max_packed_tokens=limit)


def test_the_equality_check_can_fail(model):
    """Guard: the tiny model is context-sensitive enough that a plain causal forward (no tree
    mask, no path positions) or adjacent targets would miss the 1e-5 tolerance by far."""
    tree = make_tree(
        parents=[None, 0, 0, 1, 1],
        token_ids=[[10, 11, 12], [20, 21], [30, 31], [40, 41, 42], [50, 51]],
    )
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    with torch.no_grad():
        per_path = naive_token_logprobs(model=model, tree=tree)
        logits = model(input_ids=pack.input_ids[None]).logits[0]  # (L, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (L, V)
    nodes, offsets = pack.trained_nodes.tolist(), pack.trained_offsets.tolist()
    expected = torch.stack([per_path[n][o] for n, o in zip(nodes, offsets, strict=True)])  # (N,)
    targets = pack.input_ids[pack.trained_token_indices]  # (N,)
    plain_causal = logprobs[pack.predictor_indices, targets]  # (N,)
    adjacent = logprobs[pack.trained_token_indices - 1, targets]  # (N,)
    assert (plain_causal - expected).abs().max() > 100 * TOLERANCE
    assert (adjacent - expected).abs().max() > 100 * TOLERANCE


def test_eager_attention_takes_the_additive_mask(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert eager.config._attn_implementation == "eager"
    assert_packed_equals_per_path(model=eager, tree=hand_tree(), max_packed_tokens=None)


def test_attention_without_custom_masks_is_refused():
    model = SimpleNamespace(
        device=torch.device("cpu"),
        config=SimpleNamespace(_attn_implementation="flash_attention_2"),
    )
    with pytest.raises(ValueError, match="flash_attention_2"):
        packed_token_logprobs(
            model=model, packs=pack_tree(tree=hand_tree(), max_packed_tokens=None)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path: CUDA only")
def test_flex_attention_equals_per_path_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    flex = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="flex_attention"
    )
    flex = flex.to("cuda").eval()
    assert_packed_equals_per_path(model=flex, tree=hand_tree(), max_packed_tokens=None)

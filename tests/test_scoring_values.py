"""Node values (mean of ALL descendant leaves) and sibling-relative advantages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treerpo.scoring.values import (
    apply_scores,
    compute_advantages,
    compute_values,
    global_local_advantages,
    with_advantages,
)
from treerpo.trees import build_tree

# An unbalanced tree:      0 (root)
#                        /          \
#                   1 (A)            2 (B)
#                  /     \              \
#          3 (A1: 1)    4 (A2)         5 (B1: 1)   <- single child
#                      /  |  \
#                 6: 0  7: 0  8: 0
UNBALANCED_PARENTS = [None, 0, 0, 1, 1, 2, 4, 4, 4]
UNBALANCED_REWARDS = {3: 1.0, 5: 1.0, 6: 0.0, 7: 0.0, 8: 0.0}


def make_tree(parents, texts=None):
    children = {parent for parent in parents if parent is not None}
    kinds = [
        "root" if parent is None else ("split" if index in children else "leaf")
        for index, parent in enumerate(parents)
    ]
    return build_tree(
        parents=list(parents),
        kinds=kinds,
        token_ids=[np.arange(index + 1) for index in range(len(parents))],
        logprobs=[np.zeros(0 if index == 0 else index + 1) for index in range(len(parents))],
        texts=texts or [f"segment {index} " for index in range(len(parents))],
    )


def test_unbalanced_tree_values_are_leaf_means_not_child_means():
    values = compute_values(parents=UNBALANCED_PARENTS, rewards=UNBALANCED_REWARDS)
    assert values == pytest.approx([0.4, 0.25, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # The mean of the children's values would give A = (1 + 0) / 2 and root = (0.5 + 1) / 2.
    assert values[1] != pytest.approx((values[3] + values[4]) / 2)
    assert values[0] != pytest.approx((values[1] + values[2]) / 2)


def test_unbalanced_tree_advantages():
    values = compute_values(parents=UNBALANCED_PARENTS, rewards=UNBALANCED_REWARDS)
    advantages = compute_advantages(parents=UNBALANCED_PARENTS, values=values)
    expected = [None, -0.375, 0.375, 0.5, -0.5, None, 0.0, 0.0, 0.0]
    assert [a is None for a in advantages] == [e is None for e in expected]
    assert [a for a in advantages if a is not None] == pytest.approx(
        [e for e in expected if e is not None]
    )


def test_flat_grpo_group_is_reward_minus_group_mean_without_std_scaling():
    parents = [None, 0, 0, 0, 0]
    values = compute_values(parents=parents, rewards={1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0})
    advantages = compute_advantages(parents=parents, values=values)
    assert values[0] == pytest.approx(0.25)
    assert advantages[1:] == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_root_without_children_has_no_value():
    assert compute_values(parents=[None], rewards={}) == [None]
    assert compute_advantages(parents=[None], values=[None]) == [None]


@pytest.mark.parametrize(
    "rewards",
    [
        {3: 1.0, 5: 1.0, 6: 0.0, 7: 0.0},  # leaf 8 missing
        {**UNBALANCED_REWARDS, 4: 1.0},  # 4 is not a leaf
    ],
)
def test_rewards_must_cover_exactly_the_leaves(rewards):
    with pytest.raises(ValueError, match="leaves"):
        compute_values(parents=UNBALANCED_PARENTS, rewards=rewards)


def test_parents_must_come_before_children():
    with pytest.raises(ValueError, match="earlier"):
        compute_values(parents=[None, 2, 0], rewards={1: 1.0})


def test_apply_scores_fills_a_tree_and_overwrites_old_scores():
    tree = make_tree(UNBALANCED_PARENTS)
    tree.nodes[1].reward = 0.5  # a stale reward on an interior node is cleared
    apply_scores(tree, UNBALANCED_REWARDS)
    assert [node.reward for node in tree.nodes] == [None, None, None, 1.0, None, 1.0, 0.0, 0.0, 0.0]
    assert [node.value for node in tree.nodes] == pytest.approx(
        [0.4, 0.25, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    )
    assert tree.nodes[1].advantage == pytest.approx(-0.375)
    assert tree.nodes[5].advantage is None and tree.root.advantage is None

    apply_scores(tree, {3: 0.0, 5: 0.0, 6: 1.0, 7: 1.0, 8: 1.0})
    assert tree.nodes[1].value == pytest.approx(0.75)
    assert tree.nodes[3].reward == 0.0
    assert tree.nodes[1].advantage == pytest.approx(0.75 - (0.75 + 0.0) / 2)


BINARY_REWARDS = st.sampled_from([0.0, 1.0])


@st.composite
def random_trees(draw, reward_values=BINARY_REWARDS):
    num_nodes = draw(st.integers(min_value=1, max_value=40))
    parents = [None] + [draw(st.integers(0, index - 1)) for index in range(1, num_nodes)]
    has_children = {parent for parent in parents if parent is not None}
    leaves = [index for index in range(1, num_nodes) if index not in has_children]
    rewards = {leaf: draw(reward_values) for leaf in leaves}
    return parents, rewards


def descendant_leaves(parents, rewards):
    """node -> rewards of the leaves below it, by walking up from every leaf (brute force)."""
    below = {index: [] for index in range(len(parents))}
    for leaf, reward in rewards.items():
        node = leaf
        while node is not None:
            below[node].append(reward)
            node = parents[node]
    return below


@settings(max_examples=300, deadline=None)
@given(random_trees(reward_values=BINARY_REWARDS | st.floats(0.0, 1.0)))
def test_values_and_advantages_on_random_trees(tree):
    parents, rewards = tree
    values = compute_values(parents=parents, rewards=rewards)
    advantages = compute_advantages(parents=parents, values=values)

    below = descendant_leaves(parents, rewards)
    for index, value in enumerate(values):
        if below[index]:
            assert value == pytest.approx(sum(below[index]) / len(below[index]))
            assert 0.0 <= value <= 1.0
        else:
            assert index == 0 and value is None
    if rewards:
        assert values[0] == pytest.approx(sum(rewards.values()) / len(rewards))
    for leaf, reward in rewards.items():
        assert values[leaf] == reward

    groups = {}
    for index in range(1, len(parents)):
        groups.setdefault(parents[index], []).append(index)
    assert advantages[0] is None
    for group in groups.values():
        if len(group) == 1:
            assert advantages[group[0]] is None
        else:
            assert sum(advantages[index] for index in group) == pytest.approx(0.0, abs=1e-9)
            group_mean = sum(values[index] for index in group) / len(group)
            for index in group:
                assert advantages[index] == pytest.approx(values[index] - group_mean)


@settings(max_examples=50, deadline=None)
@given(random_trees())
def test_apply_scores_matches_the_pure_functions(tree):
    parents, rewards = tree
    built = make_tree(parents)
    apply_scores(built, rewards)
    values = compute_values(parents=parents, rewards=rewards)
    assert [node.value for node in built.nodes] == values
    assert [node.advantage for node in built.nodes] == compute_advantages(
        parents=parents, values=values
    )
    assert {leaf.index: leaf.reward for leaf in built.leaves()} == rewards


def test_global_local_adds_the_value_minus_the_trees_mean_leaf_reward():
    # root -> a (leaves a1 = 1, a2 = 1), b (leaf, 0), c (leaves c1 = 0, c2 = 0, c3 = 1)
    parents = [None, 0, 0, 0, 1, 1, 3, 3, 3]
    rewards = {2: 0.0, 4: 1.0, 5: 1.0, 6: 0.0, 7: 0.0, 8: 1.0}
    values = compute_values(parents=parents, rewards=rewards)
    assert values[0] == pytest.approx(0.5)  # 3 of 6 leaves
    advantages = global_local_advantages(parents=parents, values=values)
    group_mean = (1.0 + 0.0 + 1 / 3) / 3
    assert advantages[0] is None
    assert advantages[1] == pytest.approx((1.0 - group_mean) + (1.0 - 0.5))
    assert advantages[2] == pytest.approx((0.0 - group_mean) + (0.0 - 0.5))
    assert advantages[3] == pytest.approx((1 / 3 - group_mean) + (1 / 3 - 0.5))
    # a's children agree: no local signal, but both are better than the tree.
    assert advantages[4] == advantages[5] == pytest.approx(0.5)
    assert advantages[8] == pytest.approx((1.0 - 1 / 3) + 0.5)


def test_with_advantages_copies_and_leaves_the_stored_tree_alone():
    tree = build_tree(parents=[None, 0, 0, 1, 1], kinds=["root", "split", "leaf", "leaf", "leaf"],
                      token_ids=[np.array([1])] * 5, logprobs=[np.zeros(0)] + [np.zeros(1)] * 4,
                      texts=[""] * 5)
    apply_scores(tree, {2: 0.0, 3: 1.0, 4: 1.0})
    stored = [node.advantage for node in tree.nodes]
    assert with_advantages(tree, mode="local") is tree
    changed = with_advantages(tree, mode="global-local")
    assert [node.advantage for node in tree.nodes] == stored
    root_value = 2 / 3
    assert changed.nodes[3].advantage == pytest.approx(0.0 + (1.0 - root_value))
    assert changed.nodes[1].advantage == pytest.approx(stored[1] + (1.0 - root_value))
    with pytest.raises(ValueError, match="advantage mode"):
        with_advantages(tree, mode="sideways")

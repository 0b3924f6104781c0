"""The train metrics that explain learning, on a hand-built tree with forced children."""

from __future__ import annotations

import numpy as np
import pytest

from treerpo.scoring.values import apply_scores
from treerpo.training.rollout_stats import rollout_metrics, rollout_sums
from treerpo.trees import build_tree


def forced_tree():
    """root -> s (sampled, 10 tok), f (forced, 5 tok); s -> s1 (1), s2 (0), both 4 tokens;
    f -> f1 (0), f2 (0), 3 and 2 tokens. Rewards: on-policy leaves 1 and 0, forced ones 0, 0."""
    lengths = [3, 10, 5, 4, 4, 3, 2]
    tree = build_tree(
        parents=[None, 0, 0, 1, 1, 2, 2],
        kinds=["root", "split", "split", "leaf", "leaf", "leaf", "leaf"],
        token_ids=[np.ones(n, dtype=np.int32) for n in lengths],
        logprobs=[np.zeros(0)] + [np.zeros(n) for n in lengths[1:]],
        texts=[""] * 7,
        forced=[False, False, True, False, False, False, False],
    )
    apply_scores(tree, {3: 1.0, 4: 0.0, 5: 0.0, 6: 0.0})
    return tree


def test_forced_below_follows_the_path():
    assert forced_tree().forced_below() == [False, False, True, False, False, True, True]


def test_rollout_metrics_of_a_hand_built_tree():
    metrics = rollout_metrics(rollout_sums([forced_tree()]))
    assert metrics["mean_reward"] == pytest.approx(1 / 4)
    assert metrics["on_policy_reward"] == pytest.approx(1 / 2)
    # Groups: root's (values 0.5 / 0: non-zero), s's (1 / 0: non-zero), f's (0 / 0: zero).
    assert metrics["nonzero_group_share"] == pytest.approx(2 / 3)
    # Trained tokens: every non-root node (28); f1 and f2 (5 tokens) have advantage 0.
    assert metrics["nonzero_token_share"] == pytest.approx(23 / 28)
    assert metrics["forced_token_share"] == pytest.approx((5 + 3 + 2) / 28)
    assert metrics["mean_abs_advantage"] == pytest.approx((0.25 * 2 + 0.5 * 2) / 6)


def test_sums_add_over_trees_and_processes():
    one = rollout_sums([forced_tree()])
    assert rollout_sums([forced_tree(), forced_tree()]) == [2 * value for value in one]
    assert rollout_metrics([0.0] * len(one))["on_policy_reward"] is None

"""What a step's trees say about the rollouts, beside the loss: figures that explain learning.

- `mean_reward`: the mean reward of every leaf. Under forced branching most leaves sit below a
  forced first token (an off-policy action), so it understates what the policy itself scores.
- `on_policy_reward`: the mean reward of the leaves with no forced node on their path, i.e. the
  policy's own samples. With resample branching (and flat rollout) every leaf is one.
- `nonzero_group_share`: the share of sibling groups (nodes with >= 2 children) whose children
  do not all have the same value, i.e. whose advantages are not all zero.
- `nonzero_token_share`: the share of trained tokens (tokens of nodes with an advantage) whose
  advantage is non-zero: the part of the step that carries signal.
- `forced_token_share`: the share of completion tokens in nodes at or below a forced node.
- `mean_abs_advantage`: the mean |advantage| over the nodes that have one.
- `no_signal_tree_share`: the share of trees in which every advantage is zero (all leaves scored
  alike): trees the step learns nothing from.

Sums are kept per process (`rollout_sums`) and turned into figures after they are added up over
processes (`rollout_metrics`), so the figures are exact for the whole step.
"""

from __future__ import annotations

from collections.abc import Sequence

from treerpo.trees import Tree

SUM_NAMES = (
    "leaves", "reward_sum", "on_policy_leaves", "on_policy_reward_sum", "groups",
    "nonzero_groups", "trained_tokens", "nonzero_tokens", "completion_tokens", "forced_tokens",
    "advantage_nodes", "abs_advantage_sum", "trees", "no_signal_trees",
)


def rollout_sums(trees: Sequence[Tree]) -> list[float]:
    """The counts and sums behind `rollout_metrics`, in `SUM_NAMES` order."""
    sums = dict.fromkeys(SUM_NAMES, 0.0)
    for tree in trees:
        sums["trees"] += 1
        if not any(node.advantage for node in tree.nodes[1:]):  # None or 0.0 everywhere
            sums["no_signal_trees"] += 1
        forced = tree.forced_below()
        for node in tree.nodes[1:]:
            sums["completion_tokens"] += node.num_tokens
            if forced[node.index]:
                sums["forced_tokens"] += node.num_tokens
            if node.is_leaf:
                reward = node.reward or 0.0
                sums["leaves"] += 1
                sums["reward_sum"] += reward
                if not forced[node.index]:
                    sums["on_policy_leaves"] += 1
                    sums["on_policy_reward_sum"] += reward
            if node.advantage is not None:
                sums["advantage_nodes"] += 1
                sums["abs_advantage_sum"] += abs(node.advantage)
                sums["trained_tokens"] += node.num_tokens
                if node.advantage != 0.0:
                    sums["nonzero_tokens"] += node.num_tokens
        for node in tree.nodes:
            advantages = [tree.nodes[child].advantage for child in node.children]
            if len(advantages) >= 2 and all(a is not None for a in advantages):
                sums["groups"] += 1
                if any(a != 0.0 for a in advantages):
                    sums["nonzero_groups"] += 1
    return [sums[name] for name in SUM_NAMES]


def rollout_metrics(sums: Sequence[float]) -> dict[str, float | None]:
    """Figures from (summed) `rollout_sums`; None where there is nothing to average."""
    named = dict(zip(SUM_NAMES, sums, strict=True))

    def ratio(numerator: str, denominator: str) -> float | None:
        return named[numerator] / named[denominator] if named[denominator] else None

    return {
        "mean_reward": ratio("reward_sum", "leaves"),
        "on_policy_reward": ratio("on_policy_reward_sum", "on_policy_leaves"),
        "nonzero_group_share": ratio("nonzero_groups", "groups"),
        "nonzero_token_share": ratio("nonzero_tokens", "trained_tokens"),
        "forced_token_share": ratio("forced_tokens", "completion_tokens"),
        "mean_abs_advantage": ratio("abs_advantage_sum", "advantage_nodes"),
        "no_signal_tree_share": ratio("no_signal_trees", "trees"),
    }

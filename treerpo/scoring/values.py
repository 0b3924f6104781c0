"""Node values and sibling-relative advantages from leaf rewards (DESIGN steps 8 and 9).

A tree is given by `parents` (`parents[i]` is the index of node i's parent, None for the root at
index 0, and every parent comes before its children) and `rewards` (one per leaf, keyed by node
index). A leaf is a node other than the root that has no children.

- Value of a leaf = its reward.
- Value of an interior node = the mean reward of ALL the leaves below it, not the mean of its
  children's values: in an unbalanced tree the two differ, and the leaf mean is what a rollout
  from that node scores on average under the sampled tree.
  A root without children has no value (None).
- Advantage of a node c whose parent has >= 2 children = value(c) - mean(value over c and its
  siblings). No division by the group's standard deviation (unlike GRPO's default). Single
  children and the root carry no signal: None.

So each sibling group's advantages sum to zero, and the root's value is the mean of all leaves.

`global-local` advantages (TreeRL's) add a global term to the local one wherever the local one
exists: A(c) = [value(c) - sibling mean] + [value(c) - value(root)], the root's value being the
tree's mean leaf reward. A group whose children all agree then still moves when it is better or
worse than the tree as a whole; its advantages no longer sum to zero.
Everything is O(nodes): one backward pass sums leaf rewards and counts into parents (children
come after parents), one pass over sibling groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from treerpo.trees import Tree


def compute_values(
    *, parents: Sequence[int | None], rewards: Mapping[int, float]
) -> list[float | None]:
    """Value of every node: its reward for a leaf, the mean reward of its leaves otherwise."""
    children_counts = _children_counts(parents)
    leaves = {index for index in range(1, len(parents)) if children_counts[index] == 0}
    if set(rewards) != leaves:
        missing = sorted(leaves - set(rewards))[:5]
        extra = sorted(set(rewards) - leaves)[:5]
        raise ValueError(
            f"rewards must cover exactly the leaves (missing {missing}, extra {extra})"
        )
    reward_sums = [0.0] * len(parents)  # (N,) sum of the rewards of the leaves below each node
    leaf_counts = [0] * len(parents)  # (N,) number of leaves below each node
    for index, reward in rewards.items():
        reward_sums[index] = float(reward)
        leaf_counts[index] = 1
    for index in range(len(parents) - 1, 0, -1):
        parent = parents[index]
        reward_sums[parent] += reward_sums[index]
        leaf_counts[parent] += leaf_counts[index]
    return [
        reward_sums[index] / leaf_counts[index] if leaf_counts[index] else None
        for index in range(len(parents))
    ]


def compute_advantages(
    *, parents: Sequence[int | None], values: Sequence[float | None]
) -> list[float | None]:
    """Advantage of every node: value minus its sibling group's mean value (None if no siblings)."""
    _children_counts(parents)
    if len(values) != len(parents):
        raise ValueError(f"{len(values)} values for {len(parents)} nodes")
    children: list[list[int]] = [[] for _ in parents]
    for index in range(1, len(parents)):
        children[parents[index]].append(index)
    advantages: list[float | None] = [None] * len(parents)
    for group in children:
        if len(group) < 2:
            continue
        group_values = [values[index] for index in group]
        if any(value is None for value in group_values):
            raise ValueError(f"sibling group {group} has a node without a value")
        group_mean = sum(group_values) / len(group_values)
        for index, value in zip(group, group_values, strict=True):
            advantages[index] = value - group_mean
    return advantages


def global_local_advantages(
    *, parents: Sequence[int | None], values: Sequence[float | None]
) -> list[float | None]:
    """Local advantage plus value(c) - value(root), for every node that has a local advantage."""
    local = compute_advantages(parents=parents, values=values)
    root_value = values[0]
    return [None if advantage is None else advantage + (values[index] - root_value)
            for index, advantage in enumerate(local)]


ADVANTAGE_MODES = ("local", "global-local")


def with_advantages(tree: Tree, *, mode: str) -> Tree:
    """A copy of a scored `tree` whose advantages follow `mode` ("local": as stored by scoring;
    "global-local": recomputed from the stored values). The input tree is not changed."""
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    if mode == "local":
        return tree
    parents = [node.parent for node in tree.nodes]
    advantages = global_local_advantages(parents=parents,
                                         values=[node.value for node in tree.nodes])
    nodes = [replace(node, advantage=advantage, children=list(node.children))
             for node, advantage in zip(tree.nodes, advantages, strict=True)]
    return replace(tree, nodes=nodes)


def apply_scores(tree: Tree, rewards: Mapping[int, float]) -> None:
    """Fill `reward` (leaves only; None elsewhere), `value` and `advantage` of every node of `tree`.

    `rewards` maps each leaf's node index to its reward. Previous scores are overwritten.
    """
    parents = [node.parent for node in tree.nodes]
    values = compute_values(parents=parents, rewards=rewards)
    advantages = compute_advantages(parents=parents, values=values)
    for node, value, advantage in zip(tree.nodes, values, advantages, strict=True):
        reward = rewards.get(node.index)
        node.reward = None if reward is None else float(reward)
        node.value = value
        node.advantage = advantage


def _children_counts(parents: Sequence[int | None]) -> list[int]:
    if not parents or parents[0] is not None:
        raise ValueError("node 0 must be the root (parent None)")
    counts = [0] * len(parents)
    for index in range(1, len(parents)):
        parent = parents[index]
        if parent is None or not 0 <= parent < index:
            raise ValueError(f"node {index}: parent {parent} must be an earlier node")
        counts[parent] += 1
    return counts

"""The in-memory reasoning tree, shared by every stage of the pipeline.

Tree growth produces a `Tree`, the store persists and loads it, scoring fills `reward`, `value` and
`advantage`, and training packs it into one sequence.

Node numbering: `Tree.nodes[i].index == i`, index 0 is the root, and every node comes after its
parent (parents before children), so one forward pass over `nodes` sees ancestors first.
`ordinal` is the position of a node among its siblings.

Token arrays: `token_ids` is int32 and `logprobs` float32 (numpy); the store keeps them bit-exact.
The root's `token_ids` are the rendered prompt and its `logprobs` are empty; every other node's
`logprobs[j]` is the behaviour logprob of `token_ids[j]` under the sampling policy's logits divided
by `Tree.logprob_temperature`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

NodeKind = Literal["root", "split", "coverage", "leaf"]
"""root: the prompt. split: an interior node whose children came from an entropy split (or the
root split's siblings below it). coverage: an interior node whose children are coverage children
(they sample freely to the end). leaf: a node that finished (EOS or budget)."""

FinishReason = Literal["eos", "budget"]

TOKEN_DTYPE = np.dtype("<i4")
LOGPROB_DTYPE = np.dtype("<f4")


@dataclass
class TreeNode:
    index: int
    parent: int | None
    depth: int
    ordinal: int
    kind: NodeKind
    token_ids: np.ndarray  # (T,) int32
    logprobs: np.ndarray  # (T,) float32; empty for the root
    text: str
    split_entropy: float | None = None
    finish_reason: FinishReason | None = None
    forced: bool = False  # first token drawn as an alternative (branching "forced", DESIGN step 2)
    reward: float | None = None
    value: float | None = None
    advantage: float | None = None
    children: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class Tree:
    nodes: list[TreeNode]
    logprob_temperature: float = 1.0
    tree_id: int | None = None
    problem_id: int | None = None
    problem: str = ""
    reference: str = ""
    policy_version: str = ""
    rollout: Literal["tree", "flat"] = "tree"
    scored: bool = False

    @property
    def root(self) -> TreeNode:
        return self.nodes[0]

    def leaves(self) -> list[TreeNode]:
        return [node for node in self.nodes if node.is_leaf and node.parent is not None]

    def path(self, index: int) -> list[TreeNode]:
        """Nodes from the root down to `index`, both included."""
        path = []
        node: TreeNode | None = self.nodes[index]
        while node is not None:
            path.append(node)
            node = self.nodes[node.parent] if node.parent is not None else None
        return path[::-1]

    def completion_text(self, index: int) -> str:
        """The completion of the path ending at `index`: segment texts below the root, joined."""
        return "".join(node.text for node in self.path(index)[1:])

    @property
    def num_completion_tokens(self) -> int:
        return sum(node.num_tokens for node in self.nodes[1:])

    @property
    def max_depth(self) -> int:
        return max(node.depth for node in self.nodes)

    def leaf_counts(self) -> list[int]:
        """Leaves at or below each node (a leaf counts itself; a childless root has 0)."""
        counts = [1 if node.is_leaf and node.parent is not None else 0 for node in self.nodes]
        for node in reversed(self.nodes[1:]):  # children come after their parents
            counts[node.parent] += counts[node.index]
        return counts

    def group_visit_shares(self) -> list[float]:
        """Per node, the share of the tree's leaves below its parent (0.0 for the root): how
        often the sibling group the node belongs to is visited by a root-to-leaf path."""
        counts = self.leaf_counts()
        total = counts[0]
        return [0.0 if node.parent is None or total == 0 else counts[node.parent] / total
                for node in self.nodes]

    def forced_below(self) -> list[bool]:
        """Per node, whether it or one of its ancestors was forced (not an on-policy sample)."""
        flags = [False] * len(self.nodes)
        for node in self.nodes[1:]:
            flags[node.index] = node.forced or flags[node.parent]
        return flags


def build_tree(
    *,
    parents: list[int | None],
    kinds: list[NodeKind],
    token_ids: list[np.ndarray],
    logprobs: list[np.ndarray],
    texts: list[str],
    split_entropies: list[float | None] | None = None,
    finish_reasons: list[FinishReason | None] | None = None,
    forced: list[bool] | None = None,
    logprob_temperature: float = 1.0,
) -> Tree:
    """Assemble a `Tree` from parallel per-node lists (parents before children).

    Depth, ordinal and children are derived from `parents`; used by growth, the store and tests.
    """
    num_nodes = len(parents)
    if parents[0] is not None:
        raise ValueError("node 0 must be the root (parent None)")
    nodes: list[TreeNode] = []
    for index in range(num_nodes):
        parent = parents[index]
        if index > 0 and (parent is None or not 0 <= parent < index):
            raise ValueError(f"node {index}: parent {parent} must be an earlier node")
        depth = 0 if parent is None else nodes[parent].depth + 1
        ordinal = 0 if parent is None else len(nodes[parent].children)
        node = TreeNode(
            index=index,
            parent=parent,
            depth=depth,
            ordinal=ordinal,
            kind=kinds[index],
            token_ids=np.asarray(token_ids[index], dtype=TOKEN_DTYPE),
            logprobs=np.asarray(logprobs[index], dtype=LOGPROB_DTYPE),
            text=texts[index],
            split_entropy=None if split_entropies is None else split_entropies[index],
            finish_reason=None if finish_reasons is None else finish_reasons[index],
            forced=False if forced is None else bool(forced[index]),
        )
        if parent is not None:
            nodes[parent].children.append(index)
        nodes.append(node)
    return Tree(nodes=nodes, logprob_temperature=logprob_temperature)

"""Synthetic seed-shaped trees for benchmarks: a ~200-token prompt, ~150-token segments, depth up
to 7, entropy splits (two children) and coverage splits (four children that never split)."""

from __future__ import annotations

import numpy as np

from treerpo.trees import Tree, build_tree


def synthetic_tree(
    *,
    rng: np.random.Generator,
    num_nodes: int,
    max_depth: int = 7,
    prompt_len: int = 200,
    segment_len: int = 150,
    coverage_children: int = 4,
    vocab_size: int = 1000,
) -> Tree:
    """A random tree of about `num_nodes` nodes (at least that many, at most one split more).

    Grows by picking a random open node (depth < max_depth, not a coverage child) and giving it
    either an entropy split (two children) or, once, a coverage split (`coverage_children`
    leaves). Segment lengths vary ±50% around `segment_len`; logprobs are random negatives.
    """
    parents: list[int | None] = [None]
    depths = [0]
    kinds = ["root"]
    open_nodes = [0]  # nodes that may still split: the root (many times), others once
    while len(parents) < num_nodes and open_nodes:
        pick = int(rng.integers(len(open_nodes)))
        parent = open_nodes[pick]
        coverage = parent != 0 and rng.random() < 0.25
        if parent != 0:
            kinds[parent] = "coverage" if coverage else "split"
            open_nodes.pop(pick)
        for _ in range(coverage_children if coverage else 2):
            parents.append(parent)
            depths.append(depths[parent] + 1)
            kinds.append("leaf")
            if not coverage and depths[-1] < max_depth:
                open_nodes.append(len(parents) - 1)
    lengths = [prompt_len] + [
        int(rng.integers(segment_len // 2, segment_len * 3 // 2 + 1)) for _ in parents[1:]
    ]
    token_ids = [rng.integers(0, vocab_size, size=length).astype(np.int32) for length in lengths]
    logprobs = [np.zeros(0, dtype=np.float32)] + [
        -rng.exponential(1.0, size=length).astype(np.float32) for length in lengths[1:]
    ]
    texts = [" ".join(f"w{token}" for token in ids[:40]) for ids in token_ids]
    entropies = [1.0 + float(rng.random()) if kind == "split" else None for kind in kinds]
    finish = ["eos" if kind == "leaf" else None for kind in kinds]
    return build_tree(parents=parents, kinds=kinds, token_ids=token_ids, logprobs=logprobs,
                      texts=texts, split_entropies=entropies, finish_reasons=finish)

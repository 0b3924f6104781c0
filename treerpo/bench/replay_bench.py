"""`treerpo bench replay`: the tree-packed update against per-sibling-group replay.

Both compute the same TreeRPO loss on the same scored, seed-shaped synthetic trees (a ~200-token
prompt, depth up to 7, ~150-token segments, coverage children) with the same small random Qwen2
model on CPU, then backpropagate. The model has Qwen2.5-0.5B's proportions at a smaller width
(512) and depth (2), and a 32,000-token vocabulary: as in real models, the per-token MLP and LM
head are the larger cost, not the attention over a few thousand tokens.

The packed update forwards every unique token once (one packed sequence per tree with a tree
attention mask); the straightforward replay forwards, for every sibling group, each child with
its whole prefix. Reported: wall time of one update each (best of `repeats`), tokens forwarded,
the largest per-token logprob difference between the two, and the cosine between their
gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from treerpo.bench.synthetic import synthetic_tree
from treerpo.scoring.values import apply_scores
from treerpo.tiny_model import build_random_model, build_tokenizer
from treerpo.training.naive import naive_token_logprobs, naive_tree_loss
from treerpo.training.packed_forward import packed_token_logprobs, packed_tree_loss
from treerpo.training.packing import pack_tree
from treerpo.trees import Tree


@dataclass
class ReplayBenchResult:
    num_trees: int
    num_nodes: int
    packed_seconds: float
    naive_seconds: float
    packed_tokens: int
    naive_tokens: int
    unique_tokens: int
    max_abs_logprob_diff: float
    grad_cosine: float

    @property
    def speedup(self) -> float:
        return self.naive_seconds / self.packed_seconds

    @property
    def packed_per_unique(self) -> float:
        return self.packed_tokens / self.unique_tokens


def _scored_trees(*, model, num_trees: int, tree_nodes: int, prompt_len: int, segment_len: int,
                  vocab_size: int, rng: np.random.Generator) -> list[Tree]:
    trees = []
    for _ in range(num_trees):
        tree = synthetic_tree(rng=rng, num_nodes=tree_nodes, prompt_len=prompt_len,
                              segment_len=segment_len, vocab_size=vocab_size)
        # Behaviour logprobs from the model itself: the ratio starts at 1 as after generation.
        with torch.no_grad():
            per_node = naive_token_logprobs(model=model, tree=tree)
        for node, logprobs in zip(tree.nodes[1:], per_node[1:], strict=True):
            node.logprobs = logprobs.numpy().astype(np.float32)
        rewards = {leaf.index: float(rng.random() < 0.5) for leaf in tree.leaves()}
        apply_scores(tree, rewards)
        trees.append(tree)
    return trees


def _naive_tokens(tree: Tree) -> int:
    """Tokens the per-sibling-group replay forwards: every child with its whole prefix."""
    total = 0
    for parent in tree.nodes:
        if parent.children:
            prefix = sum(node.num_tokens for node in tree.path(parent.index))
            total += sum(prefix + tree.nodes[child].num_tokens for child in parent.children)
    return total


def _timed_update(model, compute_loss: Callable[[], torch.Tensor], repeats: int) -> tuple[
        float, torch.Tensor]:
    best = float("inf")
    gradient = None
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = compute_loss()
        loss.backward()
        best = min(best, time.perf_counter() - started)
        gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return best, gradient


def run_replay_bench(
    *,
    num_trees: int = 2,
    tree_nodes: int = 24,
    prompt_len: int = 200,
    segment_len: int = 150,
    hidden_size: int = 512,
    num_layers: int = 2,
    vocab_size: int = 32_000,
    repeats: int = 2,
    seed: int = 0,
) -> ReplayBenchResult:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    # Qwen2.5-0.5B's proportions (head dim 64, 2 KV heads, MLP ~5.4x wide) at a few layers.
    model = build_random_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers,
                               num_heads=max(2, hidden_size // 64), num_kv_heads=2,
                               intermediate_size=hidden_size * 11 // 2,
                               max_position_embeddings=8192, vocab_size=vocab_size,
                               seed=seed)
    model.config._attn_implementation = "sdpa"
    rng = np.random.default_rng(seed)
    trees = _scored_trees(model=model, num_trees=num_trees, tree_nodes=tree_nodes,
                          prompt_len=prompt_len, segment_len=segment_len,
                          vocab_size=vocab_size, rng=rng)
    model.train()
    packed_seconds, packed_grad = _timed_update(
        model, lambda: packed_tree_loss(model=model, trees=trees)[0], repeats)
    naive_seconds, naive_grad = _timed_update(
        model, lambda: naive_tree_loss(model=model, trees=trees)[0], repeats)
    model.eval()
    max_diff = 0.0
    packed_tokens = 0
    with torch.no_grad():
        for tree in trees:
            packs = pack_tree(tree=tree, max_packed_tokens=None)
            packed_tokens += sum(pack.num_tokens for pack in packs)
            naive = naive_token_logprobs(model=model, tree=tree)
            for pack, packed in zip(packs, packed_token_logprobs(model=model, packs=packs),
                                    strict=True):
                expected = torch.stack([naive[int(node)][int(offset)] for node, offset in zip(
                    pack.trained_nodes.tolist(), pack.trained_offsets.tolist(), strict=True)])
                max_diff = max(max_diff, float((packed - expected).abs().max()))
    cosine = torch.nn.functional.cosine_similarity(packed_grad.double(), naive_grad.double(),
                                                   dim=0)
    return ReplayBenchResult(
        num_trees=num_trees,
        num_nodes=sum(len(tree.nodes) for tree in trees),
        packed_seconds=packed_seconds,
        naive_seconds=naive_seconds,
        packed_tokens=packed_tokens,
        naive_tokens=sum(_naive_tokens(tree) for tree in trees),
        unique_tokens=sum(node.num_tokens for tree in trees for node in tree.nodes),
        max_abs_logprob_diff=max_diff,
        grad_cosine=float(cosine),
    )

"""Grow TreeRPO trees over any `Engine` (DESIGN steps 1–6) in waves: generate, then cut.

Algorithm
---------
Wave 1 sends, per problem, one request from the rendered prompt (the root, step 1) for each
child the root starts with. Every result is a continuation to EOS or budget, and the tree is cut
out of it afterwards. How a further child of the root or of an entropy split starts is the
branching mode (step 2):

- `resample` (default): it is a free sample from the same prefix, first token included, exactly
  like the first child. Wave 1 sends `root_children` requests per problem; an entropy split's
  second child is a new request from the path up to the split point. Every leaf is an on-policy
  sample.
- `forced` (the original release): wave 1 sends one request per problem; its result is the
  root's first child, and `root_children - 1` alternatives are drawn without replacement from the
  top-k at its position 0, excluding the sampled token; each becomes a child whose first token is
  forced and which needs a request. An entropy split's second child starts with an alternative
  to the sampled token, drawn the same way.

Cutting (both modes):

- Entropy splits (step 4): a node at depth < `max_depth` ends before the first qualifying position
  t of its segment (`rules.find_entropy_split`). The rest of the result, starting with the token
  sampled at t, *is* a sample of the child that starts with that token, and is searched for its
  own split points in turn. Each split also adds the second child (branching mode above).
- Coverage split (step 6): the last node of such a chain finished (EOS or budget) without an
  entropy split. Unless it is a coverage child it is cut by `rules.find_coverage_cut`: the original
  tail becomes its first coverage child, and `coverage_children_max - 1` new requests from the cut
  are the others. Coverage children never split.

Each wave batches every request the previous wave created, across all problems, into ONE
`engine.generate` call. No decoded token is thrown away: every token the engine returns lands in
exactly one node, so decoded tokens (returned + forced alternatives) == unique tree tokens.

Waves: a chain cut from a wave-w result starts at depth >= w - 1 (wave 1: depth 1), so the
second children it creates, requested in wave w + 1, sit at depth >= w. Second children exist
only at depth <= `max_depth`, so they are requested in waves 2 .. max_depth + 1. Coverage
children are requested one wave after the chain that finished and spawn nothing: at most
max_depth + 2 waves
(a test shows the bound is reached).

Budget (step 5): a request asks for `max_new_tokens` minus the completion tokens already on its
path (a forced first token included), so no root-to-leaf path exceeds `max_new_tokens`. When the
forced token alone exhausts the budget the child is a one-token leaf (finish "budget") and no
request is sent. An EOS token stays the last token of its leaf.

`rollout="flat"`: the root gets `num_generations` independent children, one wave, all leaves.

Resolutions of what DESIGN leaves open
--------------------------------------
- A forced alternative token's behaviour logprob is its raw top-k logprob. That is exactly the
  engine's behaviour logprob only when `engine.logprob_temperature == 1.0`, so forced growth
  refuses other values (ValueError). Resample growth and flat rollout force no tokens and accept
  any value.
- An alternative may be a stop token: that child is a finished one-token leaf (finish "eos").
- When fewer top-k candidates with non-zero probability are left than `root_children - 1`, the
  root gets fewer children (tiny vocabularies only).
- Coverage children may sit at depth `max_depth + 1`: DESIGN bounds entropy splits by depth, not
  the coverage split.
- `split_entropy` is set on the node that split: the root (entropy at position 0 of its first
  child's wave-1 result) and every "split" node. Coverage nodes and leaves have None.
- `forced` is True on exactly the children whose first token was drawn as an alternative.
- Alternatives (root and entropy splits) are drawn with the sampling temperature over the raw
  top-k logprobs: step 2's "exp(logprob / temperature)" read with step 10's "untempered top-k".
- "The text generated so far" (step 4) is the node's own segment text: a split needs
  `min_segment_len` tokens of it anyway. A split may fall right before EOS (its text ends with no
  delimiter); the alternative child then continues where the sampled one stopped.
- `coverage_children_max = 1` turns the coverage split off (one child carries no signal).
- Alternatives use one numpy generator per problem, seeded by (seed, problem index), drawn in a
  fixed order, so growth is deterministic under `seed` given a deterministic engine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from treerpo.engines.base import Engine, GenerationRequest, GenerationResult, SamplingSettings
from treerpo.errors import RunFailure
from treerpo.growth.rules import (
    find_coverage_cut,
    find_entropy_split,
    sample_alternative,
    topk_entropy,
)
from treerpo.growth.settings import TreeSettings
from treerpo.trees import FinishReason, NodeKind, Tree, build_tree


@dataclass(frozen=True)
class GrowthStats:
    num_trees: int
    num_nodes: int  # roots included
    num_leaves: int
    max_depth: int
    decoded_tokens: int  # tokens returned by the engine + forced alternative tokens
    unique_tokens: int  # sum of the completion segments' lengths; == decoded_tokens
    waves: int  # engine.generate calls
    requests: int  # generation requests over all waves


@dataclass(frozen=True)
class WaveProgress:
    """Reported to `on_wave` after each wave."""

    wave: int  # 1-based
    requests: int  # requests sent in this wave
    decoded_tokens: int  # tokens the engine returned in this wave
    next_requests: int  # requests queued for the next wave


@dataclass(eq=False)
class _GrowingNode:
    parent: _GrowingNode | None
    depth: int
    completion_tokens_above: int  # completion tokens on the path above this node's segment
    samples_freely: bool = False  # coverage children and flat samples: never split, never cut
    forced: bool = False  # its first token was drawn as an alternative (branching "forced")
    kind: NodeKind = "leaf"
    token_ids: list[int] = field(default_factory=list)  # the segment (the prompt for the root)
    logprobs: list[float] = field(default_factory=list)
    split_entropy: float | None = None
    finish_reason: FinishReason | None = None
    children: list[_GrowingNode] = field(default_factory=list)

    @property
    def completion_tokens_through(self) -> int:
        return 0 if self.parent is None else self.completion_tokens_above + len(self.token_ids)

    def add_child(self, *, samples_freely: bool = False) -> _GrowingNode:
        """A child below this node's (final) segment."""
        child = _GrowingNode(
            parent=self,
            depth=self.depth + 1,
            completion_tokens_above=self.completion_tokens_through,
            samples_freely=samples_freely,
        )
        self.children.append(child)
        return child

    def path_token_ids(self) -> list[int]:
        """Prompt + every segment from the root down to this node, this node's tokens included."""
        segments = []
        node: _GrowingNode | None = self
        while node is not None:
            segments.append(node.token_ids)
            node = node.parent
        return [token_id for segment in reversed(segments) for token_id in segment]


@dataclass(eq=False)
class _GrowingTree:
    root: _GrowingNode
    generator: np.random.Generator  # draws this problem's alternatives


@dataclass(eq=False)
class _PendingRequest:
    node: _GrowingNode  # the node whose segment the result continues
    tree: _GrowingTree
    splits_root: bool = False  # the wave-1 result of a tree: also decides the root split


class _TokenTexts:
    """Per-token texts, each token decoded on its own (see `rules` for why that is enough)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_ids: Sequence[int]) -> list[str]:
        texts = []
        for token_id in token_ids:
            text = self._cache.get(token_id)
            if text is None:
                text = self._tokenizer.decode([token_id])
                self._cache[token_id] = text
            texts.append(text)
        return texts


class _Grower:
    """The growth state of one `grow_trees` call: trees, counters, the cutting rules."""

    def __init__(
        self,
        *,
        settings: TreeSettings,
        alternative_temperature: float,
        token_texts: _TokenTexts,
        stop_token_ids: frozenset[int],
    ) -> None:
        self.settings = settings
        self.alternative_temperature = alternative_temperature
        self.token_texts = token_texts
        self.stop_token_ids = stop_token_ids
        self.trees: list[_GrowingTree] = []
        self.returned_tokens = 0
        self.forced_tokens = 0

    def start(self, *, prompts: Sequence[Sequence[int]], seed: int) -> list[_PendingRequest]:
        pending = []
        for problem_index, prompt in enumerate(prompts):
            root = _GrowingNode(
                parent=None, depth=0, completion_tokens_above=0, kind="root", token_ids=list(prompt)
            )
            tree = _GrowingTree(root=root, generator=np.random.default_rng([seed, problem_index]))
            self.trees.append(tree)
            if self.settings.rollout == "flat":
                for _ in range(self.settings.num_generations):
                    pending.append(_PendingRequest(root.add_child(samples_freely=True), tree))
            else:
                pending.append(_PendingRequest(root.add_child(), tree, splits_root=True))
                if self.settings.branching == "resample":  # forced: from the first one's top-k
                    for _ in range(self.settings.resolved_root_children - 1):
                        pending.append(_PendingRequest(root.add_child(), tree))
        return pending

    def request_for(self, pending: _PendingRequest) -> GenerationRequest:
        remaining = self.settings.max_new_tokens - pending.node.completion_tokens_through
        return GenerationRequest(
            context_token_ids=pending.node.path_token_ids(), max_new_tokens=remaining
        )

    def absorb(self, pending: _PendingRequest, result: GenerationResult) -> list[_PendingRequest]:
        """Cut one result into nodes; returns the requests it creates for the next wave."""
        node, tree = pending.node, pending.tree
        forced_len = len(node.token_ids)  # 0, or 1 for an alternative child's forced token
        returned_ids = [int(token_id) for token_id in result.token_ids]
        self.returned_tokens += len(returned_ids)
        segment_ids = node.token_ids + returned_ids
        segment_logprobs = node.logprobs + [float(logprob) for logprob in result.logprobs]
        segment_texts = self.token_texts(segment_ids)
        entropies = np.full(len(segment_ids), np.nan)  # (T,), unknown at a forced token
        entropies[forced_len:] = topk_entropy(result.topk_logprobs)

        def topk_at(position: int) -> tuple[np.ndarray, np.ndarray]:
            row = position - forced_len
            return result.topk_token_ids[row], result.topk_logprobs[row]

        created: list[_PendingRequest] = []
        if pending.splits_root:
            tree.root.split_entropy = float(entropies[0])
            if self.settings.branching == "forced":
                created += self._split_root(tree=tree, sampled_token=segment_ids[0],
                                            topk=topk_at(0))

        current, offset = node, 0
        while True:
            split_at = None
            if not current.samples_freely and current.depth < self.settings.max_depth:
                relative = find_entropy_split(
                    token_texts=segment_texts[offset:],
                    entropies=entropies[offset:],
                    min_segment_len=self.settings.min_segment_len,
                    delimiters=self.settings.split_delimiters,
                    threshold=self.settings.entropy_threshold,
                )
                split_at = None if relative is None else offset + relative
            if split_at is None:
                break
            current.token_ids = segment_ids[offset:split_at]
            current.logprobs = segment_logprobs[offset:split_at]
            current.kind = "split"
            current.split_entropy = float(entropies[split_at])
            sampled_child = current.add_child()
            if self.settings.branching == "resample":
                created.append(_PendingRequest(current.add_child(), tree))
            else:
                topk_ids, topk_logprobs = topk_at(split_at)
                drawn = sample_alternative(
                    topk_token_ids=topk_ids,
                    topk_logprobs=topk_logprobs,
                    exclude={segment_ids[split_at]},
                    temperature=self.alternative_temperature,
                    generator=tree.generator,
                )
                if drawn is None:  # entropy > threshold >= 0 needs two candidates with mass
                    raise RunFailure("engine top-k has no alternative at a high-entropy position")
                created += self._add_forced_child(parent=current, forced=drawn, tree=tree)
            current, offset = sampled_child, split_at

        current.token_ids = segment_ids[offset:]
        current.logprobs = segment_logprobs[offset:]
        current.finish_reason = result.finish_reason
        created += self._finish(current, segment_texts=segment_texts[offset:], tree=tree)
        return created

    def _split_root(
        self,
        *,
        tree: _GrowingTree,
        sampled_token: int,
        topk: tuple[np.ndarray, np.ndarray],
    ) -> list[_PendingRequest]:
        """Forced branching: the root's further children start with alternative tokens."""
        used_tokens = {sampled_token}
        created: list[_PendingRequest] = []
        for _ in range(self.settings.resolved_root_children - 1):
            drawn = sample_alternative(
                topk_token_ids=topk[0],
                topk_logprobs=topk[1],
                exclude=used_tokens,
                temperature=self.alternative_temperature,
                generator=tree.generator,
            )
            if drawn is None:
                break
            used_tokens.add(drawn[0])
            created += self._add_forced_child(parent=tree.root, forced=drawn, tree=tree)
        return created

    def _add_forced_child(
        self, *, parent: _GrowingNode, forced: tuple[int, float], tree: _GrowingTree
    ) -> list[_PendingRequest]:
        """A child starting with a forced alternative token: a request, or a finished leaf."""
        token_id, raw_logprob = forced
        child = parent.add_child()
        child.forced = True
        child.token_ids = [token_id]
        child.logprobs = [raw_logprob]  # == behaviour logprob at logprob_temperature 1.0
        self.forced_tokens += 1
        if token_id in self.stop_token_ids:
            child.finish_reason = "eos"
        elif child.completion_tokens_through >= self.settings.max_new_tokens:
            child.finish_reason = "budget"
        else:
            return [_PendingRequest(child, tree)]
        return self._finish(child, segment_texts=self.token_texts(child.token_ids), tree=tree)

    def _finish(
        self, node: _GrowingNode, *, segment_texts: list[str], tree: _GrowingTree
    ) -> list[_PendingRequest]:
        """A node that finished without an entropy split: a leaf, or a coverage split (step 6)."""
        node.kind = "leaf"
        if node.samples_freely or self.settings.coverage_children_max < 2:
            return []
        kept_tokens = find_coverage_cut(
            token_texts=segment_texts,
            delimiters=self.settings.split_delimiters,
            coverage_min_chars=self.settings.coverage_min_chars,
            min_segment_len=self.settings.min_segment_len,
        )
        if kept_tokens is None:
            return []
        tail_ids, tail_logprobs = node.token_ids[kept_tokens:], node.logprobs[kept_tokens:]
        node.token_ids, node.logprobs = node.token_ids[:kept_tokens], node.logprobs[:kept_tokens]
        node.kind = "coverage"
        original_tail = node.add_child(samples_freely=True)
        original_tail.token_ids, original_tail.logprobs = tail_ids, tail_logprobs
        original_tail.finish_reason, node.finish_reason = node.finish_reason, None
        return [
            _PendingRequest(node.add_child(samples_freely=True), tree)
            for _ in range(self.settings.coverage_children_max - 1)
        ]

    def build(self, *, tokenizer: Any, logprob_temperature: float) -> list[Tree]:
        return [
            self._build_tree(tree, tokenizer=tokenizer, logprob_temperature=logprob_temperature)
            for tree in self.trees
        ]

    def _build_tree(
        self, tree: _GrowingTree, *, tokenizer: Any, logprob_temperature: float
    ) -> Tree:
        # Depth-first preorder numbering: parents before children, siblings in creation order.
        ordered: list[_GrowingNode] = []
        stack = [tree.root]
        while stack:
            node = stack.pop()
            ordered.append(node)
            stack.extend(reversed(node.children))
        index_of = {node: index for index, node in enumerate(ordered)}
        built = build_tree(
            parents=[None if node.parent is None else index_of[node.parent] for node in ordered],
            kinds=[node.kind for node in ordered],
            token_ids=[np.asarray(node.token_ids) for node in ordered],
            logprobs=[np.asarray(node.logprobs) for node in ordered],
            texts=[tokenizer.decode(node.token_ids) for node in ordered],
            split_entropies=[node.split_entropy for node in ordered],
            finish_reasons=[node.finish_reason for node in ordered],
            forced=[node.forced for node in ordered],
            logprob_temperature=logprob_temperature,
        )
        built.rollout = self.settings.rollout
        return built


def _check_result(*, request: GenerationRequest, result: GenerationResult) -> None:
    num_tokens = len(result.token_ids)
    if not 1 <= num_tokens <= request.max_new_tokens:
        raise RunFailure(
            f"engine returned {num_tokens} tokens for a request of 1 to "
            f"{request.max_new_tokens} new tokens"
        )
    if (
        len(result.logprobs) != num_tokens
        or result.topk_token_ids.shape[0] != num_tokens
        or result.topk_logprobs.shape != result.topk_token_ids.shape
    ):
        raise RunFailure("engine result arrays disagree in length")


def grow_trees(
    *,
    engine: Engine,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: TreeSettings,
    sampling: SamplingSettings,
    seed: int,
    on_wave: Callable[[WaveProgress], None] | None = None,
    stop_token_ids: Collection[int] | None = None,
) -> tuple[list[Tree], GrowthStats]:
    """Grow one tree per prompt (rendered prompt token ids) with `engine`; see the module doc.

    `tokenizer` needs only `decode(list[int]) -> str` (and `eos_token_id`, if it has one).
    `stop_token_ids` are the tokens that end a completion, needed when a forced alternative token
    is one of them (the child is then a finished leaf); default: the engine's `eos_token_ids`
    (both engines have them; the protocol does not promise them) and the tokenizer's EOS.
    Alternatives are drawn with `sampling.temperature`. Returns the trees, in prompt order, and
    their statistics.
    """
    forces_tokens = settings.rollout == "tree" and settings.branching == "forced"
    if forces_tokens and engine.logprob_temperature != 1.0:
        raise ValueError(
            "forced branching needs an engine with logprob_temperature 1.0: a forced alternative "
            "token's behaviour logprob is taken from the raw top-k, which is exact only then "
            f"(got {engine.logprob_temperature})"
        )
    for problem_index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {problem_index} has no tokens")
    if stop_token_ids is None:
        tokenizer_eos_id = getattr(tokenizer, "eos_token_id", None)
        tokenizer_stop_ids = () if tokenizer_eos_id is None else (tokenizer_eos_id,)
        stop_token_ids = (*getattr(engine, "eos_token_ids", ()), *tokenizer_stop_ids)
    grower = _Grower(
        settings=settings,
        alternative_temperature=sampling.temperature,
        token_texts=_TokenTexts(tokenizer),
        stop_token_ids=frozenset(stop_token_ids),
    )
    pending = grower.start(prompts=prompts, seed=seed)
    waves = requests_sent = 0
    while pending:
        waves += 1
        requests = [grower.request_for(item) for item in pending]
        returned_before = grower.returned_tokens
        results = engine.generate(requests, sampling=sampling, topk=settings.entropy_topk)
        if len(results) != len(requests):
            raise RunFailure(f"engine answered {len(results)} of {len(requests)} requests")
        next_pending: list[_PendingRequest] = []
        for item, request, result in zip(pending, requests, results, strict=True):
            _check_result(request=request, result=result)
            next_pending += grower.absorb(item, result)
        requests_sent += len(requests)
        if on_wave is not None:
            on_wave(
                WaveProgress(
                    wave=waves,
                    requests=len(requests),
                    decoded_tokens=grower.returned_tokens - returned_before,
                    next_requests=len(next_pending),
                )
            )
        pending = next_pending

    trees = grower.build(tokenizer=tokenizer, logprob_temperature=engine.logprob_temperature)
    stats = GrowthStats(
        num_trees=len(trees),
        num_nodes=sum(len(tree.nodes) for tree in trees),
        num_leaves=sum(len(tree.leaves()) for tree in trees),
        max_depth=max((tree.max_depth for tree in trees), default=0),
        decoded_tokens=grower.returned_tokens + grower.forced_tokens,
        unique_tokens=sum(tree.num_completion_tokens for tree in trees),
        waves=waves,
        requests=requests_sent,
    )
    return trees, stats

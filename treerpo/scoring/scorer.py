"""Score trees: leaf rewards, then node values and sibling advantages (DESIGN steps 7-9).

`score_trees` rewards every leaf of every tree (the leaf's completion is its path text below the
prompt, `Tree.completion_text`), then fills `value` and `advantage` with `values.apply_scores` and
marks the tree scored. It works on the in-memory trees only; the caller writes them to the store.

Reward evaluation (math-verify, a few ms per leaf) is the bottleneck on big stores, so leaves are
scored in a pool of worker processes, in chunks of consecutive leaves (a tree's leaves share a
chunk, so the worker parses the tree's reference once). Workers are spawned, not forked: the
caller may hold threads (torch) that fork would copy in an inconsistent state. The reward function
travels by its spec string and each worker imports it. `workers=1` scores in this process, and
so does `workers=None` unless the first few hundred leaves show the rest would take more than a
few seconds: a pool takes a second or two to start, and integer answers (GSM8K) score at tens of
thousands of leaves per second in one process.

A user's plug-in (`--reward-fn MODULE:FUNCTION`) always runs in watched worker processes
(`treerpo.scoring.isolation`), each call under `reward_timeout` seconds: a plug-in that exits,
crashes or hangs is reported as that plug-in's failure, never as treerpo's own exit or a hang.
The default reward (treerpo's own code) runs as described above.

All or nothing: every reward is computed before any tree is touched, so when a reward function
fails (RunFailure) the trees keep their previous scores.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from treerpo.errors import RunFailure
from treerpo.scoring.isolation import DEFAULT_REWARD_TIMEOUT_S, score_isolated
from treerpo.scoring.rewards import DEFAULT_REWARD_FN, resolve_reward_fn
from treerpo.scoring.values import apply_scores
from treerpo.trees import Tree

ProgressFn = Callable[[int, int], None]
"""on_progress(done_leaves, total_leaves), called as chunks of leaves finish."""

# workers=None: score this many leaves here first, and start a pool for the rest only if they
# would take longer than this here (a spawned pool takes a second or two to start).
_PROBE_LEAVES = 256
_POOL_PAYS_OFF_S = 5.0
_CHUNKS_PER_WORKER = 8  # enough chunks to balance the load and to move the progress bar
_MAX_CHUNK_LEAVES = 256


@dataclass(frozen=True)
class LeafTask:
    """What a reward function needs for one leaf (picklable, for the worker processes)."""

    completion: str
    reference: str
    problem: str


@dataclass(frozen=True)
class ScoreStats:
    num_trees: int
    num_leaves: int
    mean_reward: float | None  # over all leaves; None without leaves
    uniform_tree_share: float | None  # share of trees whose leaves all got one reward: no signal
    mean_abs_advantage: float | None  # over the nodes that have an advantage; None if none has
    leaves_per_second: float
    seconds: float
    workers: int  # processes that computed rewards (1: in this process)


def score_trees(
    trees: Sequence[Tree],
    *,
    reward_fn_spec: str | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    reward_timeout: float = DEFAULT_REWARD_TIMEOUT_S,
) -> ScoreStats:
    """Reward every leaf, fill values and advantages, and set `scored` on every tree.

    `reward_fn_spec` is "MODULE:FUNCTION" (None: the verified-answer reward). `workers` is the
    number of processes that compute rewards: 1 scores in this process; None scores a first
    chunk here and moves the rest to one worker per CPU only if it would take more than a few
    seconds here. A plug-in runs in `workers` watched processes (None: one per CPU once there
    are enough leaves), each call within `reward_timeout` seconds. Raises BadInputError for a
    reward function that cannot be loaded (before any work) and RunFailure when it fails on a
    leaf (raises, returns a bad value, exits, crashes or times out).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    started = time.perf_counter()
    resolve_reward_fn(reward_fn_spec)  # a bad spec fails here, before a pool starts
    leaf_indices = [[leaf.index for leaf in tree.leaves()] for tree in trees]
    tasks = [
        LeafTask(
            completion=tree.completion_text(index), reference=tree.reference, problem=tree.problem
        )
        for tree, indices in zip(trees, leaf_indices, strict=True)
        for index in indices
    ]
    progress = _Progress(total=len(tasks), on_progress=on_progress)

    if reward_fn_spec not in (None, DEFAULT_REWARD_FN):
        used_workers = workers if workers is not None else min(
            _available_cpus(), max(1, len(tasks) // _PROBE_LEAVES))
        rewards = score_isolated(tasks, reward_fn_spec=reward_fn_spec, workers=used_workers,
                                 timeout_s=reward_timeout, on_done=progress.advance)
    elif workers == 1:
        rewards, used_workers = _score_in_process(tasks, reward_fn_spec, progress), 1
    elif workers is None:
        probe = tasks[:_PROBE_LEAVES]
        probe_started = time.perf_counter()
        rewards = _score_in_process(probe, reward_fn_spec, progress)
        seconds_per_leaf = (time.perf_counter() - probe_started) / max(1, len(probe))
        rest = tasks[len(probe) :]
        cpus = _available_cpus()
        if cpus > 1 and seconds_per_leaf * len(rest) > _POOL_PAYS_OFF_S:
            rewards += _score_in_pool(rest, reward_fn_spec, cpus, progress)
            used_workers = cpus
        else:
            rewards += _score_in_process(rest, reward_fn_spec, progress)
            used_workers = 1
    else:
        rewards, used_workers = _score_in_pool(tasks, reward_fn_spec, workers, progress), workers

    reward_iter = iter(rewards)
    for tree, indices in zip(trees, leaf_indices, strict=True):
        apply_scores(tree, {index: next(reward_iter) for index in indices})
        tree.scored = True
    seconds = time.perf_counter() - started
    return _stats(trees, rewards, seconds=seconds, workers=used_workers)


def score_leaf_chunk(reward_fn_spec: str | None, tasks: Sequence[LeafTask]) -> list[float]:
    """Rewards of `tasks`, in order (runs in a worker process, or in this one)."""
    reward_fn = resolve_reward_fn(reward_fn_spec)
    return [
        reward_fn(completion=task.completion, reference=task.reference, problem=task.problem)
        for task in tasks
    ]


class _Progress:
    def __init__(self, *, total: int, on_progress: ProgressFn | None) -> None:
        self.done = 0
        self.total = total
        self.on_progress = on_progress

    def advance(self, num_leaves: int) -> None:
        self.done += num_leaves
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _chunks(tasks: Sequence[LeafTask], num_workers: int) -> list[Sequence[LeafTask]]:
    size = max(
        1, min(_MAX_CHUNK_LEAVES, math.ceil(len(tasks) / (num_workers * _CHUNKS_PER_WORKER)))
    )
    return [tasks[start : start + size] for start in range(0, len(tasks), size)]


def _score_in_process(
    tasks: Sequence[LeafTask], reward_fn_spec: str | None, progress: _Progress
) -> list[float]:
    rewards: list[float] = []
    for chunk in _chunks(tasks, 1):
        rewards.extend(score_leaf_chunk(reward_fn_spec, chunk))
        progress.advance(len(chunk))
    return rewards


def _score_in_pool(
    tasks: Sequence[LeafTask], reward_fn_spec: str | None, num_workers: int, progress: _Progress
) -> list[float]:
    chunks = _chunks(tasks, num_workers)
    if not chunks:
        return []
    chunk_rewards: list[list[float]] = [[] for _ in chunks]
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(num_workers, len(chunks)), mp_context=multiprocessing.get_context("spawn")
    )
    try:
        futures = {
            pool.submit(score_leaf_chunk, reward_fn_spec, chunk): position
            for position, chunk in enumerate(chunks)
        }
        for future in concurrent.futures.as_completed(futures):
            try:
                chunk_rewards[futures[future]] = future.result()
            except BrokenProcessPool as error:
                raise RunFailure(f"a scoring worker process died: {error}") from error
            progress.advance(len(chunks[futures[future]]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [reward for rewards in chunk_rewards for reward in rewards]


def _stats(
    trees: Sequence[Tree], rewards: Sequence[float], *, seconds: float, workers: int
) -> ScoreStats:
    trees_with_leaves = [tree for tree in trees if tree.leaves()]
    uniform_trees = sum(
        len({leaf.reward for leaf in tree.leaves()}) == 1 for tree in trees_with_leaves
    )
    advantages = [
        abs(node.advantage) for tree in trees for node in tree.nodes if node.advantage is not None
    ]
    return ScoreStats(
        num_trees=len(trees),
        num_leaves=len(rewards),
        mean_reward=sum(rewards) / len(rewards) if rewards else None,
        uniform_tree_share=uniform_trees / len(trees_with_leaves) if trees_with_leaves else None,
        mean_abs_advantage=sum(advantages) / len(advantages) if advantages else None,
        leaves_per_second=len(rewards) / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        workers=workers,
    )

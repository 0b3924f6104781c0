"""`treerpo generate` as a library call: load problems, grow trees in batches, store each one.

Resumable: the run is found by name, problems that already have a tree in the run are skipped,
and every tree is written with all its nodes in one transaction, so a `kill -9` at any moment
followed by the same command ends with exactly one complete tree per problem.

Reproducible across resumes: batches are cut from the whole problem list (not from the problems
left to do) and each batch reseeds the engine with a seed of its own, so a resumed run grows the
same trees as an uninterrupted one with the same seed and batch size (batches are written all or
none, so a resume regrows whole batches).

Many workers, one run: any number of processes started with the same command share the run's
batches. Each claims the next free batch with a lease (`treerpo.store.claims`), renewed while it
grows (`LeaseKeeper`), stores its trees in one transaction, releases the claim and claims the
next; when every batch left is another live worker's, it waits, and takes over a batch whose
lease ran out (a killed worker). It stops when every problem of the run has its tree. A tree
another process stored first is skipped as done, so there is exactly one tree per problem
whatever crashes; the claims only keep workers from growing the same batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from treerpo.config import GenerateConfig
from treerpo.engines.base import Engine
from treerpo.errors import BadInputError
from treerpo.growth.grower import grow_trees
from treerpo.growth.leases import LeaseKeeper, default_worker_name
from treerpo.growth.settings import SamplingConfig, TreeSettings
from treerpo.problems.prompts import PromptSettings
from treerpo.problems.sources import Problem, load_problems
from treerpo.provenance import tokenizer_fingerprint
from treerpo.store import claims, repository
from treerpo.store.database import Store
from treerpo.trees import Tree

# How often a following generator with enough trees ahead looks for a newer policy.
_FOLLOW_POLL_SECONDS = 0.5


@dataclass
class GenerateSummary:
    run_name: str
    problems_total: int = 0
    problems_skipped_rows: int = 0  # dataset rows without a usable problem or reference
    problems_already_done: int = 0
    trees: int = 0
    nodes: int = 0
    leaves: int = 0
    max_depth: int = 0
    tokens_decoded: int = 0
    unique_tokens: int = 0
    seconds: float = 0.0
    store_seconds: float = 0.0  # writing trees and claiming/releasing batches
    tree_ids: list[int] = field(default_factory=list)
    worker: str = ""  # this process's --worker-name
    # The run's trees per worker once this one is done (every worker's share, this one's too).
    trees_per_worker: dict[str, int] = field(default_factory=dict)
    # --follow-policy: the last epoch reached, the step of the policy grown with last, how many
    # published checkpoints were loaded, and whether Ctrl-C / SIGTERM ended it.
    epochs: int = 0
    policy_step: int | None = None
    policy_reloads: int = 0
    interrupted: bool = False
    policy_wait_seconds: float = 0.0  # waiting for a newer policy, the trainer having enough

    @property
    def leaves_per_tree(self) -> float:
        return self.leaves / self.trees if self.trees else 0.0


ProgressCallback = Callable[[GenerateSummary], None]


def grow_and_store(
    *,
    store: Store,
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[Problem],
    problem_ids: Sequence[int],
    run_id: int,
    policy_version: str,
    prompt: PromptSettings,
    tokenizer_hash: str | None = None,
    worker: str | None = None,
    policy_step: int | None = None,
    tree_settings: TreeSettings,
    sampling: SamplingConfig,
    seed: int,
    epoch: int = 0,
    summary: GenerateSummary | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[Tree]:
    """Grow one tree per problem in one batch of waves, then store the batch's trees, each with
    all its nodes, in one transaction. Shared by `generate` and by chained training.

    The trees record their provenance: `policy_version`, the tokenizer's fingerprint
    (`tokenizer_hash`, computed from `tokenizer` when not given) and, when known, the training
    step whose weights grew them (`policy_step`)."""
    rendered = [prompt.build(tokenizer, problem.problem, messages=problem.messages)
                for problem in problems]
    trees, stats = grow_trees(
        engine=engine,
        tokenizer=tokenizer,
        prompts=[item.token_ids for item in rendered],
        settings=tree_settings,
        sampling=sampling.to_settings(),
        seed=seed,
    )
    for tree, problem, prompt_view in zip(trees, problems, rendered, strict=True):
        tree.problem = problem.problem
        tree.reference = problem.reference
        tree.root.text = prompt_view.text
        tree.rollout = tree_settings.rollout
    # One transaction for the batch: its trees grew together, so a crash before this point
    # loses all of them anyway; after it, every one is complete and visible.
    writing = time.perf_counter()
    tree_ids = repository.write_trees(
        store, trees=trees, run_id=run_id, problem_ids=problem_ids, policy_version=policy_version,
        tokenizer_hash=tokenizer_hash or tokenizer_fingerprint(tokenizer), epoch=epoch,
        worker=worker, policy_step=policy_step)
    if summary is not None:
        summary.store_seconds += time.perf_counter() - writing
        summary.trees += len(trees)
        summary.nodes += sum(len(tree.nodes) for tree in trees)
        summary.leaves += sum(len(tree.leaves()) for tree in trees)
        summary.max_depth = max([summary.max_depth, *(tree.max_depth for tree in trees)])
        summary.tree_ids.extend(tree_ids)
        summary.tokens_decoded += stats.decoded_tokens
        summary.unique_tokens += stats.unique_tokens
        if on_progress is not None:
            on_progress(summary)
    return trees


def check_run_settings(store: Store, config: GenerateConfig) -> None:
    """Refuse to resume an existing run with other tree-shaping settings (one run, one recipe):
    exit 2 naming each differing flag. A new run, or the same settings, pass."""
    name = config.resolved_run_name()
    stored = repository.stored_run_config(store, name=name, kind="generate")
    if stored is None:
        return
    differing = config.differing_settings(stored)
    if differing:
        raise BadInputError(
            f"run {name!r} exists with other settings: {'; '.join(differing)}. Resume it with "
            "its settings, or grow the new trees in another run (--run NEW-NAME)")


def run_generate(
    *,
    store: Store,
    config: GenerateConfig,
    engine: Engine,
    tokenizer: Any,
    policy_version: str,
    on_start: Callable[[GenerateSummary], None] | None = None,
    on_progress: ProgressCallback | None = None,
    on_message: Callable[[str], None] = lambda message: None,
) -> GenerateSummary:
    """Grow and store a tree for every problem of `config.data` that the run lacks; following
    a trainer (`config.follow_policy`), grow epoch after epoch with its newest published policy
    until it has published `config.until_steps` (or until Ctrl-C / SIGTERM)."""
    started = time.perf_counter()
    data = config.data
    problem_set = load_problems(dataset=data.dataset, split=data.split, config=data.dataset_config,
                                limit=data.limit, offset=data.offset,
                                problem_field=data.problem_field, answer_field=data.answer_field)
    summary = GenerateSummary(run_name=config.resolved_run_name(),
                              problems_total=len(problem_set.problems),
                              problems_skipped_rows=problem_set.skipped)
    # Check the prompt renders before touching the store (no chat template → exit 2).
    config.prompt.build(tokenizer, problem_set.problems[0].problem,
                        messages=problem_set.problems[0].messages)
    check_run_settings(store, config)
    follower = None
    if config.follow_policy is not None:
        from treerpo.growth.follow import PolicyFollower

        follower = PolicyFollower(directory=config.follow_policy, engine=engine,
                                  base_version=policy_version, on_message=on_message)
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    keyed = [(repository.ProblemKey(p.dataset, p.split, p.row_index), p.problem, p.reference)
             for p in problem_set.problems]
    # Read-only checks first, so a refusal leaves the store as it was.
    repository.refuse_run_of_other_kind(store, name=summary.run_name, kind="generate")
    repository.check_problems_unchanged(store, keyed)
    problem_ids = repository.upsert_problems(store, keyed)
    run = repository.get_or_create_run(store, name=summary.run_name, kind="generate",
                                       model=config.engine.model,
                                       config=config.model_dump(mode="json"))
    worker = config.worker_name or default_worker_name()
    summary.worker = worker
    batches = [list(range(start, min(start + config.batch_size, len(problem_ids))))
               for start in range(0, len(problem_ids), config.batch_size)]
    status = "finished"
    try:
        # Following a trainer, the run goes on epoch after epoch from its latest one.
        epoch = repository.latest_epoch(store, run_id=run.id) if follower is not None else 0
        summary.epochs = epoch
        done = repository.completed_problem_ids(store, run_id=run.id, epoch=epoch)
        summary.problems_already_done = sum(problem_id in done for problem_id in problem_ids)
        if on_start is not None:
            on_start(summary)
        with LeaseKeeper(store, run_id=run.id, worker=worker,
                         lease_seconds=config.lease_seconds):
            while True:
                if follower is not None:
                    follower.refresh()  # between batches: the newest published policy
                    if follower.reached(config.until_steps):
                        break
                    if follower.enough_ahead(
                            lambda versions, min_step: repository.count_trees_of_policies(
                                store, run_id=run.id, policy_versions=versions,
                                min_policy_step=min_step)
                            # other workers' batches being grown will land in the window too
                            + config.batch_size * claims.batches_in_flight(
                                store, run_id=run.id, other_than=worker)):
                        waiting = time.perf_counter()  # the trainer has all it can use
                        time.sleep(_FOLLOW_POLL_SECONDS)
                        summary.policy_wait_seconds += time.perf_counter() - waiting
                        continue
                pending = [index for index, rows in enumerate(batches)
                           if any(problem_ids[row] not in done for row in rows)]
                if not pending:
                    if follower is None:
                        break
                    epoch += 1
                    summary.epochs = epoch
                    done = repository.completed_problem_ids(store, run_id=run.id, epoch=epoch)
                    continue
                claiming = time.perf_counter()
                claimed = next((index for index in pending if claims.try_claim(
                    store, run_id=run.id, epoch=epoch, batch_index=index, worker=worker,
                    lease_seconds=config.lease_seconds)), None)
                summary.store_seconds += time.perf_counter() - claiming
                if claimed is None:  # every pending batch is another live worker's: wait
                    time.sleep(min(config.lease_seconds / 4, 2.0))
                else:
                    # Re-read after claiming: a worker whose lease ran out may have stored it.
                    done = repository.completed_problem_ids(store, run_id=run.id, epoch=epoch)
                    batch = [(problem_set.problems[row], problem_ids[row])
                             for row in batches[claimed] if problem_ids[row] not in done]
                    if batch:
                        seed = batch_seed(config.engine.seed, epoch * len(batches) + claimed)
                        reseed = getattr(engine, "reseed", None)
                        if reseed is not None:
                            reseed(seed)
                        grow_and_store(
                            store=store, engine=engine, tokenizer=tokenizer,
                            problems=[problem for problem, _ in batch],
                            problem_ids=[problem_id for _, problem_id in batch],
                            run_id=run.id,
                            policy_version=(follower.version if follower is not None
                                            else policy_version),
                            policy_step=follower.step if follower is not None else None,
                            tokenizer_hash=tokenizer_hash, worker=worker, prompt=config.prompt,
                            tree_settings=config.tree, sampling=config.sampling, seed=seed,
                            epoch=epoch, summary=summary, on_progress=on_progress)
                        done.update(problem_id for _, problem_id in batch)
                    releasing = time.perf_counter()
                    claims.release_claim(store, run_id=run.id, epoch=epoch, batch_index=claimed,
                                         worker=worker)
                    summary.store_seconds += time.perf_counter() - releasing
                    continue
                done = repository.completed_problem_ids(store, run_id=run.id, epoch=epoch)
    except BaseException as error:
        # A follower runs until stopped: Ctrl-C (or SIGTERM) is its normal end. The batch being
        # grown is lost whole (nothing of it was written) and its claim released above.
        if follower is None or not isinstance(error, KeyboardInterrupt):
            repository.finish_run(store, run.id, status="failed")
            raise
        status, summary.interrupted = "stopped", True
    if follower is not None:
        summary.policy_step = follower.step
        summary.policy_reloads = follower.reloads
    summary.trees_per_worker = claims.trees_per_worker(store, run_id=run.id)
    repository.finish_run(store, run.id, status=status)
    summary.seconds = time.perf_counter() - started
    return summary


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of batch `batch_index` (counted over the whole problem list) of a run seeded
    `seed`: distinct for every 0 <= seed < 2**32 and batch index below a million, and below
    2**63 (every generator accepts it)."""
    return seed * 1_000_003 + batch_index

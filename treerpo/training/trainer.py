"""`treerpo train`: tree-packed PPO updates of a policy, from stored trees or grown on-policy.

One optimizer step (DESIGN step 10):

1. The step's trees (per_device_train_batch_size x gradient_accumulation_steps x processes) are
   split into disjoint shards, one per process.
2. Every tree is forwarded once, packed (`packed_tree_loss`): per trained token the new logprob
   is log_softmax(logits / tree.logprob_temperature)[token] in float32, the transform the engines
   store as behaviour logprobs, so ratio = exp(new - behaviour) is 1 for an unchanged policy.
3. Per token: -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A), plus
   beta * k3(KL(new || ref)) when beta > 0 (a frozen copy of the starting model; none at 0).
   Advantages are the stored ones (`local`: value minus the sibling mean) or, with
   `--advantage global-local`, recomputed from the stored values with TreeRL's global term
   (value minus the tree's mean leaf reward) added (`treerpo.scoring.values`).
4. Aggregation over the *whole step*, across trees and processes: "group" = token mean per sibling
   group, then the mean over every group of the step; "token" = one mean over every trained token
   of the step; "leaf" = token mean per group, then the mean over the step's groups weighted by
   their visitation shares (leaves below the group's parent / leaves of its tree: what training
   on every root-to-leaf path with segment advantages weighs; `treerpo.training.loss`). Each
   tree's loss is scaled by (its groups, tokens or visitation mass) / (the step's, summed over
   processes), so the accumulated gradient is exactly the gradient of the step's mean.
5. Gradients are summed over processes (DDP or FSDP2 under the padding scheme of
   `treerpo.training.distributed`), clipped to max_grad_norm, and AdamW steps; the learning
   rate follows transformers' `get_scheduler`. With num_iterations = mu > 1 the same batch serves
   mu consecutive optimizer steps (behaviour logprobs stay the stored ones, so the ratio is real).

Departures from the textbook and from TRL's GRPOTrainer, on purpose:

- Advantages are sibling-relative (value - sibling mean), no std scaling; a group whose leaves all
  agree has advantage 0 and contributes zero loss and zero gradient (but still counts as a group).
- Group mean, not sequence mean (DESIGN step 10); and the mean is over the optimizer step, not
  per micro-batch: a micro-batch with few groups does not weigh more than its share.
- Each tree is back-propagated on its own (the micro-batch is a unit of data, not of memory):
  activation memory is bounded by the largest (sub-)pack, see `--max-packed-tokens`.
- Multi-process (`torchrun` / `accelerate launch`): processes hold different numbers of trees
  and packs in a step, so every process is padded to the same sequence of forwards and
  backwards with zero-weight passes, and DDP or FSDP2 then communicate in step
  (`treerpo.training.distributed`).
- Master weights are float32. `--torch-dtype bfloat16/float16` on a GPU runs the forward under
  autocast; on CPU it trains in float32 (bf16 master weights would round away 1e-6 updates).
- Weight decay applies to matrices only (ndim >= 2), not to biases and norms (as HF Trainer).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from treerpo.config import OptimizationConfig, TrainConfig
from treerpo.errors import BadInputError
from treerpo.provenance import check_replay_provenance, tokenizer_fingerprint
from treerpo.scoring.values import with_advantages
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.training import checkpoints, resume
from treerpo.training.data_order import tree_order
from treerpo.training.distributed import (
    ParallelPlan,
    full_model_state,
    gradient_norm,
    load_optimizer_state,
    resolve_parallelism,
    synchronising,
    update_schedule,
    wrap_policy,
    zero_weight_forward,
)
from treerpo.training.metrics import open_metrics_sink
from treerpo.training.no_signal import NoSignalWatch
from treerpo.training.packed_forward import packed_tree_loss
from treerpo.training.packing import pack_tree
from treerpo.training.rollout_stats import rollout_metrics, rollout_sums
from treerpo.trees import Tree


@dataclass
class TrainCallbacks:
    """How a caller (the CLI) hears about a run; called on the main process only."""

    on_message: Callable[[str], None] = lambda message: None
    on_start: Callable[[int, int], None] = lambda start_step, total_steps: None
    on_step: Callable[[dict[str, Any]], None] = lambda metrics: None
    on_log: Callable[[dict[str, Any]], None] = lambda metrics: None
    on_eval: Callable[[dict[str, Any]], None] = lambda metrics: None
    on_warning: Callable[[str], None] = lambda message: None


@dataclass
class TrainSummary:
    run_name: str
    output_dir: str
    start_step: int = 0
    steps: int = 0  # the last completed optimizer step
    trees_trained: int = 0  # distinct trees used
    scored_first: int = 0  # unscored trees scored before training (replay)
    checkpoints: list[str] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    is_main_process: bool = True  # under `accelerate launch`, only the main process reports
    last_eval: dict[str, Any] = field(default_factory=dict)  # `--eval-dataset`: the last one
    # --follow: trees left untrained because their policy was too stale, or not this run's.
    follow: bool = False
    stale_trees_skipped: int = 0
    off_policy_trees_skipped: int = 0


class BatchSource(Protocol):
    """Where the trees of each batch come from (replay: the store; chained: growth)."""

    batches_per_epoch: int

    def batch_tree_ids(self, batch_index: int) -> list[int]:
        """The batch's scored tree ids, the same list on every process."""
        ...

    def after_update(self, model) -> None:
        """Called after every optimizer step (chained: push the weights into the engine)."""
        ...

    def last_batch_seconds(self) -> dict[str, float]:
        """Seconds the last `batch_tree_ids` spent growing and scoring trees."""
        ...

    def after_checkpoint(self, step: int, path: Path) -> None:
        """Called on every process once the checkpoint of `step` is complete at `path`
        (`--follow`: trees grown with it count as this run's)."""
        ...


def trained_counts(tree: Tree) -> tuple[int, int, float]:
    """(trained tokens, sibling groups, visitation mass) of a tree: tokens of nodes that carry
    an advantage, the groups they form, and the sum of those groups' visitation shares (leaves
    below the group's parent / leaves of the tree; what "leaf" aggregation weighs groups by)."""
    tokens, parents = 0, set()
    for node in tree.nodes[1:]:
        if node.advantage is not None and node.num_tokens > 0:
            tokens += node.num_tokens
            parents.add(node.parent)
    leaf_counts = tree.leaf_counts()
    visit_mass = sum(leaf_counts[parent] for parent in parents) / leaf_counts[0] if parents else 0.0
    return tokens, len(parents), visit_mass


class PolicyUpdater:
    """The policy, its optional frozen reference, AdamW and the scheduler: `update(trees)` is one
    optimizer step over this process's shard of a step (module docstring)."""

    def __init__(self, *, model, ref_model, optimization: OptimizationConfig, total_steps: int,
                 accelerator, autocast_dtype: torch.dtype | None,
                 plan: ParallelPlan | None = None) -> None:
        """`model` is what forwards run through: the policy, or its DDP/FSDP2 wrapping by
        `distributed.wrap_policy` under `plan` (then the optimizer holds the sharded params)."""
        from transformers import get_scheduler

        self.model = model
        self.ref_model = ref_model
        self.optimization = optimization
        self.accelerator = accelerator
        self.autocast_dtype = autocast_dtype
        self.plan = plan or ParallelPlan(mode="single", num_processes=1)
        if self.plan.mode == "single" and accelerator.num_processes > 1:
            raise ValueError("several processes need a ddp or fsdp plan")
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.parameters if p.ndim >= 2]
        no_decay = [p for p in self.parameters if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optimization.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=optimization.learning_rate,
        )
        self.scheduler = get_scheduler(
            optimization.lr_scheduler_type, self.optimizer,
            num_warmup_steps=optimization.num_warmup_steps(total_steps),
            num_training_steps=total_steps,
            scheduler_specific_kwargs=(
                {"mode": "max", **optimization.lr_scheduler_kwargs}  # on eval_accuracy
                if optimization.steps_on_metric
                else dict(optimization.lr_scheduler_kwargs) or None),
        )

    def update(self, trees: list[Tree]) -> dict[str, Any]:
        """One optimizer step; `trees` is this process's shard. Returns step-wide metrics."""
        started = time.perf_counter()
        opt = self.optimization
        trees = [with_advantages(tree, mode=opt.advantage) for tree in trees]
        counts = [trained_counts(tree) for tree in trees]
        # Each tree's part of the step's mean: its groups, tokens or visitation mass.
        masses = [{"group": groups, "token": tokens, "leaf": visit_mass}[opt.loss_aggregation]
                  for tokens, groups, visit_mass in counts]
        local = torch.tensor([
            sum(tokens for tokens, _, _ in counts),
            sum(groups for _, groups, _ in counts),
            sum(masses),
            len(trees),
            *rollout_sums(trees),
        ], dtype=torch.float64)
        total_tokens, total_groups, total_mass, num_trees, *rollout_totals = (
            self._sum_over_processes(local).tolist())

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.accelerator.device)
        # loss, clipped tokens, kl x tokens, ratio x tokens
        sums = torch.zeros(4, dtype=torch.float64)
        units = [(tree, tokens, groups, mass)
                 for tree, (tokens, groups, _), mass in zip(trees, counts, masses, strict=True)
                 if tokens > 0]
        # Under DDP/FSDP with sub-packs, every process must know its forwards in advance: pack
        # each tree once here, and hand the packs to the loss.
        packs = [self._packs_of(tree) for tree, *_ in units]
        local_forwards = [1 if tree_packs is None else len(tree_packs) for tree_packs in packs]
        schedule = update_schedule(plan=self.plan, local_forwards=local_forwards,
                                   device=self.accelerator.device)
        for index, forwards in enumerate(schedule.forwards):
            last_unit = index == len(schedule.forwards) - 1
            with synchronising(self.model, plan=self.plan, last_unit=last_unit):
                unit_loss, used_forwards = None, 0
                if index < len(units):
                    tree, tokens, groups, mass = units[index]
                    with self._autocast():
                        loss, metrics = packed_tree_loss(
                            model=self.model, trees=[tree],
                            max_packed_tokens=opt.max_packed_tokens, epsilon=opt.epsilon,
                            epsilon_high=opt.epsilon_high, aggregation=opt.loss_aggregation,
                            ref_model=self.ref_model, beta=opt.beta,
                            packs_per_tree=None if packs[index] is None else [packs[index]])
                    if (metrics["num_tokens"], metrics["num_groups"]) != (tokens, groups):
                        raise RuntimeError(
                            f"tree {tree.tree_id}: the loss saw {metrics['num_tokens']} tokens in "
                            f"{metrics['num_groups']} groups, expected {tokens} in {groups}")
                    share = mass / total_mass
                    unit_loss = loss * (share * schedule.loss_scale)
                    used_forwards = local_forwards[index]
                    sums += torch.tensor(
                        [loss.item() * share, metrics["clip_fraction"] * tokens,
                         metrics.get("kl", 0.0) * tokens, metrics["ratio_mean"] * tokens],
                        dtype=torch.float64)
                for _ in range(forwards - used_forwards):  # padding: same collectives, no grad
                    with self._autocast():
                        padding = zero_weight_forward(self.model)
                    unit_loss = padding if unit_loss is None else unit_loss + padding
                unit_loss.backward()
        for parameter in self.parameters:
            if parameter.grad is None:  # a step without trained tokens still steps the same
                parameter.grad = torch.zeros_like(parameter)
        loss_sum, clipped_tokens, kl_token_sum, ratio_token_sum = (
            self._sum_over_processes(sums).tolist())
        grad_norm = gradient_norm(torch.nn.utils.clip_grad_norm_(
            self.parameters, opt.max_grad_norm if opt.max_grad_norm > 0 else math.inf))
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if not opt.steps_on_metric:  # those step in `step_on_eval`
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        return {
            "loss": loss_sum,
            **rollout_metrics(rollout_totals),
            "clip_fraction": clipped_tokens / total_tokens if total_tokens else 0.0,
            # Token mean of exp(logp_new - logp_behaviour) before the step: ~1 on the first
            # step of a chained run, where the engine's and the trainer's logprobs meet.
            "ratio_mean": ratio_token_sum / total_tokens if total_tokens else 1.0,
            "kl": kl_token_sum / total_tokens if opt.beta > 0 and total_tokens else None,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "tokens_per_second": total_tokens / seconds if seconds > 0 else 0.0,
            "num_trees": int(num_trees),
            "num_tokens": int(total_tokens),
            "num_groups": int(total_groups),
            "seconds": seconds,
            # This process's peak GPU memory during the update (None on CPU).
            "peak_memory_mb": (torch.cuda.max_memory_allocated(self.accelerator.device) / 2**20
                               if self.accelerator.device.type == "cuda" else None),
        }

    def _packs_of(self, tree: Tree) -> list | None:
        """The (sub-)packs of `tree` when the number of its forwards (one per pack) must be
        known before the loss runs (several processes with --max-packed-tokens); else None,
        and the loss runs one forward, packing the tree itself."""
        if self.optimization.max_packed_tokens is None or not self.plan.wrapped:
            return None
        return pack_tree(tree=tree, max_packed_tokens=self.optimization.max_packed_tokens)
    def step_on_eval(self, eval_accuracy: float) -> None:
        """A metric scheduler (reduce_lr_on_plateau, greedy) steps on each evaluation."""
        if self.optimization.steps_on_metric:
            self.scheduler.step(eval_accuracy)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=self.autocast_dtype)

    def _sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        reduced = values.to(self.accelerator.device)
        torch.distributed.all_reduce(reduced)
        return reduced.cpu()


class ReplayBatches:
    """Stored trees in a seeded order, reshuffled every epoch; the last batch may be short."""

    def __init__(self, *, tree_ids: list[int], trees_per_step: int, seed: int) -> None:
        self.tree_ids = sorted(tree_ids)
        self.trees_per_step = trees_per_step
        self.seed = seed
        self.batches_per_epoch = math.ceil(len(self.tree_ids) / trees_per_step)

    def batch_tree_ids(self, batch_index: int) -> list[int]:
        epoch, position = divmod(batch_index, self.batches_per_epoch)
        order = tree_order(num_trees=len(self.tree_ids), seed=self.seed, epoch=epoch)
        chosen = order[position * self.trees_per_step:(position + 1) * self.trees_per_step]
        return [self.tree_ids[index] for index in chosen.tolist()]

    def after_update(self, model) -> None:
        """Replay has no engine to refresh."""

    def last_batch_seconds(self) -> dict[str, float]:
        """Replay grows nothing; its unscored trees were scored before training."""
        return {"growth_seconds": 0.0, "scoring_seconds": 0.0}

    def after_checkpoint(self, step: int, path: Path) -> None:
        """Replay reads no checkpoint back."""


def select_replay_trees(
    store: Store, *, source_runs: list[str], on_message: Callable[[str], None],
    policy: ReplayPolicy | None = None,
    reward_fn_spec: str | None = None,
) -> tuple[list[int], int]:
    """The stored trees to replay (of `source_runs`, or all), after scoring the unscored ones
    with `reward_fn_spec` (None: the default reward) exactly as `treerpo score` would. Returns
    (tree ids, scored now).

    With `policy`, the trees' provenance is checked first (`check_replay_provenance`): trees of
    another tokenizer, or of another policy unless allowed, are refused before anything is
    scored or written."""
    from treerpo.scoring.store_scoring import score_stored_trees, select_trees_to_score

    run_ids = [repository.find_run(store, name).id for name in source_runs] or [None]
    summaries = [s for run_id in run_ids for s in repository.list_trees(store, run_id=run_id)]
    if not summaries:
        where = f"runs {', '.join(source_runs)}" if source_runs else "the store"
        raise BadInputError(f"no trees to train on in {where}: grow some with `treerpo generate` "
                            "or give --dataset for chained training")
    if policy is not None:
        for warning in check_replay_provenance(
                trees=repository.tree_provenance(
                    store, run_ids=None if run_ids == [None] else run_ids),
                tokenizer_hash=policy.tokenizer_hash, policy_version=policy.policy_version,
                model=policy.model, allow_off_policy=policy.allow_off_policy):
            on_message(warning)
    unscored = [tree_id for run_id in run_ids
                for tree_id in select_trees_to_score(store, run_id=run_id)]
    if unscored:
        reward = reward_fn_spec or "the default reward"
        on_message(f"scoring {len(unscored)} unscored tree(s) first with {reward} "
                   "(as `treerpo score` would)")
        score_stored_trees(store, tree_ids=unscored, reward_fn_spec=reward_fn_spec)
    return [summary.tree_id for summary in summaries], len(unscored)


@dataclass(frozen=True)
class ReplayPolicy:
    """The model replay trains, as its trees' provenance is checked against it."""

    model: str
    tokenizer_hash: str
    policy_version: str
    allow_off_policy: bool


def total_steps_for(*, optimization: OptimizationConfig, batches_per_epoch: int) -> int:
    """TRL's convention: max_steps when > 0, else epochs x batches, in optimizer steps."""
    if optimization.max_steps > 0:
        return optimization.max_steps
    batches = math.ceil(optimization.num_train_epochs * batches_per_epoch)
    return max(batches, 1) * optimization.num_iterations


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """While `enabled`, torch runs only deterministic kernels (transformers' `full_determinism`).

    Without it an update on CPU with more than one thread is not bit-reproducible (measured:
    two runs of the same seed on 2 threads end with different weights, on 1 thread or with
    deterministic kernels identical ones; some backward kernel accumulates in thread-dependent
    order), and RL amplifies those float differences into a different policy. The previous
    setting is restored on exit, so library callers keep theirs.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # cuBLAS needs this before its first call to be deterministic; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)


def run_training(
    *, store: Store, config: TrainConfig, callbacks: TrainCallbacks | None = None
) -> TrainSummary:
    """Train as `config` says (replay or chained); see the module docstring."""
    with deterministic_kernels(config.full_determinism):
        return _run_training(store=store, config=config, callbacks=callbacks)


def _run_training(
    *, store: Store, config: TrainConfig, callbacks: TrainCallbacks | None
) -> TrainSummary:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from treerpo.engines.loading import load_tokenizer, policy_version
    from treerpo.scoring.rewards import combine_reward_specs, resolve_reward_fn

    callbacks = callbacks or TrainCallbacks()
    reward_fn_spec = combine_reward_specs(config.reward_fns, config.reward_weights)
    resolve_reward_fn(reward_fn_spec)  # a bad --reward-fn is refused before any model loads
    started = time.perf_counter()
    # cpu=True without a GPU: how accelerate recognises a multi-process CPU launch (torchrun).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    say = callbacks.on_message if main else (lambda message: None)
    opt = config.optimization
    output_dir = Path(config.output_dir).expanduser()
    if main:
        for leftover in checkpoints.remove_stale_temporaries(output_dir):
            say(f"removed {leftover.name}, left by a run killed while writing it")
    run_name = config.resolved_run_name()
    summary = TrainSummary(run_name=run_name, output_dir=str(output_dir), is_main_process=main)
    evaluator = None
    if config.eval is not None:
        from treerpo.training.train_eval import TrainEvaluator

        # Bad eval data: exit 2 before anything is written.
        evaluator = TrainEvaluator(config=config, run_name=run_name)
    checkpoint = (checkpoints.resolve_checkpoint(config.resume_from_checkpoint,
                                                 output_dir=output_dir)
                  if config.resume_from_checkpoint else None)
    resume_point = (resume.check_resume(checkpoint=checkpoint, optimization=opt)
                    if checkpoint is not None else None)
    if resume_point is not None and resume_point.finished:
        say(resume.nothing_left_message(resume_point))
        summary.start_step = summary.steps = resume_point.step
        return summary
    trees_per_step = opt.per_device_train_batch_size * opt.gradient_accumulation_steps
    trees_per_step *= accelerator.num_processes
    config_json = config.model_dump(mode="json")
    tokenizer = load_tokenizer(config.engine.model,
                               trust_remote_code=config.engine.trust_remote_code)
    save_dtype = checkpoints.resolve_save_dtype(
        config.save_dtype, base_model=config.engine.model,
        trust_remote_code=config.engine.trust_remote_code)
    plan = resolve_parallelism(accelerator=accelerator, fsdp=config.fsdp)
    if plan.mode == "fsdp" and config.chained:
        from treerpo.engines import resolve_engine_name

        if resolve_engine_name(config.engine.engine) != "vllm":
            raise BadInputError("chained training under FSDP grows trees with vLLM only (the HF "
                                "engine would decode with the sharded policy): use --engine vllm, "
                                "or grow with `treerpo generate` and replay")

    replay_ids: list[int] = []
    if config.chained:
        from treerpo.training.chained import ChainedBatches, load_chained_problems

        problems = load_chained_problems(config)  # bad data: exit 2 before any model loads
    elif config.follow is not None:
        for name in config.source_runs:  # a run that exists must be a generate run (exit 2)
            repository.refuse_run_of_other_kind(store, name=name, kind="generate")
    else:
        # Provenance is checked before anything is scored or written (exit 2 leaves the store
        # and the output folder as they were).
        replay_policy = ReplayPolicy(
            model=config.engine.model, tokenizer_hash=tokenizer_fingerprint(tokenizer),
            policy_version=policy_version(config.engine.model),
            allow_off_policy=config.allow_off_policy)
        if main:
            replay_ids, summary.scored_first = select_replay_trees(
                store, source_runs=config.source_runs, on_message=say, policy=replay_policy,
                reward_fn_spec=reward_fn_spec)
        accelerator.wait_for_everyone()
        if not main:
            replay_ids, _ = select_replay_trees(store, source_runs=config.source_runs,
                                                on_message=say, policy=replay_policy,
                                                reward_fn_spec=reward_fn_spec)
    if resume_point is not None:  # the run's length, before the run or its logs are touched
        data_size = len(problems) if config.chained else len(replay_ids)
        resume.check_total_steps(point=resume_point, total_steps=total_steps_for(
            optimization=opt, batches_per_epoch=max(math.ceil(data_size / trees_per_step), 1)))
    sink = open_metrics_sink(output_dir=output_dir, report_to=config.report_to,
                             run_name=run_name, config=config, enabled=main)
    if main:
        run_id = repository.get_or_create_run(store, name=run_name, kind="train",
                                              model=config.engine.model, config=config_json).id
    accelerator.wait_for_everyone()
    if not main:
        run_id = repository.find_run(store, run_name).id

    set_seed(config.engine.seed)
    model, ref_model, autocast_dtype = _load_models(config=config, checkpoint=checkpoint,
                                                    device=accelerator.device, say=say)
    forward_model = wrap_policy(model, plan=plan, device=accelerator.device)
    if plan.wrapped:
        say(f"{plan.num_processes} processes, {plan.mode}"
            + (f" ({'full_shard' if plan.reshard_after_forward else 'shard_grad_op'})"
               if plan.mode == "fsdp" else ""))
    if config.chained:
        source: BatchSource = ChainedBatches(
            store=store, config=config, problems=problems, run_id=run_id, model=model,
            tokenizer=tokenizer, accelerator=accelerator, trees_per_step=trees_per_step,
            on_message=say, reward_fn_spec=reward_fn_spec)
    elif config.follow is not None:
        from treerpo.training.follow import FollowBatches, remove_later_checkpoints

        if main and checkpoint is not None:
            remove_later_checkpoints(output_dir, step=resume_point.step, on_message=say)
        source = FollowBatches(
            store=store, source_runs=config.source_runs, train_run_id=run_id,
            follow=config.follow, trees_per_step=trees_per_step,
            num_iterations=opt.num_iterations, total_steps=opt.max_steps,
            tokenizer_hash=tokenizer_fingerprint(tokenizer),
            base_policy_version=policy_version(config.engine.model), model=config.engine.model,
            allow_off_policy=config.allow_off_policy, reward_fn_spec=reward_fn_spec,
            output_dir=output_dir, accelerator=accelerator, on_message=say)
    else:
        source = ReplayBatches(tree_ids=replay_ids, trees_per_step=trees_per_step,
                               seed=config.engine.seed)
    total_steps = total_steps_for(optimization=opt, batches_per_epoch=source.batches_per_epoch)
    updater = PolicyUpdater(model=forward_model, ref_model=ref_model, optimization=opt,
                            total_steps=total_steps, accelerator=accelerator,
                            autocast_dtype=autocast_dtype, plan=plan)

    step = 0
    log_history: list[dict[str, Any]] = []
    if checkpoint is not None:
        states = checkpoints.load_checkpoint_states(checkpoint=checkpoint,
                                                    rank=accelerator.process_index)
        saved_processes = states["trainer_state"]["num_processes"]
        if saved_processes != accelerator.num_processes:
            raise BadInputError(f"{checkpoint} was written by {saved_processes} process(es); "
                                f"resume with the same number (not {accelerator.num_processes}) "
                                "so that every step sees the same trees")
        saved_mode = states["trainer_state"].get("parallelism", "fsdp" if config.fsdp else (
            "ddp" if saved_processes > 1 else "single"))
        if (saved_mode == "fsdp") != (plan.mode == "fsdp"):
            raise BadInputError(f"{checkpoint} was written with {saved_mode}: resume with "
                                f"{'--fsdp' if saved_mode == 'fsdp' else 'no --fsdp'} (its "
                                "optimizer state is laid out for it)")
        load_optimizer_state(forward_model, updater.optimizer, states["optimizer"], plan=plan)
        updater.scheduler.load_state_dict(states["scheduler"])
        checkpoints.restore_rng_state(states["rng"])
        step = int(states["trainer_state"]["global_step"])
        log_history = [entry for entry in states["trainer_state"]["log_history"]
                       if entry.get("step", 0) <= step]
        say(f"resuming from {checkpoint} at step {step}")
        source.after_update(model)
    if main:
        repository.delete_train_steps_after(store, run_id=run_id, step=step)
        sink.forget_after(step)
    summary.start_step = step
    if main:
        callbacks.on_start(step, total_steps)

    try:
        step = _train_loop(
            store=store, config=config, accelerator=accelerator, source=source, updater=updater,
            run_id=run_id, start_step=step, total_steps=total_steps, sink=sink,
            callbacks=callbacks, summary=summary, tokenizer=tokenizer,
            checkpointing=checkpoints.Checkpointing(save_dtype=save_dtype,
                                                    log_history=log_history),
            evaluator=evaluator)
    except BaseException:
        if main:
            repository.finish_run(store, run_id, status="failed")
        raise
    if config.follow is not None:
        summary.follow = True
        summary.stale_trees_skipped = source.stale_skipped
        summary.off_policy_trees_skipped = source.off_policy_skipped
    final_state = full_model_state(forward_model, plan=plan)  # FSDP: a collective
    if main:
        checkpoints.save_final_model(output_dir=output_dir, model=model, tokenizer=tokenizer,
                                     config_json=config_json, save_dtype=save_dtype,
                                     state_dict=final_state)
        repository.finish_run(store, run_id)
        sink.close()
    accelerator.wait_for_everyone()
    summary.steps = step
    summary.seconds = time.perf_counter() - started
    return summary


def _train_loop(*, store: Store, config: TrainConfig, accelerator, source: BatchSource,
                updater: PolicyUpdater, run_id: int, start_step: int, total_steps: int, sink,
                callbacks: TrainCallbacks, summary: TrainSummary, tokenizer,
                checkpointing: checkpoints.Checkpointing, evaluator=None) -> int:
    """Steps `start_step + 1 .. total_steps`: update, record, log, evaluate, checkpoint.
    Returns the last step."""
    opt, main, model = config.optimization, accelerator.is_main_process, updater.model
    output_dir = Path(config.output_dir).expanduser()
    step = start_step
    trained: set[int] = set()
    batch_index, batch_ids, shard = -1, [], []
    no_signal = NoSignalWatch(patience=config.no_signal_warning_steps)
    while step < total_steps:
        step_started = time.perf_counter()
        batch_seconds = {"growth_seconds": 0.0, "scoring_seconds": 0.0}
        if step // opt.num_iterations != batch_index:
            batch_index = step // opt.num_iterations
            batch_ids = source.batch_tree_ids(batch_index)
            batch_seconds = source.last_batch_seconds()
            shard = repository.load_trees(
                store, batch_ids[accelerator.process_index::accelerator.num_processes])
        metrics = updater.update(shard)
        source.after_update(model)
        step += 1
        trained.update(batch_ids)
        metrics = {"step": step, "epoch": batch_index / source.batches_per_epoch, **metrics,
                   **batch_seconds, "update_seconds": metrics["seconds"],
                   "step_seconds": time.perf_counter() - step_started}
        warning = no_signal.observe(metrics)
        if main:
            repository.record_train_step(store, run_id=run_id, step=step, metrics=metrics,
                                         tree_ids=batch_ids)
            callbacks.on_step(metrics)
            if step % config.logging_steps == 0 or step == total_steps:
                sink.write(metrics)
                checkpointing.log_history.append(metrics)
                callbacks.on_log(metrics)
            if warning is not None:
                callbacks.on_warning(warning)
        summary.last_metrics = metrics
        if evaluator is not None and evaluator.due(step=step, total_steps=total_steps):
            accuracy = torch.zeros(1, dtype=torch.float64)
            if main:
                eval_metrics = evaluator.evaluate(
                    store=store, model=model, tokenizer=tokenizer,
                    engine=getattr(source, "vllm_engine", None), step=step,
                    epoch=metrics["epoch"])
                sink.write(eval_metrics)
                callbacks.on_eval(eval_metrics)
                summary.last_eval = eval_metrics
                accuracy[0] = eval_metrics["eval_accuracy"]
            # Every process's scheduler steps on the main process's figure.
            updater.step_on_eval(float(updater._sum_over_processes(accuracy)[0]))
        # Following generators, the last step is published too (they stop on it).
        if step % config.save_steps == 0 or (config.follow is not None and step == total_steps):
            path = checkpoints.save_training_checkpoint(
                accelerator=accelerator, output_dir=output_dir, step=step, model=model,
                tokenizer=tokenizer, optimizer=updater.optimizer, scheduler=updater.scheduler,
                config=config, total_steps=total_steps, batch_ids=batch_ids,
                batches_per_epoch=source.batches_per_epoch, checkpointing=checkpointing,
                plan=updater.plan)
            if main:
                repository.set_train_step_checkpoint(store, run_id=run_id, step=step,
                                                     checkpoint=str(path))
                summary.checkpoints.append(str(path))
            source.after_checkpoint(step, path)
        summary.trees_trained = len(trained)
    return step


def _load_models(*, config: TrainConfig, checkpoint: Path | None, device, say):
    """The trainable policy (float32 master weights; from the checkpoint when resuming), the
    frozen reference (beta > 0 only) and the autocast dtype of the forward."""
    from treerpo.engines.loading import load_policy, resolve_dtype

    engine = config.engine
    requested = resolve_dtype(engine.torch_dtype, device=device)
    autocast_dtype = None
    if requested != torch.float32:
        if device.type == "cuda":
            autocast_dtype = requested
        else:
            say(f"--torch-dtype {engine.torch_dtype} on CPU: training in float32 "
                "(master weights stay float32 on every device; a GPU autocasts the forward)")
    model = load_policy(str(checkpoint or engine.model), torch_dtype="float32", device=device,
                        trust_remote_code=engine.trust_remote_code,
                        attn_implementation=engine.attn_implementation, training=True)
    model.requires_grad_(True)
    if config.optimization.gradient_checkpointing:
        model.config.use_cache = False
        # transformers 5.x renamed it (the old name warns); 4.x only has the old one.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    ref_model = None
    if config.optimization.beta > 0:
        ref_model = load_policy(engine.model, torch_dtype="float32", device=device,
                                trust_remote_code=engine.trust_remote_code,
                                attn_implementation=engine.attn_implementation, training=True)
        ref_model.requires_grad_(False)
    return model, ref_model, autocast_dtype


__all__ = [
    "BatchSource",
    "PolicyUpdater",
    "ReplayBatches",
    "TrainCallbacks",
    "TrainSummary",
    "run_training",
    "select_replay_trees",
    "total_steps_for",
    "trained_counts",
    "tree_order",
]

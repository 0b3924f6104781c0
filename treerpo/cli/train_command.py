"""`treerpo train`: tree-packed PPO updates from stored trees, or chained generate/score/update."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from treerpo.cli import options as opt
from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    progress_bar,
    stderr_console,
    stdout_console,
    store_at,
    validated,
)
from treerpo.config import (
    FollowConfig,
    OptimizationConfig,
    TrainConfig,
    TrainEvalConfig,
    loss_aggregation_for_trl,
)
from treerpo.errors import BadInputError

DEFAULT_LOSS_AGGREGATION = "leaf"

if TYPE_CHECKING:  # torch loads only when a command trains
    from treerpo.training.trainer import TrainSummary


OutputDir = Annotated[str, typer.Option(
    "--output-dir", help="Checkpoints (checkpoint-STEP), metrics.jsonl and the final model.",
    rich_help_panel=opt.LOGGING)]
ChainedDataset = Annotated[str | None, typer.Option(
    "--dataset", help="Chained mode: grow each batch's trees with the current "
    "policy from this dataset (hub id, local file or `arith`). Without it, stored trees are "
    "replayed.", rich_help_panel=opt.DATA)]
SourceRuns = Annotated[list[str] | None, typer.Option(
    "--run", help="Replay: train on the trees of this run (repeatable; default: all runs).",
    rich_help_panel=opt.DATA)]
RunName = Annotated[str | None, typer.Option(
    "--run-name", help="Name of the train run in the store (default: from --output-dir and a "
    "hash of the settings).", rich_help_panel=opt.LOGGING)]

# TRL GRPOConfig names (see README: "How the flags map onto TRL's GRPOConfig").
PerDeviceBatch = Annotated[int, typer.Option(
    "--per-device-train-batch-size", help="Trees per micro-batch, per process.",
    rich_help_panel=opt.OPTIMISATION)]
GradAccum = Annotated[int, typer.Option(
    "--gradient-accumulation-steps", help="Micro-batches per optimizer step.",
    rich_help_panel=opt.OPTIMISATION)]
Epochs = Annotated[float, typer.Option(
    "--num-train-epochs", help="Passes over the trees or problems.",
    rich_help_panel=opt.OPTIMISATION)]
MaxSteps = Annotated[int, typer.Option(
    "--max-steps", help="Optimizer steps; > 0 overrides --num-train-epochs.",
    rich_help_panel=opt.OPTIMISATION)]
LearningRate = Annotated[float, typer.Option(
    "--learning-rate", help="AdamW peak learning rate.", rich_help_panel=opt.OPTIMISATION)]
Scheduler = Annotated[str, typer.Option(
    "--lr-scheduler-type", help="Any transformers SchedulerType name: linear, cosine, "
    "cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt, "
    "cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay; reduce_lr_on_plateau "
    "and greedy step on eval_accuracy after each evaluation (need --eval-dataset).",
    rich_help_panel=opt.OPTIMISATION)]
SchedulerKwargs = Annotated[str | None, typer.Option(
    "--lr-scheduler-kwargs", help="JSON object of the scheduler's own arguments, e.g. "
    "'{\"min_lr_rate\": 0.1}' (cosine_with_min_lr) or '{\"num_decay_steps\": 20}' "
    "(warmup_stable_decay).", rich_help_panel=opt.OPTIMISATION)]
WarmupRatio = Annotated[float, typer.Option(
    "--warmup-ratio", help="Share of steps warming up.", rich_help_panel=opt.OPTIMISATION)]
WarmupSteps = Annotated[int, typer.Option(
    "--warmup-steps", help="Warm-up steps; > 0 overrides --warmup-ratio (as TRL).",
    rich_help_panel=opt.OPTIMISATION)]
WeightDecay = Annotated[float, typer.Option(
    "--weight-decay", help="AdamW decoupled decay.", rich_help_panel=opt.OPTIMISATION)]
MaxGradNorm = Annotated[float, typer.Option(
    "--max-grad-norm", help="Clip (0: no clipping).", rich_help_panel=opt.OPTIMISATION)]
Beta = Annotated[float, typer.Option(
    "--beta", help="k3 KL weight to the starting model (0: no reference model is loaded).",
    rich_help_panel=opt.OPTIMISATION)]
Epsilon = Annotated[float, typer.Option(
    "--epsilon", help="PPO clip: ratio >= 1 - epsilon.", rich_help_panel=opt.OPTIMISATION)]
EpsilonHigh = Annotated[float | None, typer.Option(
    "--epsilon-high", help="PPO clip: ratio <= 1 + epsilon-high (default: epsilon).",
    rich_help_panel=opt.OPTIMISATION)]
NumIterations = Annotated[int, typer.Option(
    "--num-iterations", help="Optimizer steps on each batch (PPO mu).",
    rich_help_panel=opt.OPTIMISATION)]
LossAggregation = Annotated[str, typer.Option(
    "--loss-aggregation", help="group: token mean per sibling group, then mean over the step's "
    "groups; token: one mean over the step's tokens; leaf: group token means weighted by the "
    "share of the tree's leaves below the group (as training on every root-to-leaf path).",
    rich_help_panel=opt.OPTIMISATION)]
LossType = Annotated[str | None, typer.Option(
    "--loss-type", help="TRL's loss_type: dapo or bnpo → --loss-aggregation token, grpo → "
    "group; dr_grpo has no equivalent.", rich_help_panel=opt.TRL)]
Advantage = Annotated[str, typer.Option(
    "--advantage", help="local: value minus the sibling mean; global-local: plus value minus "
    "the tree's mean leaf reward (TreeRL).", rich_help_panel=opt.OPTIMISATION)]
MaxPackedTokens = Annotated[int | None, typer.Option(
    "--max-packed-tokens", help="Split larger trees into sub-packs (ancestors repeated).",
    rich_help_panel=opt.OPTIMISATION)]
GradientCheckpointing = Annotated[bool, typer.Option(
    "--gradient-checkpointing", help="Recompute activations in backward to save memory.",
    rich_help_panel=opt.OPTIMISATION)]
FullDeterminism = Annotated[bool, typer.Option(
    "--full-determinism",
    help="Deterministic torch kernels: bit-identical updates under --seed, somewhat slower.",
    rich_help_panel=opt.OPTIMISATION)]
SaveSteps = Annotated[int | None, typer.Option(
    "--save-steps", help="Checkpoint every N steps [default: 500; with --follow 1].",
    show_default=False, rich_help_panel=opt.LOGGING)]
Follow = Annotated[bool, typer.Option(
    "--follow", help="Replay the --run trees as `generate --follow-policy OUTPUT_DIR` workers "
    "store them, publishing checkpoints for them, until --max-steps.",
    rich_help_panel=opt.DATA)]
MaxStaleness = Annotated[int, typer.Option(
    "--max-staleness", help="--follow: skip trees grown by a policy more than K steps older "
    "than the one updated (counted in the metrics).", metavar="K", rich_help_panel=opt.DATA)]
FollowTimeout = Annotated[float | None, typer.Option(
    "--follow-timeout", help="--follow: give up (exit 1) after this many seconds without a "
    "full batch of fresh trees [default: wait on].", show_default=False,
    rich_help_panel=opt.DATA)]
SaveTotalLimit = Annotated[int | None, typer.Option(
    "--save-total-limit", help="Keep at most N checkpoints (oldest deleted).",
    rich_help_panel=opt.LOGGING)]
LoggingSteps = Annotated[int, typer.Option(
    "--logging-steps", help="Log every N steps.", rich_help_panel=opt.LOGGING)]
ReportTo = Annotated[str, typer.Option(
    "--report-to", help="none, tensorboard or wandb (the package must be installed).",
    rich_help_panel=opt.LOGGING)]
ResumeFrom = Annotated[str | None, typer.Option(
    "--resume-from-checkpoint", help="A checkpoint folder, or `latest` in --output-dir. The "
    "schedule must be the checkpoint's (--max-steps, epochs, learning rate, scheduler, warmup, "
    "batch shape): a change is refused, not continued.", rich_help_panel=opt.LOGGING)]
AllowOffPolicy = Annotated[bool, typer.Option(
    "--allow-off-policy", help="Replay: also train on trees another policy grew (warns with "
    "their share). Trees of another tokenizer are always refused.", rich_help_panel=opt.DATA)]
SaveDtype = Annotated[str, typer.Option(
    "--save-dtype", help="dtype of checkpoints and the final model: auto (the base model's), "
    "float32, bfloat16 or float16. Master weights stay float32.", rich_help_panel=opt.LOGGING)]
Fsdp = Annotated[str, typer.Option(
    "--fsdp", help="Shard the policy over the processes with FSDP2 (HF TrainingArguments' "
    "spelling): full_shard (ZeRO-3-like) or shard_grad_op (ZeRO-2-like); auto_wrap is implied. "
    "Default: DDP when several processes run.", rich_help_panel=opt.OPTIMISATION)]
NoSignalSteps = Annotated[int, typer.Option(
    "--no-signal-warning-steps", help="Warn when this many consecutive steps all had zero "
    "advantage everywhere (nothing to learn from).", rich_help_panel=opt.LOGGING)]
EvalDataset = Annotated[str | None, typer.Option(
    "--eval-dataset", help="Greedy accuracy on this dataset (any --dataset source) during "
    "training, logged as eval_accuracy.", rich_help_panel=opt.LOGGING)]
EvalSplit = Annotated[str, typer.Option(
    "--eval-split", help="Split of --eval-dataset.", rich_help_panel=opt.LOGGING)]
EvalSteps = Annotated[int | None, typer.Option(
    "--eval-steps", help="Evaluate every N steps and after the last (default: --logging-steps).",
    rich_help_panel=opt.LOGGING)]
EvalLimit = Annotated[int | None, typer.Option(
    "--eval-limit", help="Evaluate on the first N problems of --eval-dataset.",
    rich_help_panel=opt.LOGGING)]


def train(
    model: opt.Model,
    output_dir: OutputDir,
    dataset: ChainedDataset = None,
    run: SourceRuns = None,
    split: opt.Split = "train",
    dataset_config: opt.DatasetConfigName = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    problem_field: opt.ProblemField = None,
    answer_field: opt.AnswerField = None,
    system_prompt: opt.SystemPrompt = None,
    prompt_template: opt.PromptTemplate = None,
    allow_off_policy: AllowOffPolicy = False,
    follow: Follow = False,
    max_staleness: MaxStaleness = 2,
    follow_timeout: FollowTimeout = None,
    reward_fn: opt.RewardFn = None,
    reward_weights: opt.RewardWeights = None,
    rollout: opt.Rollout = "tree",
    branching: opt.Branching = "resample",
    num_generations: opt.NumGenerations = 8,
    max_depth: opt.MaxDepth = 7,
    min_segment_len: opt.MinSegmentLen = 150,
    entropy_threshold: opt.EntropyThreshold = 1.0,
    entropy_topk: opt.EntropyTopk = 20,
    coverage_min_chars: opt.CoverageMinChars = 150,
    coverage_children_max: opt.CoverageChildrenMax = 4,
    root_children: opt.RootChildren = None,
    split_delimiters: opt.SplitDelimiters = None,
    split_delimiter: opt.SplitDelimiter = None,
    temperature: opt.Temperature = 0.6,
    top_p: opt.TopP = 0.85,
    top_k: opt.TopK = 25,
    min_p: opt.MinP = 0.0,
    repetition_penalty: opt.RepetitionPenalty = 1.1,
    max_new_tokens: opt.MaxNewTokens = 1300,
    per_device_train_batch_size: PerDeviceBatch = 8,
    gradient_accumulation_steps: GradAccum = 1,
    num_train_epochs: Epochs = 1.0,
    max_steps: MaxSteps = -1,
    learning_rate: LearningRate = 1e-6,
    lr_scheduler_type: Scheduler = "linear",
    lr_scheduler_kwargs: SchedulerKwargs = None,
    warmup_ratio: WarmupRatio = 0.0,
    warmup_steps: WarmupSteps = 0,
    weight_decay: WeightDecay = 0.0,
    max_grad_norm: MaxGradNorm = 1.0,
    beta: Beta = 0.0,
    epsilon: Epsilon = 0.2,
    epsilon_high: EpsilonHigh = None,
    num_iterations: NumIterations = 1,
    loss_aggregation: LossAggregation = DEFAULT_LOSS_AGGREGATION,
    advantage: Advantage = "local",
    max_packed_tokens: MaxPackedTokens = None,
    gradient_checkpointing: GradientCheckpointing = False,
    full_determinism: FullDeterminism = False,
    fsdp: Fsdp = "",
    engine: opt.EngineOpt = "auto",
    torch_dtype: opt.TorchDtype = "auto",
    attn_implementation: opt.AttnImplementation = "auto",
    trust_remote_code: opt.TrustRemoteCode = False,
    seed: opt.Seed = 42,
    generation_batch_size: opt.GenerationBatchSize = 64,
    gpu_memory_utilization: opt.TrainGpuMemoryUtilization = 0.3,
    max_model_len: opt.MaxModelLen = None,
    enable_prefix_caching: opt.EnablePrefixCaching = True,
    no_enable_prefix_caching: opt.NoPrefixCaching = False,
    vllm_tensor_parallel_size: opt.VllmTensorParallelSize = 1,
    vllm_max_num_seqs: opt.VllmMaxNumSeqs = None,
    vllm_enable_sleep_mode: opt.VllmEnableSleepMode = False,
    logprob_temperature: opt.LogprobTemperature = "raw",
    run_name: RunName = None,
    save_steps: SaveSteps = None,
    save_total_limit: SaveTotalLimit = None,
    logging_steps: LoggingSteps = 10,
    report_to: ReportTo = "none",
    resume_from_checkpoint: ResumeFrom = None,
    save_dtype: SaveDtype = "auto",
    no_signal_warning_steps: NoSignalSteps = 5,
    eval_dataset: EvalDataset = None,
    eval_split: EvalSplit = "test",
    eval_steps: EvalSteps = None,
    eval_limit: EvalLimit = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
    loss_type: LossType = None,
    bf16: opt.Bf16 = False,
    fp16: opt.Fp16 = False,
    use_vllm: opt.UseVllm = False,
) -> None:
    """Update a policy with TreeRPO: tree-packed, PPO-clipped, sibling-group advantages.

    Replay (no --dataset): trains on stored trees (of --run, default all), scoring unscored ones
    first. Before anything is scored or written, each tree's provenance is checked: trees
    tokenized by another tokenizer (vocabulary or chat template) are refused, trees grown by
    another policy (other weights, or earlier steps of a chained run) too unless
    --allow-off-policy.

    Follow (--follow --run NAME): replay the run's trees as `treerpo generate --follow-policy
    OUTPUT_DIR` workers store them, oldest first, each once; trees grown by a policy more than
    --max-staleness steps older than the one updated are skipped. Checkpoints are published
    every --save-steps (default 1) and at the last step, for the workers to grow with.

    Chained (--dataset): each step grows the next batch of problems' trees with the current
    policy (the tree and sampling flags of `generate`), stores and scores them, and updates.

    Checkpoints go to OUTPUT_DIR/checkpoint-STEP (HF layout; trainer_state.json in HF's
    TrainerState schema), the final model to OUTPUT_DIR, both in --save-dtype. Resuming
    (--resume-from-checkpoint) refuses a changed schedule and says so when the checkpoint is
    already at the last step.

    Runs unchanged under `accelerate launch` (one shard of each step's trees per process).

    A progress bar shows steps, ETA and each step's growth / scoring / update seconds (also in
    metrics.jsonl); a warning says when --no-signal-warning-steps steps in a row had no
    advantage to learn from. --eval-dataset evaluates greedily during training (eval_accuracy).

    TRL's spellings work too: --model_name_or_path, --dataset_name, --max_completion_length,
    --vllm_gpu_memory_utilization, the flags of the "TRL spellings" panel, and true/false after
    any flag (`--gradient_checkpointing true`).

    Examples:

        treerpo train --model ./sft --output-dir ./out --run gsm8k-trees --max-steps 100

        python -m treerpo.cli train --model_id M --dataset AI-MO/NuminaMath-CoT
        --per_device_train_batch_size 16 --output_dir ./checkpoints/treerpo --torch_dtype bfloat16
    """
    optimization = validated(
        OptimizationConfig, per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=num_train_epochs, max_steps=max_steps, learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        lr_scheduler_kwargs=_json_object(lr_scheduler_kwargs, flag="--lr-scheduler-kwargs"),
        warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high,
        num_iterations=num_iterations,
        loss_aggregation=_loss_aggregation(loss_aggregation, loss_type=loss_type),
        advantage=advantage, max_packed_tokens=max_packed_tokens,
        gradient_checkpointing=gradient_checkpointing)
    follow_config = validated(FollowConfig, max_staleness=max_staleness,
                              follow_timeout=follow_timeout) if follow else None
    if follow_config is None and follow_timeout is not None:
        raise BadInputError("--follow-timeout is for --follow")
    if save_steps is None:
        save_steps = 1 if follow else 500
    config = validated(
        TrainConfig, run_name=run_name, output_dir=output_dir, source_runs=run or [],
        follow=follow_config,
        optimization=optimization, full_determinism=full_determinism, save_steps=save_steps,
        save_total_limit=save_total_limit, logging_steps=logging_steps, report_to=report_to,
        resume_from_checkpoint=resume_from_checkpoint, allow_off_policy=allow_off_policy,
        save_dtype=save_dtype, fsdp=fsdp,
        no_signal_warning_steps=no_signal_warning_steps, reward_fns=reward_fn or [],
        reward_weights=opt.parse_reward_weights(reward_weights),
        eval=_train_eval(dataset=eval_dataset, split=eval_split, limit=eval_limit,
                         steps=eval_steps, logging_steps=logging_steps),
        **opt.growth_config_parts(locals()))
    from treerpo.engines.model_checks import check_model_for_growth
    from treerpo.training.trainer import TrainCallbacks, run_training

    # The model (and, chained, the flags it bounds) is checked before the store is opened.
    check_model_for_growth(engine=config.engine, tree=config.tree if config.chained else None,
                           sampling=config.sampling)

    console = stdout_console()
    rows = StepRows(console=console, enabled=not json_output,
                    columns=table_columns(beta=optimization.beta, branching=config.tree.branching,
                                          chained=config.chained, follow=follow))
    progress = StepProgress(console=console, enabled=not json_output)
    warnings = stderr_console()
    callbacks = TrainCallbacks(
        on_message=(lambda message: None) if json_output
        else (lambda message: console.print(message, soft_wrap=True)),
        on_start=lambda start, total: (rows.start(start, total), progress.start(start, total)),
        on_step=progress.advance, on_log=rows.print_row,
        on_eval=rows.print_eval,
        on_warning=lambda message: warnings.print(message, soft_wrap=True, markup=False))
    with store_at(db) as store, progress:
        summary = run_training(store=store, config=config, callbacks=callbacks)
    if not summary.is_main_process:
        return
    if json_output:
        print_json(summary_json(summary))
    else:
        console.print(summary_table(summary))


def _json_object(text: str | None, *, flag: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInputError(f"{flag}: not JSON ({error.msg}): {text!r}") from error
    if not isinstance(value, dict):
        raise BadInputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def _loss_aggregation(loss_aggregation: str, *, loss_type: str | None) -> str:
    """`--loss-aggregation`, or TRL's `--loss-type` mapped onto it (they must agree)."""
    if loss_type is None:
        return loss_aggregation
    try:
        mapped = loss_aggregation_for_trl(loss_type)
    except ValueError as error:
        raise BadInputError(str(error)) from error
    if loss_aggregation not in (DEFAULT_LOSS_AGGREGATION, mapped):
        raise BadInputError(f"--loss-type {loss_type} means --loss-aggregation {mapped}, which "
                            f"contradicts --loss-aggregation {loss_aggregation}: give one")
    return mapped


def _train_eval(*, dataset: str | None, split: str, limit: int | None, steps: int | None,
                logging_steps: int) -> TrainEvalConfig | None:
    if dataset is None:
        if steps is not None or limit is not None:
            raise BadInputError("--eval-steps and --eval-limit need --eval-dataset")
        return None
    return validated(TrainEvalConfig, data=opt.data_config(dataset=dataset, split=split,
                                                             limit=limit),
                     steps=logging_steps if steps is None else steps)


# (header, metric, format, width): what a logged step's row shows; every figure, and more, is in
# metrics.jsonl. `table_columns` keeps a row within 80 terminal columns.
_STEP = ("step", "step", "{:d}", 5)
_LOSS = ("loss", "loss", "{:.4f}", 7)
_REWARD = ("reward", "on_policy_reward", "{:.3f}", 6)
_SIGNAL = ("signal", "nonzero_token_share", "{:.0%}", 6)
_FORCED = ("forced", "forced_token_share", "{:.0%}", 6)
_ADVANTAGE = ("|adv|", "mean_abs_advantage", "{:.3f}", 5)
_CLIP = ("clip", "clip_fraction", "{:.2f}", 4)
_KL = ("kl", "kl", "{:.4f}", 6)
_GRAD = ("grad", "grad_norm", "{:.2f}", 5)
_LR = ("lr", "learning_rate", "{:.1e}", 7)
_GROW = ("grow s", "growth_seconds", "{:.1f}", 6)
_WAIT = ("wait s", "wait_seconds", "{:.1f}", 6)
_UPDATE = ("upd s", "update_seconds", "{:.1f}", 5)
_TOKENS = ("tok/s", "tokens_per_second", "{:,.0f}", 6)


def table_columns(*, beta: float, branching: str, chained: bool,
                  follow: bool = False) -> list[tuple[str, str, str, int]]:
    """The step table's columns: kl only with --beta > 0, forced only with --branching forced,
    growth seconds only in chained mode, seconds waiting for trees only with --follow."""
    columns = [_STEP, _LOSS, _REWARD, _SIGNAL]
    if branching == "forced":
        columns.append(_FORCED)
    columns += [_ADVANTAGE, _CLIP]
    if beta > 0:
        columns.append(_KL)
    columns += [_GRAD, _LR]
    if chained:
        columns.append(_GROW)
    if follow:
        columns.append(_WAIT)
    columns += [_UPDATE, _TOKENS]
    for optional in (_TOKENS, _ADVANTAGE):  # within 80 columns with kl and forced both shown
        if sum(width + 1 for *_, width in columns) > 80:
            columns.remove(optional)
    return columns


class StepProgress:
    """A progress bar under the step table: steps done / total, ETA, and the last step's
    growth / scoring / update seconds. Gone when training ends."""

    def __init__(self, *, console, enabled: bool) -> None:
        self.progress = progress_bar(label="train", unit="steps", console=console,
                                     disable=not enabled, field="times")
        self.task = self.progress.add_task("steps", total=None, times="")

    def start(self, start_step: int, total_steps: int) -> None:
        self.progress.reset(self.task, total=total_steps, completed=start_step, times="")

    def advance(self, metrics: dict[str, Any]) -> None:
        times = (f"grow {metrics.get('growth_seconds', 0.0):.1f}s · "
                 f"score {metrics.get('scoring_seconds', 0.0):.1f}s · "
                 f"update {metrics.get('update_seconds', 0.0):.1f}s")
        self.progress.update(self.task, completed=metrics["step"], times=times, refresh=True)

    def __enter__(self) -> StepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


class StepRows:
    """Logged steps as rows of one table printed as it grows (header once)."""

    def __init__(self, *, console, enabled: bool,
                 columns: list[tuple[str, str, str, int]] | None = None) -> None:
        self.console = console
        self.enabled = enabled
        self.columns = columns or table_columns(beta=0.0, branching="resample", chained=False)
        self.header_printed = False
        self.total_steps = 0

    def start(self, start_step: int, total_steps: int) -> None:
        self.total_steps = total_steps
        if self.enabled:
            begin = "starting" if start_step == 0 else f"resuming after step {start_step}"
            self.console.print(f"train: {begin}, {total_steps} optimizer steps in all")

    def print_row(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        table = Table(show_header=not self.header_printed, box=None, pad_edge=False,
                      padding=(0, 1), collapse_padding=True)
        for header, _, _, width in self.columns:
            table.add_column(header, justify="right", no_wrap=True, width=width)
        table.add_row(*[_fmt(metrics.get(key), pattern) for _, key, pattern, _ in self.columns])
        self.console.print(table)
        self.header_printed = True

    def print_eval(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            self.console.print(
                f"eval step {metrics['step']}: greedy accuracy {metrics['eval_accuracy']:.1%} "
                f"on {metrics['eval_num_problems']} problems ({metrics['eval_seconds']:.1f} s; "
                f"treerpo eval show {metrics['eval_run']})", soft_wrap=True, markup=False)


def _fmt(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def summary_json(summary: TrainSummary) -> dict:
    return {
        "run": summary.run_name, "output_dir": summary.output_dir,
        "start_step": summary.start_step, "steps": summary.steps,
        "trees_trained": summary.trees_trained, "scored_first": summary.scored_first,
        "checkpoints": summary.checkpoints, "last_metrics": summary.last_metrics,
        "last_eval": summary.last_eval or None,
        **({"stale_trees_skipped": summary.stale_trees_skipped,
            "off_policy_trees_skipped": summary.off_policy_trees_skipped}
           if summary.follow else {}),
        "seconds": round(summary.seconds, 3),
    }


def summary_table(summary: TrainSummary) -> Table:
    table = Table(title=f"train · run {summary.run_name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    last = summary.last_metrics
    for row in [
        ("optimizer steps", f"{summary.start_step} → {summary.steps}"),
        ("distinct trees trained on", f"{summary.trees_trained}"),
        ("trees scored first", f"{summary.scored_first}"),
        ("last loss", _fmt(last.get("loss"), "{:.4f}")),
        ("last on-policy reward", _fmt(last.get("on_policy_reward"), "{:.3f}")),
        ("last mean reward (all leaves)", _fmt(last.get("mean_reward"), "{:.3f}")),
        *([("last eval greedy accuracy", f"{summary.last_eval['eval_accuracy']:.1%}")]
          if summary.last_eval else []),
        *([("trees skipped as stale", f"{summary.stale_trees_skipped}"),
           ("trees skipped as off-policy", f"{summary.off_policy_trees_skipped}")]
          if summary.follow else []),
        ("checkpoints written", f"{len(summary.checkpoints)}"),
        ("final model", summary.output_dir),
        ("seconds", f"{summary.seconds:.1f}"),
    ]:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("train")(train)

"""`treerpo train`: tree-packed PPO updates from stored trees, or chained generate/score/update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from treerpo.cli import options as opt
from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    stdout_console,
    store_at,
    validated,
)
from treerpo.config import OptimizationConfig, TrainConfig

if TYPE_CHECKING:  # torch loads only when a command trains
    from treerpo.training.trainer import TrainSummary

OutputDir = Annotated[str, typer.Option(
    "--output-dir", help="Checkpoints (checkpoint-STEP), metrics.jsonl and the final model.")]
ChainedDataset = Annotated[str | None, typer.Option(
    "--dataset", help="Chained mode: grow each batch's trees with the current policy from this "
    "dataset (hub id, local file or `arith`). Without it, stored trees are replayed.")]
SourceRuns = Annotated[list[str] | None, typer.Option(
    "--run", help="Replay: train on the trees of this run (repeatable; default: all runs).")]
RunName = Annotated[str | None, typer.Option(
    "--run-name", help="Name of the train run in the store (default: from --output-dir and a "
    "hash of the settings).")]

# TRL GRPOConfig names (see README: "train flags and TRL's GRPOConfig").
PerDeviceBatch = Annotated[int, typer.Option(
    "--per-device-train-batch-size", help="Trees per micro-batch, per process.")]
GradAccum = Annotated[int, typer.Option(
    "--gradient-accumulation-steps", help="Micro-batches per optimizer step.")]
Epochs = Annotated[float, typer.Option("--num-train-epochs", help="Passes over the trees or "
                                                                  "problems.")]
MaxSteps = Annotated[int, typer.Option(
    "--max-steps", help="Optimizer steps; > 0 overrides --num-train-epochs.")]
LearningRate = Annotated[float, typer.Option("--learning-rate", help="AdamW peak learning rate.")]
Scheduler = Annotated[str, typer.Option(
    "--lr-scheduler-type", help="linear, cosine, cosine_with_restarts, polynomial, constant, "
    "constant_with_warmup or inverse_sqrt.")]
WarmupRatio = Annotated[float, typer.Option("--warmup-ratio", help="Share of steps warming up.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW decoupled decay.")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Clip (0: no clipping).")]
Beta = Annotated[float, typer.Option(
    "--beta", help="k3 KL weight to the starting model (0: no reference model is loaded).")]
Epsilon = Annotated[float, typer.Option("--epsilon", help="PPO clip: ratio >= 1 - epsilon.")]
EpsilonHigh = Annotated[float | None, typer.Option(
    "--epsilon-high", help="PPO clip: ratio <= 1 + epsilon-high (default: epsilon).")]
NumIterations = Annotated[int, typer.Option(
    "--num-iterations", help="Optimizer steps on each batch (PPO mu).")]
LossAggregation = Annotated[str, typer.Option(
    "--loss-aggregation", help="group: token mean per sibling group, then mean over the step's "
    "groups; token: one mean over the step's tokens; leaf: group token means weighted by the "
    "share of the tree's leaves below the group (as training on every root-to-leaf path).")]
Advantage = Annotated[str, typer.Option(
    "--advantage", help="local: value minus the sibling mean; global-local: plus value minus "
    "the tree's mean leaf reward (TreeRL).")]
MaxPackedTokens = Annotated[int | None, typer.Option(
    "--max-packed-tokens", help="Split larger trees into sub-packs (ancestors repeated).")]
GradientCheckpointing = Annotated[bool, typer.Option(
    "--gradient-checkpointing", help="Recompute activations in backward to save memory.")]
FullDeterminism = Annotated[bool, typer.Option(
    "--full-determinism",
    help="Deterministic torch kernels: bit-identical updates under --seed, somewhat slower.")]
SaveSteps = Annotated[int, typer.Option("--save-steps", help="Checkpoint every N steps.")]
SaveTotalLimit = Annotated[int | None, typer.Option(
    "--save-total-limit", help="Keep at most N checkpoints (oldest deleted).")]
LoggingSteps = Annotated[int, typer.Option("--logging-steps", help="Log every N steps.")]
ReportTo = Annotated[str, typer.Option(
    "--report-to", help="none, tensorboard or wandb (the package must be installed).")]
ResumeFrom = Annotated[str | None, typer.Option(
    "--resume-from-checkpoint", help="A checkpoint folder, or `latest` in --output-dir.")]


def train(
    model: opt.Model,
    output_dir: OutputDir,
    dataset: ChainedDataset = None,
    run: SourceRuns = None,
    run_name: RunName = None,
    split: opt.Split = "train",
    dataset_config: opt.DatasetConfigName = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    problem_field: opt.ProblemField = None,
    answer_field: opt.AnswerField = None,
    system_prompt: opt.SystemPrompt = None,
    prompt_template: opt.PromptTemplate = None,
    per_device_train_batch_size: PerDeviceBatch = 8,
    gradient_accumulation_steps: GradAccum = 1,
    num_train_epochs: Epochs = 1.0,
    max_steps: MaxSteps = -1,
    learning_rate: LearningRate = 1e-6,
    lr_scheduler_type: Scheduler = "linear",
    warmup_ratio: WarmupRatio = 0.0,
    weight_decay: WeightDecay = 0.0,
    max_grad_norm: MaxGradNorm = 1.0,
    beta: Beta = 0.0,
    epsilon: Epsilon = 0.2,
    epsilon_high: EpsilonHigh = None,
    num_iterations: NumIterations = 1,
    loss_aggregation: LossAggregation = "leaf",
    advantage: Advantage = "local",
    max_packed_tokens: MaxPackedTokens = None,
    gradient_checkpointing: GradientCheckpointing = False,
    full_determinism: FullDeterminism = False,
    save_steps: SaveSteps = 500,
    save_total_limit: SaveTotalLimit = None,
    logging_steps: LoggingSteps = 10,
    report_to: ReportTo = "none",
    resume_from_checkpoint: ResumeFrom = None,
    engine: opt.EngineOpt = "auto",
    torch_dtype: opt.TorchDtype = "auto",
    trust_remote_code: opt.TrustRemoteCode = False,
    seed: opt.Seed = 42,
    generation_batch_size: opt.GenerationBatchSize = 64,
    gpu_memory_utilization: opt.GpuMemoryUtilization = 0.9,
    max_model_len: opt.MaxModelLen = None,
    enable_prefix_caching: opt.EnablePrefixCaching = True,
    logprob_temperature: opt.LogprobTemperature = "raw",
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
    split_delimiters: opt.SplitDelimiters = opt.DEFAULT_DELIMITERS,
    temperature: opt.Temperature = 0.6,
    top_p: opt.TopP = 0.85,
    top_k: opt.TopK = 25,
    min_p: opt.MinP = 0.0,
    repetition_penalty: opt.RepetitionPenalty = 1.1,
    max_new_tokens: opt.MaxNewTokens = 1300,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Update a policy with TreeRPO: tree-packed, PPO-clipped, sibling-group advantages.

    Replay (no --dataset): trains on stored trees (of --run, default all), scoring unscored ones
    first. Chained (--dataset): each step grows the next batch of problems' trees with the
    current policy (the tree and sampling flags of `generate`), stores and scores them, and
    updates. Checkpoints go to OUTPUT_DIR/checkpoint-STEP; the final model to OUTPUT_DIR.
    Runs unchanged under `accelerate launch` (one shard of each step's trees per process).

    Examples:

        treerpo train --model ./sft --output-dir ./out --run gsm8k-trees --max-steps 100

        python -m treerpo.cli train --model_id M --dataset AI-MO/NuminaMath-CoT
        --per_device_train_batch_size 16 --output_dir ./checkpoints/treerpo --torch_dtype bfloat16
    """
    optimization = validated(
        OptimizationConfig, per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=num_train_epochs, max_steps=max_steps, learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high,
        num_iterations=num_iterations, loss_aggregation=loss_aggregation, advantage=advantage,
        max_packed_tokens=max_packed_tokens, gradient_checkpointing=gradient_checkpointing)
    config = validated(
        TrainConfig, run_name=run_name, output_dir=output_dir, source_runs=run or [],
        optimization=optimization, full_determinism=full_determinism, save_steps=save_steps,
        save_total_limit=save_total_limit, logging_steps=logging_steps, report_to=report_to,
        resume_from_checkpoint=resume_from_checkpoint, **opt.growth_config_parts(locals()))
    from treerpo.engines.model_checks import check_model_for_growth
    from treerpo.training.trainer import TrainCallbacks, run_training

    # The model (and, chained, the flags it bounds) is checked before the store is opened.
    check_model_for_growth(engine=config.engine, tree=config.tree if config.chained else None,
                           sampling=config.sampling)

    console = stdout_console()
    rows = StepRows(console=console, enabled=not json_output)
    callbacks = TrainCallbacks(
        on_message=(lambda message: None) if json_output
        else (lambda message: console.print(message, soft_wrap=True)),
        on_start=rows.start, on_log=rows.print_row)
    with store_at(db) as store:
        summary = run_training(store=store, config=config, callbacks=callbacks)
    if not summary.is_main_process:
        return
    if json_output:
        print_json(summary_json(summary))
    else:
        console.print(summary_table(summary))


_COLUMNS = [  # (header, metric, format)
    ("step", "step", "{:d}"), ("loss", "loss", "{:.4f}"),
    ("on-pol r", "on_policy_reward", "{:.3f}"), ("all r", "mean_reward", "{:.3f}"),
    ("signal", "nonzero_token_share", "{:.0%}"), ("forced", "forced_token_share", "{:.0%}"),
    ("|adv|", "mean_abs_advantage", "{:.3f}"), ("clip", "clip_fraction", "{:.3f}"),
    ("kl", "kl", "{:.4f}"), ("grad", "grad_norm", "{:.3f}"), ("lr", "learning_rate",
                                                                    "{:.2e}"),
    ("tok/s", "tokens_per_second", "{:,.0f}"), ("trees", "num_trees", "{:d}"),
]


class StepRows:
    """Logged steps as rows of one table printed as it grows (header once)."""

    def __init__(self, *, console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
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
                      padding=(0, 1))
        for header, _, pattern in _COLUMNS:
            table.add_column(header, justify="right", no_wrap=True,
                             width=9 if pattern == "{:.2e}" else 7)
        table.add_row(*[_fmt(metrics.get(key), pattern) for _, key, pattern in _COLUMNS])
        self.console.print(table)
        self.header_printed = True


def _fmt(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def summary_json(summary: TrainSummary) -> dict:
    return {
        "run": summary.run_name, "output_dir": summary.output_dir,
        "start_step": summary.start_step, "steps": summary.steps,
        "trees_trained": summary.trees_trained, "scored_first": summary.scored_first,
        "checkpoints": summary.checkpoints, "last_metrics": summary.last_metrics,
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
        ("checkpoints written", f"{len(summary.checkpoints)}"),
        ("final model", summary.output_dir),
        ("seconds", f"{summary.seconds:.1f}"),
    ]:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("train")(train)

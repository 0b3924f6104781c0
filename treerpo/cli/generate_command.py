"""`treerpo generate`: grow trees for a dataset's problems and store them (resumable)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from treerpo.cli import options as opt
from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    progress_bar,
    stdout_console,
    store_at,
    validated,
)
from treerpo.config import GenerateConfig
from treerpo.views import safe_text

if TYPE_CHECKING:  # the library loads when the command runs
    from treerpo.growth.runner import GenerateSummary


def generate(
    model: opt.Model,
    dataset: opt.Dataset,
    split: opt.Split = "train",
    dataset_config: opt.DatasetConfigName = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    problem_field: opt.ProblemField = None,
    answer_field: opt.AnswerField = None,
    system_prompt: opt.SystemPrompt = None,
    prompt_template: opt.PromptTemplate = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run name (default: derived from dataset and settings; the same command "
        "resumes the same run).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Problems grown together (their requests share every wave).")] = 16,
    worker_name: Annotated[str | None, typer.Option(
        "--worker-name", help="This process's name on its trees and claims, when several "
        "generate processes share the run (default: host:pid).")] = None,
    lease_seconds: Annotated[float, typer.Option(
        "--lease-seconds", help="A claimed batch stays this worker's for this long without a "
        "renewal (renewed every third of it while it grows); a killed worker's batches are "
        "taken over after it.")] = 60.0,
    follow_policy: Annotated[str | None, typer.Option(
        "--follow-policy", metavar="DIR", help="Grow with the newest checkpoint-* that a "
        "`train --follow --output-dir DIR` run has published (the base --model until the "
        "first), reloaded between batches, epoch after epoch, until --until-steps or Ctrl-C. "
        "Each tree records the step it was grown with.")] = None,
    until_steps: Annotated[int | None, typer.Option(
        "--until-steps", help="With --follow-policy: stop once the trainer has published this "
        "step (give its --max-steps).")] = None,
    engine: opt.EngineOpt = "auto",
    torch_dtype: opt.TorchDtype = "auto",
    bf16: opt.Bf16 = False,
    fp16: opt.Fp16 = False,
    use_vllm: opt.UseVllm = False,
    attn_implementation: opt.AttnImplementation = "auto",
    trust_remote_code: opt.TrustRemoteCode = False,
    seed: opt.Seed = 0,
    generation_batch_size: opt.GenerationBatchSize = 64,
    gpu_memory_utilization: opt.GpuMemoryUtilization = 0.9,
    max_model_len: opt.MaxModelLen = None,
    enable_prefix_caching: opt.EnablePrefixCaching = True,
    vllm_tensor_parallel_size: opt.VllmTensorParallelSize = 1,
    vllm_max_num_seqs: opt.VllmMaxNumSeqs = None,
    no_enable_prefix_caching: opt.NoPrefixCaching = False,
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
    split_delimiters: opt.SplitDelimiters = None,
    split_delimiter: opt.SplitDelimiter = None,
    temperature: opt.Temperature = 0.6,
    top_p: opt.TopP = 0.85,
    top_k: opt.TopK = 25,
    min_p: opt.MinP = 0.0,
    repetition_penalty: opt.RepetitionPenalty = 1.1,
    max_new_tokens: opt.MaxNewTokens = 1300,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Grow reasoning trees for a dataset's problems and store them.

    Each problem gets one tree (DESIGN steps 1-7: root split, entropy splits, coverage splits),
    written with all its nodes in one transaction, with its provenance (the tokenizer's and the
    weights' fingerprints, see `train`'s replay checks). Re-running the same command resumes:
    problems that already have a tree in the run are skipped. An existing `--run` resumes only
    with the same model and tree/sampling/prompt settings; otherwise it exits 2 naming the
    settings that differ (`--limit`/`--offset` may change, to grow more problems).
    `--rollout flat --num-generations G` stores plain GRPO samples (a root with G leaves) in
    the same store.

    Several processes started with the same command share the run: each claims a batch under
    a lease (--lease-seconds) and a killed one's batch is taken over once its lease runs out.
    With --follow-policy DIR they feed a `treerpo train --follow --output-dir DIR` run: between
    batches each loads the newest checkpoint the trainer published, and grows the problems
    again epoch after epoch until the trainer has published --until-steps (Ctrl-C or SIGTERM
    also end it cleanly: the batch in progress is dropped whole).

    Examples:

        treerpo generate --model Qwen/Qwen2.5-Math-1.5B-Instruct --dataset openai/gsm8k --limit 100

        treerpo generate --model ./my-model --dataset problems.jsonl --max-depth 4 --run try1

        treerpo generate --model ./my-model --dataset arith --rollout flat --num-generations 8

        treerpo generate --model ./sft --dataset data.jsonl --run live --db postgresql://h/db
        --follow-policy ./out --until-steps 200
    """
    config = validated(GenerateConfig, run_name=run, batch_size=batch_size,
                       worker_name=worker_name, lease_seconds=lease_seconds,
                       follow_policy=follow_policy, until_steps=until_steps,
                       **opt.growth_config_parts(locals()))
    from treerpo.engines import create_engine_from_config
    from treerpo.engines.loading import policy_version
    from treerpo.engines.model_checks import check_model_for_growth
    from treerpo.growth.runner import check_run_settings, run_generate
    from treerpo.problems.sources import load_problems

    data = config.data
    # Bad data is reported before the model loads (and before the store is touched).
    load_problems(dataset=data.dataset, split=data.split, config=data.dataset_config,
                  limit=data.limit, offset=data.offset, problem_field=data.problem_field,
                  answer_field=data.answer_field)
    check_model_for_growth(engine=config.engine, tree=config.tree, sampling=config.sampling)
    console = stdout_console()
    progress = progress_bar(label="generate", unit="trees", console=console,
                            disable=json_output, field="rate")
    task = progress.add_task("trees", total=None, rate="")

    def on_start(summary: GenerateSummary) -> None:
        if config.follow_policy is None:  # following a trainer, there is no last tree
            progress.update(task, total=summary.problems_total - summary.problems_already_done)

    def on_progress(summary: GenerateSummary) -> None:
        elapsed = max(progress.tasks[0].elapsed or 1e-9, 1e-9)
        progress.update(task, completed=summary.trees, rate=(
            f"{summary.trees / elapsed:.2f} trees/s · {summary.leaves} leaves · "
            f"{summary.tokens_decoded / elapsed:,.0f} tok/s"))

    with store_at(db) as store:
        check_run_settings(store, config)  # a resumed run with other settings: before loading
        policy, tokenizer = create_engine_from_config(
            config.engine, sampling_temperature=config.sampling.temperature,
            max_logprobs=config.tree.entropy_topk)
        with progress, _sigterm_stops(enabled=config.follow_policy is not None):
            summary = run_generate(
                store=store, config=config, engine=policy, tokenizer=tokenizer,
                policy_version=policy_version(config.engine.model), on_start=on_start,
                on_progress=on_progress,
                on_message=(lambda message: None) if json_output
                else (lambda message: progress.console.print(message, soft_wrap=True,
                                                             markup=False)))
    if json_output:
        print_json(summary_json(summary))
    else:
        console.print(summary_table(summary))


@contextlib.contextmanager
def _sigterm_stops(*, enabled: bool) -> Iterator[None]:
    """While `enabled`, SIGTERM (a process manager stopping the worker) ends it as Ctrl-C does."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_json(summary: GenerateSummary) -> dict:
    return {
        "run": summary.run_name, "trees": summary.trees, "nodes": summary.nodes,
        "leaves": summary.leaves, "max_depth": summary.max_depth,
        "tokens_decoded": summary.tokens_decoded, "unique_tokens": summary.unique_tokens,
        "skipped_rows": summary.problems_skipped_rows,
        "already_done": summary.problems_already_done, "seconds": round(summary.seconds, 3),
        "store_seconds": round(summary.store_seconds, 3),
        "tree_ids": summary.tree_ids, "worker": summary.worker,
        "trees_per_worker": summary.trees_per_worker,
        "epochs": summary.epochs, "policy_step": summary.policy_step,
        "policy_reloads": summary.policy_reloads, "interrupted": summary.interrupted,
        "policy_wait_seconds": round(summary.policy_wait_seconds, 3),
    }


def summary_table(summary: GenerateSummary) -> Table:
    table = Table(title=f"generate · run {summary.run_name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("trees grown", f"{summary.trees}"),
        ("problems already done (resumed)", f"{summary.problems_already_done}"),
        ("rows skipped (no usable reference)", f"{summary.problems_skipped_rows}"),
        ("nodes", f"{summary.nodes}"),
        ("leaves per tree", f"{summary.leaves_per_tree:.2f}"),
        ("max depth", f"{summary.max_depth}"),
        ("tokens decoded", f"{summary.tokens_decoded:,}"),
        ("unique tree tokens", f"{summary.unique_tokens:,}"),
        ("seconds", f"{summary.seconds:.1f}"),
    ]
    if summary.policy_step is not None:  # --follow-policy
        rows += [("last epoch", f"{summary.epochs}"),
                 ("policy step grown with last", f"{summary.policy_step}"),
                 ("checkpoints loaded", f"{summary.policy_reloads}"),
                 ("seconds waiting for a newer policy", f"{summary.policy_wait_seconds:.1f}"),
                 ("ended by", "Ctrl-C / SIGTERM" if summary.interrupted else "--until-steps")]
    if len(summary.trees_per_worker) > 1:  # several workers shared the run: each one's share
        total = sum(summary.trees_per_worker.values())
        rows += [(f"trees by {safe_text(worker or '(unnamed)')}"
                  + (" (this one)" if worker == summary.worker else ""),
                  f"{count} ({count / total:.0%})")
                 for worker, count in sorted(summary.trees_per_worker.items())]
    for row in rows:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)

"""`treerpo eval gsm8k` (alias `eval-gsm8k`): greedy and maj@k GSM8K accuracy; `eval show RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

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
from treerpo.errors import BadInputError
from treerpo.store import repository
from treerpo.views import safe_text, snippet

if TYPE_CHECKING:
    from treerpo.eval.gsm8k import EvalProgress, EvalSummary

eval_app = typer.Typer(
    help="Evaluate models: GSM8K greedy and maj@k accuracy, stored per sample.",
    no_args_is_help=True,
)

PROBLEM_SNIPPET_CHARS = 60
ALIAS_HELP = """Alias of `treerpo eval gsm8k` (the original TreeRPO command), same options.

Example:

    python -m treerpo.cli eval-gsm8k --model_id omrisap/TreeRPO-Qwen2.5-Math-1.5B
"""


def gsm8k(
    model: opt.Model,
    mode: Annotated[str, typer.Option(
        "--mode", help="greedy (temperature 0), maj8 (majority of --k samples at temperature 0.7, "
        "top-p 0.8) or both.")] = "both",
    k: Annotated[int, typer.Option("--k", help="Samples per problem for the majority vote.")] = 8,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    data_file: Annotated[str | None, typer.Option(
        "--data-file", help="Local GSM8K .jsonl/.json/.parquet/.csv (question, answer `#### N`) "
        "or a folder of split files; default: openai/gsm8k (config main) from the hub.")] = None,
    split: opt.Split = "test",
    problem_field: Annotated[str, typer.Option(
        "--problem-field", help="Column holding the question.")] = "question",
    answer_field: Annotated[str, typer.Option(
        "--answer-field", help="Column holding the reference (`#### N` or a plain answer).")
    ] = "answer",
    system_prompt: opt.SystemPrompt = None,
    prompt_template: opt.PromptTemplate = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run name (default: derived from the model and the settings that shape "
        "results; the same command resumes the same run, a named run re-run with other settings "
        "is redone).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Problems evaluated together: one engine call per mode, one "
        "write.")] = 64,
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", help="Completion tokens per sample.")] = 1024,
    engine: opt.EngineOpt = "auto",
    torch_dtype: opt.TorchDtype = "auto",
    trust_remote_code: opt.TrustRemoteCode = False,
    seed: opt.Seed = 0,
    generation_batch_size: opt.GenerationBatchSize = 64,
    gpu_memory_utilization: opt.GpuMemoryUtilization = 0.9,
    max_model_len: opt.MaxModelLen = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Evaluate a model on GSM8K: greedy and/or maj@k accuracy, every sample stored.

    Settings of the original TreeRPO release: greedy decodes at temperature 0; maj@k draws k
    samples at temperature 0.7, top-p 0.8; no top-k, min-p or repetition penalty; 1024 new
    tokens. A sample's answer is its last \\boxed{...} (none: incorrect, no vote); votes are
    grouped by mathematical equivalence, a tie is broken at random from --seed. The question is
    the single user message of the chat template. Records go to the store (see
    `treerpo eval show RUN`); re-running the same command resumes.

    `--json` prints one line: {"greedy_accuracy", "maj_accuracy", "k", "n"} (null for a mode
    not run; accuracies are fractions).

    Examples:

        treerpo eval gsm8k --model omrisap/TreeRPO-Qwen2.5-Math-1.5B

        treerpo eval gsm8k --model ./checkpoints/step-200 --mode greedy --limit 200 --json

        python -m treerpo.cli eval-gsm8k --model_id omrisap/TreeRPO-Qwen2.5-Math-1.5B
    """
    from treerpo.eval.gsm8k import GSM8K_HUB_ID, EvalConfig, load_eval_problems

    # An absolute path: the same file named two ways is the same run and the same problems.
    dataset = str(Path(data_file).expanduser().resolve()) if data_file else GSM8K_HUB_ID
    data = opt.data_config(dataset=dataset, split=split, limit=limit, offset=offset,
                           problem_field=problem_field, answer_field=answer_field)
    config = validated(
        EvalConfig,
        run_name=run,
        mode=mode,
        k=k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        data=data,
        engine=opt.engine_config(model=model, engine=engine, torch_dtype=torch_dtype,
                                 trust_remote_code=trust_remote_code, seed=seed,
                                 generation_batch_size=generation_batch_size,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 max_model_len=max_model_len),
        prompt=opt.prompt_settings(system_prompt=system_prompt, prompt_template=prompt_template),
    )
    from treerpo.engines import create_engine_from_config
    from treerpo.engines.model_checks import check_model
    from treerpo.eval.gsm8k import run_gsm8k_eval

    # Bad data is reported before the model loads (and before the store is touched).
    problem_set = load_eval_problems(config)
    check_model(config.engine.model, trust_remote_code=config.engine.trust_remote_code,
                max_new_tokens=config.max_new_tokens)
    policy, tokenizer = create_engine_from_config(config.engine)
    console = stdout_console()
    progress = progress_bar(label="eval gsm8k", unit="records", console=console,
                            disable=json_output, field="accuracy")
    task = progress.add_task("records", total=None, accuracy="")

    def on_progress(state: EvalProgress) -> None:
        accuracy = " · ".join(f"{mode} {value:.1%}"
                              for mode, value in state.running_accuracy.items())
        progress.update(task, total=state.records_total, completed=state.records_done,
                        accuracy=accuracy)

    with store_at(db) as store, progress:
        summary = run_gsm8k_eval(store=store, engine=policy, tokenizer=tokenizer, config=config,
                                 problem_set=problem_set, on_progress=on_progress)
    if json_output:
        print_json(summary_json(summary))
    else:
        console.print(summary_table(summary))


def summary_json(summary: EvalSummary) -> dict:
    greedy, majority = summary.greedy, summary.majority
    return {
        "greedy_accuracy": None if greedy is None else greedy.accuracy,
        "maj_accuracy": None if majority is None else majority.accuracy,
        "k": summary.k,
        "n": summary.num_problems,
        "run": summary.run_name,
    }


def summary_table(summary: EvalSummary) -> Table:
    table = Table(title=f"GSM8K · run {summary.run_name}")
    for name in ("mode", "accuracy", "n", "boxed", "mean tokens", "seconds"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode in summary.modes:
        table.add_row(mode.mode, f"{mode.accuracy:.1%}", f"{mode.num_problems}",
                      f"{mode.boxed_share:.1%}", f"{mode.mean_completion_tokens:.1f}",
                      f"{mode.seconds:.1f}")
    notes = []
    if summary.resumed_records:
        notes.append(f"{summary.resumed_records} records resumed from the store")
    if summary.skipped_rows:
        notes.append(f"{summary.skipped_rows} rows skipped (no usable question or answer)")
    if notes:
        table.caption = "; ".join(notes)
    return table


def show(
    run: Annotated[str, typer.Argument(help="Name of an eval run (printed by `eval gsm8k`).")],
    failures: Annotated[bool, typer.Option(
        "--failures", help="Only the problems the model got wrong.")] = False,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """List an eval run's stored records: problem, reference, vote, correct.

    `--json` prints a list of {"problem_id", "row_index", "mode", "problem", "reference",
    "answers", "vote", "correct", "num_tokens", "completions"}.

    Examples:

        treerpo eval show eval-gsm8k-my-model-test-1a2b3c4d --failures

        treerpo eval show my-eval --json > records.json
    """
    with store_at(db, read_only=True) as store:
        found = repository.find_run(store, run)
        if found.kind != "eval":
            raise BadInputError(f"run {run!r} is a {found.kind} run, not an eval run")
        records = repository.list_eval_results(store, run_id=found.id, failures_only=failures,
                                               include_completions=json_output)
    if json_output:
        print_json([
            {"problem_id": record.problem_id, "row_index": record.row_index,
             "mode": record.mode, "problem": record.problem, "reference": record.reference,
             "answers": record.answers, "vote": record.vote, "correct": record.correct,
             "num_tokens": record.num_tokens, "completions": record.completions}
            for record in records
        ])
        return
    stdout_console().print(records_table(run, records, failures=failures))


def records_table(run: str, records: list[repository.StoredEvalResult], *,
                  failures: bool) -> Table:
    title = f"eval run {run} · {'failures' if failures else 'records'}: {len(records)}"
    table = Table(title=title)
    for name in ("row", "mode", "problem", "reference", "vote", "correct"):
        table.add_column(name, justify="right" if name == "row" else "left")
    for record in records:
        vote = "–" if record.vote is None else safe_text(record.vote)
        table.add_row(
            f"{record.row_index}", record.mode,
            Text(snippet(safe_text(record.problem), full=False, limit=PROBLEM_SNIPPET_CHARS)),
            Text(safe_text(record.reference)), Text(vote),
            Text("yes", style="green") if record.correct else Text("no", style="red"),
        )
    return table


def register(app: typer.Typer) -> None:
    eval_app.command("gsm8k")(gsm8k)
    eval_app.command("show")(show)
    app.add_typer(eval_app, name="eval")
    # The original TreeRPO spelling: `python -m treerpo.cli eval-gsm8k --model_id M`.
    app.command("eval-gsm8k", help=ALIAS_HELP)(gsm8k)

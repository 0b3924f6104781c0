"""`treerpo eval gsm8k` (alias `eval-gsm8k`) and `treerpo eval dataset`: greedy and maj@k accuracy
through one library call (`treerpo.eval.runner.run_eval`); `eval show RUN`."""

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
    from treerpo.eval.runner import EvalConfig, EvalProgress, EvalSummary

eval_app = typer.Typer(
    help="Evaluate models: greedy and maj@k accuracy on GSM8K or any dataset, stored per sample.",
    no_args_is_help=True,
)

PROBLEM_SNIPPET_CHARS = 60
ALIAS_HELP = """Alias of `treerpo eval gsm8k` (the original TreeRPO command), same options.

Example:

    python -m treerpo.cli eval-gsm8k --model_id omrisap/TreeRPO-Qwen2.5-Math-1.5B
"""


Mode = Annotated[str, typer.Option(
    "--mode", help="greedy (temperature 0), maj8 (majority of --k samples at temperature 0.7, "
    "top-p 0.8) or both.")]
K = Annotated[int, typer.Option("--k", help="Samples per problem for the majority vote.")]
EvalRun = Annotated[str | None, typer.Option(
    "--run", help="Run name (default: derived from the model and the settings that shape "
    "results; the same command resumes the same run, a named run re-run with other settings "
    "is redone).")]
EvalBatchSize = Annotated[int, typer.Option(
    "--batch-size", help="Problems evaluated together: one engine call per mode, one write.")]
EvalMaxNewTokens = Annotated[int, typer.Option(
    "--max-new-tokens", help="Completion tokens per sample.")]


def gsm8k(
    model: opt.Model,
    mode: Mode = "both",
    k: K = 8,
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
    run: EvalRun = None,
    batch_size: EvalBatchSize = 64,
    max_new_tokens: EvalMaxNewTokens = 1024,
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
    from treerpo.eval.runner import GSM8K_HUB_ID

    # An absolute path: the same file named two ways is the same run and the same problems.
    dataset = str(Path(data_file).expanduser().resolve()) if data_file else GSM8K_HUB_ID
    data = opt.data_config(dataset=dataset, split=split, limit=limit, offset=offset,
                           problem_field=problem_field, answer_field=answer_field)
    config = _eval_config(
        benchmark="gsm8k", run_name=run, mode=mode, k=k, max_new_tokens=max_new_tokens,
        batch_size=batch_size, data=data,
        engine=_eval_engine(
            model=model, engine=engine, torch_dtype=torch_dtype, bf16=bf16, fp16=fp16,
            use_vllm=use_vllm, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, seed=seed,
            generation_batch_size=generation_batch_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len),
        prompt=opt.prompt_settings(system_prompt=system_prompt, prompt_template=prompt_template))
    _evaluate(config, label="eval gsm8k", title="GSM8K", db=db, json_output=json_output)


def dataset(
    model: opt.Model,
    dataset: opt.Dataset,
    mode: Mode = "both",
    k: K = 8,
    split: opt.Split = "test",
    dataset_config: opt.DatasetConfigName = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    problem_field: opt.ProblemField = None,
    answer_field: opt.AnswerField = None,
    system_prompt: opt.SystemPrompt = None,
    prompt_template: opt.PromptTemplate = None,
    run: EvalRun = None,
    batch_size: EvalBatchSize = 64,
    max_new_tokens: EvalMaxNewTokens = 1024,
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
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Evaluate a model on any dataset `generate` accepts: greedy and/or maj@k accuracy.

    The same modes, voting, settings and storage as `eval gsm8k` (see its help), on a hub
    dataset, a local .jsonl/.json/.parquet/.csv file (or a folder of split files) or a built-in
    task (`arith`, `arith-long`). Problems and references are read as `generate` reads them
    (`--problem-field`/`--answer-field` override). Records go to the store; re-running the same
    command resumes.

    `--json` prints one line: {"greedy_accuracy", "maj_accuracy", "k", "n", "run"}.

    Examples:

        treerpo eval dataset --model ./checkpoints/treerpo --dataset arith --mode greedy --limit 200

        treerpo eval dataset --model ./sft --dataset HuggingFaceH4/MATH-500 --mode both --k 8
    """
    data = opt.data_config(dataset=_dataset_name(dataset), split=split,
                           dataset_config=dataset_config, limit=limit, offset=offset,
                           problem_field=problem_field, answer_field=answer_field)
    config = _eval_config(
        benchmark=Path(dataset).stem, run_name=run, mode=mode, k=k,
        max_new_tokens=max_new_tokens, batch_size=batch_size, data=data,
        engine=_eval_engine(
            model=model, engine=engine, torch_dtype=torch_dtype, bf16=bf16, fp16=fp16,
            use_vllm=use_vllm, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, seed=seed,
            generation_batch_size=generation_batch_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len),
        prompt=opt.prompt_settings(system_prompt=system_prompt, prompt_template=prompt_template))
    _evaluate(config, label="eval", title=f"{config.benchmark} ({config.data.split})", db=db,
              json_output=json_output)


def _dataset_name(dataset: str) -> str:
    """A local file or folder as its absolute path (one problem set, however it is named);
    hub ids and built-in names as given."""
    from treerpo.problems.sources import BUILTIN_DATASETS

    path = Path(dataset).expanduser()
    return str(path.resolve()) if dataset not in BUILTIN_DATASETS and path.exists() else dataset


def _eval_engine(*, engine: str, torch_dtype: str, bf16: bool, fp16: bool, use_vllm: bool,
                 **values):
    """The engine settings of both eval commands, TRL's spellings folded in."""
    return opt.engine_config(engine=opt.trl_engine(engine, use_vllm=use_vllm),
                             torch_dtype=opt.trl_torch_dtype(torch_dtype, bf16=bf16, fp16=fp16),
                             **values)


def _eval_config(**values) -> EvalConfig:
    from treerpo.eval.runner import EvalConfig

    return validated(EvalConfig, **values)


def _evaluate(config: EvalConfig, *, label: str, title: str, db: str, json_output: bool) -> None:
    """Load the problems (bad data fails before the model loads and before the store is
    touched), the engine, then run the eval with a progress bar and print the summary."""
    from treerpo.engines import create_engine_from_config
    from treerpo.engines.model_checks import check_model
    from treerpo.eval.runner import load_eval_problems, run_eval

    problem_set = load_eval_problems(config)
    check_model(config.engine.model, trust_remote_code=config.engine.trust_remote_code,
                max_new_tokens=config.max_new_tokens)
    policy, tokenizer = create_engine_from_config(config.engine)
    console = stdout_console()
    progress = progress_bar(label=label, unit="records", console=console,
                            disable=json_output, field="accuracy")
    task = progress.add_task("records", total=None, accuracy="")

    def on_progress(state: EvalProgress) -> None:
        accuracy = " · ".join(f"{mode} {value:.1%}"
                              for mode, value in state.running_accuracy.items())
        progress.update(task, total=state.records_total, completed=state.records_done,
                        accuracy=accuracy)

    with store_at(db) as store, progress:
        summary = run_eval(store=store, engine=policy, tokenizer=tokenizer, config=config,
                           problem_set=problem_set, on_progress=on_progress)
    if json_output:
        print_json(summary_json(summary))
    else:
        console.print(summary_table(summary, title=title))


def summary_json(summary: EvalSummary) -> dict:
    greedy, majority = summary.greedy, summary.majority
    return {
        "greedy_accuracy": None if greedy is None else greedy.accuracy,
        "maj_accuracy": None if majority is None else majority.accuracy,
        "k": summary.k,
        "n": summary.num_problems,
        "run": summary.run_name,
    }


def summary_table(summary: EvalSummary, *, title: str) -> Table:
    table = Table(title=f"{title} · run {summary.run_name}")
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
    run: Annotated[str, typer.Argument(
        help="Name of an eval run (printed by `eval gsm8k`, `eval dataset`).")],
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
    eval_app.command("dataset")(dataset)
    eval_app.command("show")(show)
    app.add_typer(eval_app, name="eval")
    # The original TreeRPO spelling: `python -m treerpo.cli eval-gsm8k --model_id M`.
    app.command("eval-gsm8k", help=ALIAS_HELP)(gsm8k)

r"""Evaluation: greedy and maj@k accuracy of a model on any problem source, every sample stored.

`treerpo eval gsm8k` (GSM8K's test split, the original release's benchmark), `treerpo eval
dataset` (any source `generate` accepts: a hub id, a local file, `arith`) and the evaluations
during `train --eval-dataset` all run `run_eval`. The settings are the original TreeRPO
release's (fixed here; saved with every eval run's config):

- **greedy**: temperature 0 (argmax), `max_new_tokens` 1024, no top-k / top-p / min-p /
  repetition penalty;
- **maj@k**: `k` (8) samples per problem at temperature 0.7, top-p 0.8, nothing else; the k
  requests of a problem are the same prompt k times, batched with the other problems' requests.

The prompt is the question as a single user message through the tokenizer's chat template
(`PromptSettings`' default; a system prompt or a plain prompt template can be given), or a
conversational row's own messages. A
completion's answer is its last `\boxed{…}`: without one it is incorrect and casts no vote.
Greedy correctness is `is_correct(completion, reference)`, the training reward's check. Maj@k
votes are grouped by mathematical equivalence (`treerpo.eval.voting`); a tie is broken by an rng
seeded from `(seed, row index)`, so a problem's vote does not depend on which batch it ran in.
The vote is correct when it is equivalent to the reference.

Problems go `batch_size` at a time: one `engine.generate` call for the batch's greedy requests,
one for its maj@k requests, then all their records are written in one transaction
(`eval_results`: completions, extracted answers, vote, verdict, completion tokens).

Runs. An eval run (kind "eval") is named by `--run`, or after the settings that shape its
results (model, data, k, max_new_tokens, seed, prompt, engine, dtype). Running again with the
same result settings **resumes**: (problem, mode) pairs already recorded are kept, not redone, so
a killed eval continues where it stopped and a larger `--limit` or another `--mode` adds what is
missing. (Resumed maj@k samples are not the samples an uninterrupted run would have drawn: the
engine's random stream restarts.) Running a named run again with other result settings
**redoes** it: its records are deleted and its configuration replaced. The summary covers the
selected problems and modes, resumed records included; its seconds count this invocation only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from treerpo.config import DataConfig, EngineConfig, slug
from treerpo.engines.base import Engine, GenerationRequest, SamplingSettings
from treerpo.errors import BadInputError
from treerpo.eval.voting import majority_vote
from treerpo.limits import INT64_MAX
from treerpo.problems.prompts import PromptSettings
from treerpo.problems.sources import BUILTIN_DATASETS, Problem, ProblemSet, load_problems
from treerpo.scoring.answers import extract_boxed
from treerpo.scoring.verify import answers_equivalent, is_correct
from treerpo.store import repository
from treerpo.store.database import Store

GSM8K_HUB_ID = "openai/gsm8k"
RUN_KIND = "eval"
GREEDY_MODE = "greedy"

GREEDY_SAMPLING = SamplingSettings(
    temperature=0.0, top_p=None, top_k=None, min_p=None, repetition_penalty=None
)
MAJORITY_SAMPLING = SamplingSettings(
    temperature=0.7, top_p=0.8, top_k=None, min_p=None, repetition_penalty=None
)
# Eval needs no top-k candidates; the engines return at least one per position.
_TOPK_CANDIDATES = 1

EvalMode = Literal["greedy", "maj8", "both"]


def default_eval_data() -> DataConfig:
    """GSM8K's test split from the hub; its columns: `question`, and `answer` ending `#### N`."""
    return DataConfig(dataset=GSM8K_HUB_ID, split="test", problem_field="question",
                      answer_field="answer")


class EvalConfig(BaseModel):
    """`treerpo eval gsm8k|dataset`: which model, which problems, which modes. Saved with the
    run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run_name: str | None = None
    # What the default run name and the summary call the problems ("gsm8k", "arith", ...).
    benchmark: str = "gsm8k"
    mode: EvalMode = "both"
    k: int = Field(default=8, ge=1, le=INT64_MAX, description="samples per problem for maj@k")
    max_new_tokens: int = Field(default=1024, ge=1, le=INT64_MAX)
    # Problems per round: their requests share one engine call per mode, their records one write.
    batch_size: int = Field(default=64, ge=1, le=INT64_MAX)
    data: DataConfig = Field(default_factory=default_eval_data)
    engine: EngineConfig
    prompt: PromptSettings = PromptSettings()

    @property
    def majority_mode(self) -> str:
        return f"maj@{self.k}"

    def modes(self) -> list[str]:
        """The stored mode names this config evaluates, greedy first."""
        if self.mode == "greedy":
            return [GREEDY_MODE]
        if self.mode == "maj8":
            return [self.majority_mode]
        return [GREEDY_MODE, self.majority_mode]

    def result_settings(self) -> dict[str, Any]:
        """The settings that shape the records (not which problems or modes, nor batching)."""
        dumped = self.model_dump(mode="json")
        return {
            "model": self.engine.model,
            "engine": {key: dumped["engine"][key] for key in ("engine", "torch_dtype", "seed")},
            "data": {key: value for key, value in dumped["data"].items()
                     if key not in ("limit", "offset")},
            "k": self.k,
            "max_new_tokens": self.max_new_tokens,
            "prompt": dumped["prompt"],
        }

    def resolved_run_name(self) -> str:
        """`--run`, or `eval-BENCHMARK-MODEL-SPLIT-DIGEST` from the result settings: the same
        command resumes the same run, a changed setting starts another."""
        if self.run_name:
            return self.run_name
        encoded = json.dumps(self.result_settings(), sort_keys=True).encode()
        digest = hashlib.sha256(encoded).hexdigest()[:8]
        model_stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(self.engine.model).name).strip("-")
        benchmark = slug(self.benchmark) or "data"
        return f"eval-{benchmark}-{model_stem.lower() or 'model'}-{self.data.split}-{digest}"

    def stored_config(self) -> dict[str, Any]:
        """The whole config as stored with the run, the fixed sampling settings included."""
        return {
            **self.model_dump(mode="json"),
            "sampling": {GREEDY_MODE: asdict(GREEDY_SAMPLING), "maj": asdict(MAJORITY_SAMPLING)},
        }


@dataclass(frozen=True)
class ModeSummary:
    """The result of one mode over the selected problems."""

    mode: str  # "greedy" or "maj@K"
    accuracy: float  # correct problems / problems
    num_problems: int
    boxed_share: float  # samples with a \boxed{} answer / samples
    mean_completion_tokens: float  # per sample
    seconds: float  # spent on this mode in this invocation (0 for a fully resumed mode)


@dataclass
class EvalSummary:
    run_name: str
    k: int | None  # None when maj@k was not run
    num_problems: int
    skipped_rows: int  # selected rows without a usable question or reference
    resumed_records: int  # (problem, mode) records found in the store, not redone
    modes: list[ModeSummary] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def greedy(self) -> ModeSummary | None:
        return next((mode for mode in self.modes if mode.mode == GREEDY_MODE), None)

    @property
    def majority(self) -> ModeSummary | None:
        return next((mode for mode in self.modes if mode.mode != GREEDY_MODE), None)


@dataclass(frozen=True)
class EvalProgress:
    records_done: int  # (problem, mode) records written by this invocation
    records_total: int  # records this invocation has to write
    running_accuracy: dict[str, float]  # per mode, over this invocation's records so far


ProgressCallback = Callable[[EvalProgress], None]


@dataclass(frozen=True)
class PromptedProblem:
    """A problem ready for the engine: its store id and its rendered prompt's token ids."""

    problem: Problem
    problem_id: int
    prompt_token_ids: list[int]


def load_eval_problems(config: EvalConfig) -> ProblemSet:
    """The selected problems (GSM8K, a built-in dataset such as `arith`, a hub id or a file);
    BadInputError for a missing file or missing columns.

    Cheap for a local file: the CLI calls it before loading the model so bad data fails fast.
    """
    data = config.data
    is_gsm8k_file = (config.benchmark == "gsm8k" and data.dataset != GSM8K_HUB_ID
                     and data.dataset not in BUILTIN_DATASETS)
    if is_gsm8k_file and not Path(data.dataset).expanduser().exists():
        raise BadInputError(f"--data-file not found: {Path(data.dataset).expanduser().resolve()}")
    return load_problems(dataset=data.dataset, split=data.split, config=data.dataset_config,
                         limit=data.limit, offset=data.offset, problem_field=data.problem_field,
                         answer_field=data.answer_field)


def run_eval(
    *,
    store: Store,
    engine: Engine,
    tokenizer: Any,
    config: EvalConfig,
    problem_set: ProblemSet | None = None,
    on_progress: ProgressCallback | None = None,
) -> EvalSummary:
    """Evaluate the selected problems in the configured modes, store every record, summarise.

    `problem_set` is `load_eval_problems(config)` when the caller already has it.
    """
    started = time.perf_counter()
    if problem_set is None:
        problem_set = load_eval_problems(config)
    problems = problem_set.problems
    # A prompt that cannot render (no chat template) is bad input: find out before any write.
    config.prompt.build(tokenizer, problems[0].problem, messages=problems[0].messages)
    run_name = config.resolved_run_name()
    run = repository.get_or_create_run(store, name=run_name, kind=RUN_KIND,
                                       model=config.engine.model, config=config.stored_config())
    repository.save_eval_run_config(
        store, run_id=run.id, model=config.engine.model, config=config.stored_config(),
        discard_results=_stored_result_settings(run.config) != config.result_settings(),
    )
    problem_ids = repository.upsert_problems(store, [
        (repository.ProblemKey(problem.dataset, problem.split, problem.row_index),
         problem.problem, problem.reference)
        for problem in problems
    ])
    done = repository.completed_eval_keys(store, run_id=run.id)
    modes = config.modes()
    records_total = sum((problem_id, mode) not in done for problem_id in problem_ids
                        for mode in modes)
    summary = EvalSummary(
        run_name=run_name,
        k=config.k if config.majority_mode in modes else None,
        num_problems=len(problems),
        skipped_rows=problem_set.skipped,
        resumed_records=len(problems) * len(modes) - records_total,
    )
    seconds_by_mode = dict.fromkeys(modes, 0.0)
    correct_by_mode = dict.fromkeys(modes, 0)
    written_by_mode = dict.fromkeys(modes, 0)

    def report() -> None:
        if on_progress is not None:
            on_progress(EvalProgress(
                records_done=sum(written_by_mode.values()), records_total=records_total,
                running_accuracy={mode: correct_by_mode[mode] / written_by_mode[mode]
                                  for mode in modes if written_by_mode[mode]},
            ))

    report()
    for start in range(0, len(problems), config.batch_size):
        batch = [
            PromptedProblem(problem=problem, problem_id=problem_id,
                            prompt_token_ids=config.prompt.build(
                                tokenizer, problem.problem, messages=problem.messages).token_ids)
            for problem, problem_id in zip(problems[start:start + config.batch_size],
                                           problem_ids[start:start + config.batch_size],
                                           strict=True)
        ]
        records: list[repository.EvalRecord] = []
        for mode in modes:
            todo = [item for item in batch if (item.problem_id, mode) not in done]
            if not todo:
                continue
            mode_started = time.perf_counter()
            if mode == GREEDY_MODE:
                mode_records = evaluate_greedy(engine=engine, tokenizer=tokenizer, problems=todo,
                                               max_new_tokens=config.max_new_tokens)
            else:
                mode_records = evaluate_majority(engine=engine, tokenizer=tokenizer,
                                                 problems=todo, k=config.k,
                                                 max_new_tokens=config.max_new_tokens,
                                                 seed=config.engine.seed)
            seconds_by_mode[mode] += time.perf_counter() - mode_started
            written_by_mode[mode] += len(mode_records)
            correct_by_mode[mode] += sum(record.correct for record in mode_records)
            records.extend(mode_records)
        repository.write_eval_results(store, run_id=run.id, records=records)
        if records:
            report()
    repository.finish_run(store, run.id)
    summary.modes = _summarise_modes(store, run_id=run.id, problem_ids=problem_ids, modes=modes,
                                     seconds_by_mode=seconds_by_mode)
    summary.seconds = time.perf_counter() - started
    return summary


def evaluate_greedy(
    *,
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[PromptedProblem],
    max_new_tokens: int,
) -> list[repository.EvalRecord]:
    """One greedy completion per problem, in one engine call; correct = `is_correct`."""
    requests = [GenerationRequest(context_token_ids=item.prompt_token_ids,
                                  max_new_tokens=max_new_tokens) for item in problems]
    results = engine.generate(requests, sampling=GREEDY_SAMPLING, topk=_TOPK_CANDIDATES)
    records = []
    for item, result in zip(problems, results, strict=True):
        completion = _decode(tokenizer, result.token_ids)
        answer = extract_boxed(completion)
        records.append(repository.EvalRecord(
            problem_id=item.problem_id, mode=GREEDY_MODE, completions=[completion],
            answers=[answer], vote=answer,
            correct=is_correct(completion, item.problem.reference),
            num_tokens=len(result.token_ids),
        ))
    return records


def evaluate_majority(
    *,
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[PromptedProblem],
    k: int,
    max_new_tokens: int,
    seed: int,
) -> list[repository.EvalRecord]:
    """k samples per problem (the same prompt k times), all in one engine call; the problem is
    correct when the majority vote is equivalent to the reference."""
    requests = [GenerationRequest(context_token_ids=item.prompt_token_ids,
                                  max_new_tokens=max_new_tokens)
                for item in problems for _ in range(k)]
    results = engine.generate(requests, sampling=MAJORITY_SAMPLING, topk=_TOPK_CANDIDATES)
    records = []
    for index, item in enumerate(problems):
        samples = results[index * k:(index + 1) * k]
        completions = [_decode(tokenizer, sample.token_ids) for sample in samples]
        answers = [extract_boxed(completion) for completion in completions]
        vote = majority_vote(answers=answers, rng=tie_break_rng(seed=seed,
                                                                 row_index=item.problem.row_index))
        records.append(repository.EvalRecord(
            problem_id=item.problem_id, mode=f"maj@{k}", completions=completions,
            answers=answers, vote=vote,
            correct=vote is not None and answers_equivalent(vote, item.problem.reference),
            num_tokens=sum(len(sample.token_ids) for sample in samples),
        ))
    return records


def tie_break_rng(*, seed: int, row_index: int) -> random.Random:
    """The rng that breaks a problem's voting tie: fixed by the seed and the problem's row."""
    return random.Random(seed * 1_000_003 + row_index)


def _decode(tokenizer: Any, token_ids: Sequence[int]) -> str:
    # The EOS token the engine returns is not part of the answer text.
    return tokenizer.decode([int(token_id) for token_id in token_ids], skip_special_tokens=True)


def _stored_result_settings(stored_config: dict[str, Any]) -> dict[str, Any] | None:
    fields = {key: value for key, value in stored_config.items() if key in EvalConfig.model_fields}
    try:
        return EvalConfig.model_validate(fields).result_settings()
    except ValidationError:  # a config this version cannot read: treat the settings as changed
        return None


def _summarise_modes(
    store: Store,
    *,
    run_id: int,
    problem_ids: Sequence[int],
    modes: Sequence[str],
    seconds_by_mode: dict[str, float],
) -> list[ModeSummary]:
    selected = set(problem_ids)
    stored = [record for record in repository.list_eval_results(store, run_id=run_id)
              if record.problem_id in selected and record.mode in modes]
    summaries = []
    for mode in modes:
        records = [record for record in stored if record.mode == mode]
        num_samples = sum(len(record.answers) for record in records)
        boxed = sum(answer is not None for record in records for answer in record.answers)
        summaries.append(ModeSummary(
            mode=mode,
            accuracy=sum(record.correct for record in records) / len(records) if records else 0.0,
            num_problems=len(records),
            boxed_share=boxed / num_samples if num_samples else 0.0,
            mean_completion_tokens=(sum(record.num_tokens for record in records) / num_samples
                                    if num_samples else 0.0),
            seconds=seconds_by_mode[mode],
        ))
    return summaries

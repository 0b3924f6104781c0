r"""Warm-start a tiny policy for a built-in arith dataset, as shipped in `treerpo/policies`.

    python scripts/warm_start_arith.py --seed 0 --out treerpo/policies/arith-tiny
    python scripts/warm_start_arith.py --dataset arith-long --seed 0 \
        --out treerpo/policies/arith-long-tiny

`--dataset` picks the built-in dataset (`arith`, the default, or `arith-long`) and the defaults
of the flags that depend on it (`DATASET_DEFAULTS`: the answer-only share, the accuracy band,
how often and how long evaluations run, the temperature of the sampled measurement); every
other step, and the model, are the same for both.

1. **Tokenizer**: byte-level BPE trained with the `tokenizers` library on rendered train
   examples of the dataset, with Qwen2's normalizer and pre-tokenizer (one token per digit, so
   numbers are spelled digit by digit), Qwen's chat markers (`<|im_start|>`, EOS `<|im_end|>`) and
   `treerpo.tiny_model`'s chat template. It is saved and loaded back with `load_tokenizer` before
   training, and must encode every example the same way: the policy learns the tokenizer that
   users load.
2. **Model**: a randomly initialised `Qwen2ForCausalLM` (float32, tied embeddings).
3. **Supervised warm start**: next-token cross-entropy on the assistant part only: the prompt
   (the problem through the chat template, as `build_prompt` renders a tree's root) is context,
   the answer and the EOS token are the targets, token-averaged over the batch. The answer is
   the boxed result alone for a share of the examples (`--direct-share`; drawn per example
   from a stream of its own) and the worked solution for the rest. For `arith` the share is
   half, so the policy learns two ways to answer, chosen at its first token: working the
   problem out, which it half-learns, and answering at once, which it can hardly ever get
   right. Which way pays is for RL to find, as a pretrained model holds both careful and hasty
   habits. For `arith-long` the share is 0: every target is worked out, so what RL has to fix
   is a wrong line somewhere along a long chain, not a choice at the first token. AdamW, linear
   warmup then a constant learning rate (no decay: the run stops early, see 4).
4. **Early stop in a band**: every `--eval-every` steps the greedy accuracy on the first
   `--eval-problems` problems of the dataset's test split is measured with the project's own
   `HFEngine` (temperature 0, no other transform) and `is_correct`. Training stops at the first
   evaluation whose accuracy lies in [`--min-accuracy`, `--max-accuracy`]: the policy is
   deliberately half-trained, so that TreeRPO has room to improve it and samples of one problem
   disagree. A run that jumps over the band fails instead of saving a policy that is too good.
5. **Report**: the saved policy is loaded back with `load_policy`/`load_tokenizer` and measured
   on the same problems: greedy accuracy (overall, and for worked and answer-only completions),
   and with 8 samples per problem (at `--sample-temperature` alone, and with the sampling
   defaults of `treerpo generate`) the accuracy of the samples and the share of problems whose
   samples are mixed right and wrong. All goes into `MADE.md` next to the weights.

Deterministic under `--seed` for a given `--threads` (float sums on CPU depend on the thread
count). Everything is on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from treerpo.demo import is_worked
from treerpo.engines.base import GenerationRequest, SamplingSettings
from treerpo.engines.hf import HFEngine
from treerpo.engines.loading import load_policy, load_tokenizer
from treerpo.problems.arith import ARITH, ArithDataset
from treerpo.problems.arith_long import ARITH_LONG
from treerpo.problems.prompts import build_prompt
from treerpo.scoring.verify import is_correct
from treerpo.tiny_model import build_random_model, train_chat_tokenizer

DATASETS: dict[str, ArithDataset] = {dataset.name: dataset for dataset in (ARITH, ARITH_LONG)}
# Flag defaults that depend on `--dataset` (flag dest -> default); `arith`'s made arith-tiny.
DATASET_DEFAULTS: dict[str, dict[str, float | int]] = {
    "arith": {
        "direct_share": 0.5,
        "min_accuracy": 0.35,
        "max_accuracy": 0.60,
        "max_new_tokens": 80,
        "eval_every": 25,
        "sample_temperature": 0.6,
    },
    # Worked targets only (see the module doc). The longest solution is ~150 tokens: 256 new
    # tokens never cut one short. A greedy evaluation of 200 problems (~4 s) costs about 12
    # training steps of ~250-token examples, so it runs half as often as arith's. 0.7 is the
    # temperature `treerpo demo` and `bench learn` grow trees with.
    "arith-long": {
        "direct_share": 0.0,
        "min_accuracy": 0.25,
        "max_accuracy": 0.45,
        "max_new_tokens": 256,
        "eval_every": 50,
        "sample_temperature": 0.7,
    },
}
GREEDY = SamplingSettings(
    temperature=0.0, top_p=None, top_k=None, min_p=None, repetition_penalty=None
)
# `treerpo generate`'s defaults (DESIGN step 3): what tree growth samples with.
GENERATE_DEFAULTS = SamplingSettings()
SAMPLES_PER_PROBLEM = 8
TOKENIZER_CORPUS_ROWS = 4_000
# Qwen2's pre-tokenizer split (transformers' `tokenization_qwen2.PRETOKENIZE_REGEX`): words with
# their leading space, single digits, punctuation runs.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The text the tokenizer is trained on: what the chat template renders for one example.
CHAT_TEMPLATE_TEXT = (
    "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n{solution}<|im_end|>\n"
)


@dataclass(frozen=True)
class Example:
    """One supervised example: the rendered prompt's ids, then the solution's ids and EOS."""

    prompt_token_ids: list[int]
    completion_token_ids: list[int]


@dataclass(frozen=True)
class EvalProblem:
    """A held-out problem: its rendered prompt's ids, the reference answer and worked solution."""

    prompt_token_ids: list[int]
    reference: str
    solution: str


def build_arith_tokenizer(*, corpus: Sequence[str], vocab_size: int):
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, chat markers and template."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return train_chat_tokenizer(backend, corpus=corpus, vocab_size=vocab_size)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """Save as a Qwen2 tokenizer whose chat template sits in `tokenizer_config.json`.

    transformers 5 saves a generic tokenizer as `tokenizer_class: TokenizersBackend`, a name
    transformers 4 does not know, and the template in `chat_template.jinja`, which older releases
    do not read. `Qwen2Tokenizer` is the class transformers 5 loads for a `qwen2` model anyway,
    and every release reads a template from the config.
    """
    tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    tokenizer_config["chat_template"] = tokenizer.chat_template
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (directory / "chat_template.jinja").unlink(missing_ok=True)


def reload_tokenizer(tokenizer, *, texts: Sequence[str]):
    """The tokenizer as `load_tokenizer` will read it back, checked to encode `texts` the same.

    transformers 5 loads any tokenizer of a `qwen2` model as `Qwen2Tokenizer`, which rebuilds
    the normalizer and pre-tokenizer from its own code: the policy is trained on exactly the
    tokenizer users will load.
    """
    with tempfile.TemporaryDirectory() as directory:
        save_tokenizer(tokenizer, Path(directory))
        reloaded = load_tokenizer(directory)
    for text in texts:
        if tokenizer.encode(text, add_special_tokens=False) != reloaded.encode(
            text, add_special_tokens=False
        ):
            raise RuntimeError(f"the saved tokenizer encodes {text!r} differently")
    return reloaded


def build_policy(
    tokenizer,
    *,
    seed: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
):
    """A random float32 `Qwen2ForCausalLM` for `tokenizer`, with its EOS and pad ids set."""
    policy = build_random_model(
        tokenizer, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_heads,
        max_position_embeddings=512, seed=seed,
    )
    policy.generation_config.bos_token_id = None
    return policy.train()


def direct_solution(row: dict) -> str:
    """The answer alone, boxed: what a direct (not worked) example teaches."""
    return f"\\boxed{{{row['answer']}}}"


def encode_examples(
    tokenizer, rows: Sequence[dict], *, direct: Sequence[bool]
) -> list[Example]:
    """Supervised examples; where `direct[i]`, row i's target is its boxed answer alone."""
    eos_token_id = tokenizer.eos_token_id
    return [
        Example(
            prompt_token_ids=build_prompt(tokenizer, row["problem"]).token_ids,
            completion_token_ids=[
                *tokenizer.encode(
                    direct_solution(row) if is_direct else row["solution"],
                    add_special_tokens=False,
                ),
                eos_token_id,
            ],
        )
        for row, is_direct in zip(rows, direct, strict=True)
    ]


def collate(
    examples: Sequence[Example], *, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, target_ids)`; targets are -100 where no loss."""
    sequences = [example.prompt_token_ids + example.completion_token_ids for example in examples]
    max_length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(examples), max_length), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), max_length), dtype=torch.long)  # (B, T)
    target_ids = torch.full((len(examples), max_length), -100, dtype=torch.long)  # (B, T)
    for row, (example, sequence) in enumerate(zip(examples, sequences, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
        # The token at t is predicted by the logits at t - 1: completion targets shift left by one.
        first_target = len(example.prompt_token_ids) - 1
        target_ids[row, first_target : len(sequence) - 1] = torch.tensor(
            example.completion_token_ids
        )
    return input_ids, attention_mask, target_ids


def completion_loss(policy, *, input_ids, attention_mask, target_ids) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of the batch."""
    logits = policy(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), target_ids.flatten(), ignore_index=-100
    )


@dataclass(frozen=True)
class Verdict:
    """One completion: right or wrong, and whether it shows working lines or only an answer."""

    correct: bool
    worked: bool
    # Where a wrong completion first leaves the reference solution: (0-based line, lines of the
    # reference). None for a right one.
    first_wrong_line: tuple[int, int] | None


def first_wrong_line(completion: str, *, solution: str) -> tuple[int, int]:
    """(index of the first line that differs from `solution`, number of lines of `solution`)."""
    completion_lines = completion.strip().split("\n")
    solution_lines = solution.split("\n")
    for index, solution_line in enumerate(solution_lines):
        if index >= len(completion_lines) or completion_lines[index].strip() != solution_line:
            return index, len(solution_lines)
    return len(solution_lines), len(solution_lines)


def judge_completions(
    engine: HFEngine,
    tokenizer,
    problems: Sequence[EvalProblem],
    *,
    sampling: SamplingSettings,
    samples_per_problem: int,
    max_new_tokens: int,
) -> list[list[Verdict]]:
    """For each problem, a verdict on each of its sampled completions."""
    requests = [
        GenerationRequest(context_token_ids=problem.prompt_token_ids, max_new_tokens=max_new_tokens)
        for problem in problems
        for _ in range(samples_per_problem)
    ]
    results = engine.generate(requests, sampling=sampling, topk=1)
    verdicts = []
    for index, result in enumerate(results):
        problem = problems[index // samples_per_problem]
        completion = tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=True)
        correct = is_correct(completion, problem.reference)
        verdicts.append(
            Verdict(
                correct=correct,
                worked=is_worked(completion),
                first_wrong_line=(
                    None if correct else first_wrong_line(completion, solution=problem.solution)
                ),
            )
        )
    return [
        verdicts[start : start + samples_per_problem]
        for start in range(0, len(verdicts), samples_per_problem)
    ]


def sampled_summary(per_problem: Sequence[Sequence[Verdict]]) -> tuple[float, float]:
    """(accuracy over all samples, share of problems with both right and wrong samples)."""
    num_samples = sum(len(samples) for samples in per_problem)
    accuracy = sum(verdict.correct for samples in per_problem for verdict in samples) / num_samples
    mixed = sum(
        1
        for samples in per_problem
        if any(verdict.correct for verdict in samples)
        and not all(verdict.correct for verdict in samples)
    )
    return accuracy, mixed / len(per_problem)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    dataset_parser = argparse.ArgumentParser(add_help=False)
    dataset_parser.add_argument("--dataset", choices=sorted(DATASETS), default=ARITH.name)
    dataset_args, _ = dataset_parser.parse_known_args(argv)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[dataset_parser])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    # One thread trained fastest on the shared 2-core machine; the thread count also fixes the
    # order of float sums, so the run is only reproducible at the same count.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-steps", type=int, default=6_000)
    parser.add_argument("--eval-every", type=int, help="default: by --dataset")
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument(
        "--min-accuracy",
        type=float,
        help="stop at the first eval at or above (default: by --dataset)",
    )
    parser.add_argument(
        "--max-accuracy", type=float, help="fail when an eval jumps above (default: by --dataset)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: by --dataset")
    parser.add_argument(
        "--direct-share",
        type=float,
        help="share of train examples whose target is the boxed answer alone (no worked lines; "
        "default: by --dataset)",
    )
    parser.add_argument(
        "--sample-temperature",
        type=float,
        help="temperature of the plain sampled measurement (default: by --dataset)",
    )
    parser.set_defaults(**DATASET_DEFAULTS[dataset_args.dataset])
    return parser.parse_args(argv)


@dataclass(frozen=True)
class WarmStartRecord:
    """What MADE.md reports: how far training went and how the saved policy scores."""

    stopped_at_step: int
    train_seconds: float
    accuracy_history: list[tuple[int, float]]  # (step, greedy accuracy) at every evaluation
    num_parameters: int
    vocab_size: int
    greedy: list[Verdict]  # of the saved policy, loaded back as users load it
    sampled: dict[str, tuple[float, float]]  # label -> (sample accuracy, share of mixed problems)


class BandMissedError(RuntimeError):
    """Training jumped over the target accuracy band or never reached it."""


def train_until_band(
    args: argparse.Namespace,
    *,
    policy,
    tokenizer,
    examples: Sequence[Example],
    eval_problems: Sequence[EvalProblem],
    random_order: random.Random,
    started: float,
) -> list[tuple[int, float]]:
    """Train until the first evaluation inside the band; returns every evaluation's accuracy."""
    engine = HFEngine(policy, tokenizer, seed=args.seed, batch_size=len(eval_problems))
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / args.warmup_steps)
    )
    order: list[int] = []
    accuracy_history: list[tuple[int, float]] = []
    policy.train()
    for step in range(1, args.max_steps + 1):
        if len(order) < args.batch_size:
            epoch_order = list(range(len(examples)))
            random_order.shuffle(epoch_order)
            order.extend(epoch_order)
        batch_indices, order = order[: args.batch_size], order[args.batch_size :]
        input_ids, attention_mask, target_ids = collate(
            [examples[index] for index in batch_indices], pad_token_id=tokenizer.pad_token_id
        )
        loss = completion_loss(
            policy, input_ids=input_ids, attention_mask=attention_mask, target_ids=target_ids
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every:
            continue
        accuracy = greedy_accuracy(engine, tokenizer, eval_problems, args.max_new_tokens)
        accuracy_history.append((step, accuracy))
        print(
            f"step {step:5d}  loss {loss.item():.4f}  greedy {accuracy:.1%}  "
            f"{time.monotonic() - started:.0f}s",
            flush=True,
        )
        if accuracy > args.max_accuracy:
            raise BandMissedError(
                f"greedy accuracy jumped over the band to {accuracy:.1%} at step {step}; "
                "evaluate more often or lower the learning rate"
            )
        if accuracy >= args.min_accuracy:
            policy.eval()
            return accuracy_history
    raise BandMissedError(
        f"no evaluation reached {args.min_accuracy:.0%} in {args.max_steps} steps"
    )


def greedy_accuracy(
    engine: HFEngine, tokenizer, problems: Sequence[EvalProblem], max_new_tokens: int
) -> float:
    verdicts = greedy_verdicts(engine, tokenizer, problems, max_new_tokens)
    return sum(verdict.correct for verdict in verdicts) / len(verdicts)


def greedy_verdicts(
    engine: HFEngine, tokenizer, problems: Sequence[EvalProblem], max_new_tokens: int
) -> list[Verdict]:
    per_problem = judge_completions(
        engine,
        tokenizer,
        problems,
        sampling=GREEDY,
        samples_per_problem=1,
        max_new_tokens=max_new_tokens,
    )
    return [samples[0] for samples in per_problem]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    random_order = random.Random(args.seed)

    dataset = DATASETS[args.dataset]
    train_rows = dataset.load_split("train")
    test_rows = dataset.load_split("test")[: args.eval_problems]
    corpus_rows = random_order.sample(train_rows, TOKENIZER_CORPUS_ROWS)
    trained_tokenizer = build_arith_tokenizer(
        corpus=[
            CHAT_TEMPLATE_TEXT.format(problem=row["problem"], solution=row["solution"])
            for row in corpus_rows
        ],
        vocab_size=args.vocab_size,
    )
    tokenizer = reload_tokenizer(
        trained_tokenizer,
        texts=[
            CHAT_TEMPLATE_TEXT.format(problem=row["problem"], solution=row["solution"])
            for row in [*train_rows, *test_rows]
        ],
    )
    # Which examples are direct: a stream of its own, so the share does not move the batch order.
    direct_random = random.Random(f"direct:{args.seed}")
    direct = [direct_random.random() < args.direct_share for _ in train_rows]
    examples = encode_examples(tokenizer, train_rows, direct=direct)
    policy = build_policy(
        tokenizer,
        seed=args.seed,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
    )
    num_parameters = sum(parameter.numel() for parameter in policy.parameters())
    longest_completion = max(len(example.completion_token_ids) for example in examples)
    print(
        f"{len(tokenizer)} tokens, {num_parameters:,} parameters, {len(examples)} examples, "
        f"longest completion {longest_completion} tokens",
        flush=True,
    )
    try:
        accuracy_history = train_until_band(
            args,
            policy=policy,
            tokenizer=tokenizer,
            examples=examples,
            eval_problems=eval_problems_of(tokenizer, test_rows),
            random_order=random_order,
            started=started,
        )
    except BandMissedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    train_seconds = time.monotonic() - started

    args.out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(args.out, safe_serialization=True)
    save_tokenizer(trained_tokenizer, args.out)
    greedy, sampled = measure_saved_policy(args, test_rows=test_rows)
    record = WarmStartRecord(
        stopped_at_step=accuracy_history[-1][0],
        train_seconds=train_seconds,
        accuracy_history=accuracy_history,
        num_parameters=num_parameters,
        vocab_size=len(tokenizer),
        greedy=greedy,
        sampled=sampled,
    )
    command = sys.argv if argv is None else ["scripts/warm_start_arith.py", *argv]
    (args.out / "MADE.md").write_text(made_md(args, command=command, record=record))
    print(f"saved to {args.out} in {time.monotonic() - started:.0f}s")
    return 0


def eval_problems_of(tokenizer, rows: Sequence[dict]) -> list[EvalProblem]:
    return [
        EvalProblem(
            prompt_token_ids=build_prompt(tokenizer, row["problem"]).token_ids,
            reference=row["answer"],
            solution=row["solution"],
        )
        for row in rows
    ]


def measure_saved_policy(
    args: argparse.Namespace, *, test_rows: Sequence[dict]
) -> tuple[list[Verdict], dict[str, tuple[float, float]]]:
    """Greedy verdicts and sampled statistics of the policy in `args.out`, loaded as users do."""
    policy = load_policy(str(args.out), torch_dtype="float32", device="cpu")
    tokenizer = load_tokenizer(str(args.out))
    eval_problems = eval_problems_of(tokenizer, test_rows)
    engine = HFEngine(policy, tokenizer, seed=args.seed, batch_size=len(eval_problems))
    greedy = greedy_verdicts(engine, tokenizer, eval_problems, args.max_new_tokens)
    print(
        f"saved policy: greedy {sum(verdict.correct for verdict in greedy) / len(greedy):.1%}, "
        f"worked out {sum(verdict.worked for verdict in greedy) / len(greedy):.1%}"
    )
    plain = SamplingSettings(
        temperature=args.sample_temperature,
        top_p=None,
        top_k=None,
        min_p=None,
        repetition_penalty=None,
    )
    sampled = {}
    for label, sampling in (("plain", plain), ("generate-defaults", GENERATE_DEFAULTS)):
        per_problem = judge_completions(
            engine,
            tokenizer,
            eval_problems,
            sampling=sampling,
            samples_per_problem=SAMPLES_PER_PROBLEM,
            max_new_tokens=args.max_new_tokens,
        )
        sampled[label] = sampled_summary(per_problem)
        print(
            f"T={sampling.temperature:g} {label}: accuracy {sampled[label][0]:.1%}, "
            f"mixed {sampled[label][1]:.1%}"
        )
    return greedy, sampled


def made_md(args: argparse.Namespace, *, command: Sequence[str], record: WarmStartRecord) -> str:
    dataset = DATASETS[args.dataset]
    history = ", ".join(f"{step}: {accuracy:.1%}" for step, accuracy in record.accuracy_history)
    examples_seen = record.stopped_at_step * args.batch_size
    greedy_accuracy_ = sum(verdict.correct for verdict in record.greedy) / len(record.greedy)
    plain_accuracy, plain_mixed = record.sampled["plain"]
    defaults_accuracy, defaults_mixed = record.sampled["generate-defaults"]
    if args.direct_share:
        targets = (
            f"{1 - args.direct_share:.0%} the worked solution (one line per operation, then "
            f"`\\boxed{{N}}`), {args.direct_share:.0%} the answer alone (`\\boxed{{N}}`), "
            "drawn per example"
        )
    else:
        targets = "the worked solution (one line per operation, then `\\boxed{N}`), always"
    return f"""# {args.out.name}: how it was made

A tiny Qwen2 policy for the built-in `{dataset.name}` dataset, warm-started by supervised
training and stopped half-trained so that TreeRPO has room to improve it. Made from the
repository root by `scripts/warm_start_arith.py` (its docstring describes the method):

    python {shlex.join(command)}

on a CPU machine with {os.cpu_count()} cores (shared with other jobs), {args.threads} torch \
thread(s), torch {torch.__version__}, transformers {transformers.__version__}.
The run is deterministic for a given thread count and CPU kind; float sums in another setting
may move the stop by an evaluation.

| | |
|---|---|
| seed | {args.seed} (model init, tokenizer corpus, batch order) |
| model | Qwen2ForCausalLM: hidden {args.hidden_size}, {args.num_layers} layers, \
{args.num_heads} heads, MLP {args.intermediate_size}, tied embeddings, float32, \
{record.num_parameters:,} parameters |
| tokenizer | byte-level BPE trained on {TOKENIZER_CORPUS_ROWS:,} rendered train examples, \
Qwen2 pre-tokenizer (one token per digit), {record.vocab_size} tokens, Qwen chat template, \
EOS `<|im_end|>` |
| data | built-in `{dataset.name}` train split: {dataset.train_size:,} problems, \
{dataset.min_ops}-{dataset.max_ops} operations, operands up to {dataset.max_operand}, \
multipliers up to {dataset.max_multiplier}, dataset seed {dataset.seed} |
| targets | {targets} |
| loss | next-token cross-entropy on the target and EOS tokens (the prompt is context) |
| optimizer | AdamW lr {args.learning_rate:g}, {args.warmup_steps} warmup steps then constant, \
weight decay {args.weight_decay:g}, gradient norm clipped at 1, batch {args.batch_size} |
| steps | {record.stopped_at_step} ({examples_seen:,} examples, \
{examples_seen / dataset.train_size:.2f} epochs) |
| wall time | {record.train_seconds / 60:.1f} min from start to the stop |
| stop rule | first evaluation (every {args.eval_every} steps) with greedy accuracy in \
[{args.min_accuracy:.0%}, {args.max_accuracy:.0%}] |

Accuracy of the saved policy (loaded back with `load_policy`/`load_tokenizer`) on the first
{args.eval_problems} problems of the `{dataset.name}` test split, which is disjoint from train;
`is_correct` on each completion, at most {args.max_new_tokens} new tokens:

| decoding | accuracy | problems with right and wrong samples |
|---|---|---|
| greedy (temperature 0, no other transform) | **{greedy_accuracy_:.1%}** | |
| temperature {args.sample_temperature:g} alone, {SAMPLES_PER_PROBLEM} samples per problem | \
{plain_accuracy:.1%} | {plain_mixed:.1%} |
| `treerpo generate` defaults (temperature 0.6, top-p 0.85, top-k 25, repetition penalty 1.1), \
{SAMPLES_PER_PROBLEM} samples per problem | {defaults_accuracy:.1%} | {defaults_mixed:.1%} |
{kind_section(record.greedy) if args.direct_share else ""}\
{first_wrong_line_section(record.greedy)}
Greedy accuracy at each evaluation during training (step: accuracy): {history}.
"""


def kind_section(greedy: Sequence[Verdict]) -> str:
    """The greedy completions by kind: worked out or answer only."""
    kind_rows = []
    for label, worked in (("worked out (one line per operation)", True), ("answer only", False)):
        kind = [verdict for verdict in greedy if verdict.worked == worked]
        kind_accuracy = sum(verdict.correct for verdict in kind) / len(kind) if kind else 0.0
        kind_rows.append(f"| {label} | {len(kind)} | {kind_accuracy:.1%} |")
    kind_table = "\n".join(kind_rows)
    return f"""
The greedy completions by kind. The policy answers some problems directly and works others
out, and working out is what gets them right: the choice, made at the first token, is what
TreeRPO's training mostly changes (`treerpo demo` prints the share before and after).

| greedy completion | problems | accuracy |
|---|---|---|
{kind_table}
"""


def first_wrong_line_section(greedy: Sequence[Verdict]) -> str:
    """Where the wrong greedy completions first leave the reference solution, by thirds."""
    positions = [verdict.first_wrong_line for verdict in greedy if verdict.first_wrong_line]
    thirds = ("first third", "middle third", "last third")
    counts = dict.fromkeys([*thirds, "boxed line or after"], 0)
    for line, num_lines in positions:
        num_operation_lines = num_lines - 1  # the last line is `\boxed{N}`
        if line >= num_operation_lines:
            counts["boxed line or after"] += 1
        else:
            counts[thirds[3 * line // num_operation_lines]] += 1
    rows = "\n".join(
        f"| {label} | {count} | {count / max(1, len(positions)):.0%} |"
        for label, count in counts.items()
    )
    return f"""
Where the {len(positions)} wrong greedy completions first differ from the reference solution,
by the position of that line among the operation lines:

| first wrong line | problems | share |
|---|---|---|
{rows}
"""


if __name__ == "__main__":
    sys.exit(main())

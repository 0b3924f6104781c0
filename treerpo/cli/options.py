"""Option declarations shared by generate, train and eval (one definition, several commands).

Names follow TRL / the original TreeRPO release where they exist (`--model_id`, `--torch_dtype`,
`--max_new_tokens`, ...); every flag also works in dash-case.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from treerpo.cli.common import validated
from treerpo.config import DataConfig, EngineConfig
from treerpo.growth.settings import DEFAULT_SPLIT_DELIMITERS, SamplingConfig, TreeSettings
from treerpo.problems.prompts import PromptSettings

# Data
Model = Annotated[str, typer.Option("--model", "--model-id",
                                    help="Local model folder or Hugging Face hub id.")]
Dataset = Annotated[str, typer.Option(
    "--dataset", help="Hub dataset id (e.g. AI-MO/NuminaMath-CoT, openai/gsm8k), a local "
    ".jsonl/.json/.parquet/.csv file, or `arith` (built-in).")]
Split = Annotated[str, typer.Option("--split", help="Dataset split.")]
DatasetConfigName = Annotated[str | None, typer.Option(
    "--dataset-config", help="Hub dataset configuration (openai/gsm8k defaults to `main`).")]
Limit = Annotated[int | None, typer.Option("--limit", help="At most N rows (after --offset).")]
Offset = Annotated[int, typer.Option("--offset", help="Skip the first N rows.")]
ProblemField = Annotated[str | None, typer.Option(
    "--problem-field", help="Column holding the problem (default: problem|question|prompt).")]
AnswerField = Annotated[str | None, typer.Option(
    "--answer-field",
    help="Column holding the reference (default: final_answer|answer|solution's last \\boxed{}).")]
SystemPrompt = Annotated[str | None, typer.Option(
    "--system-prompt", help="Optional system message before the problem.")]
PromptTemplate = Annotated[str | None, typer.Option(
    "--prompt-template", help="Plain-text prompt with {problem}, for tokenizers without a chat "
    "template (replaces the chat template).")]

# Engine
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="auto (vLLM when importable with a GPU, else hf), hf or vllm.")]
TorchDtype = Annotated[str, typer.Option(
    "--torch-dtype", help="auto, bfloat16, float16 or float32 (auto: bf16 on GPU, fp32 on CPU).")]
AttnImplementation = Annotated[str, typer.Option(
    "--attn-implementation",
    help="Attention kernel: auto, tree, flex_attention, sdpa or eager. auto: for the packed "
    "training forward FlexAttention with a block-sparse tree mask on CUDA and treerpo's tree "
    "attention on CPU (both compute only what each token sees); sdpa for generation. vLLM "
    "uses its own kernels.")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code from the model repository (off by default).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (sampling and alternatives).")]
GenerationBatchSize = Annotated[int, typer.Option(
    "--generation-batch-size", help="HF engine: requests decoded together.")]
GpuMemoryUtilization = Annotated[float, typer.Option(
    "--gpu-memory-utilization", help="vLLM: share of GPU memory it may use.")]
MaxModelLen = Annotated[int | None, typer.Option("--max-model-len",
                                                 help="vLLM: maximum context length.")]
EnablePrefixCaching = Annotated[bool, typer.Option(
    "--enable-prefix-caching/--no-enable-prefix-caching",
    help="vLLM: reuse the KV cache of shared prefixes (tree paths share theirs).")]
LogprobTemperature = Annotated[str, typer.Option(
    "--logprob-temperature", help="Behaviour and trained logprobs: raw (log_softmax(logits)) or "
    "sampling (log_softmax(logits / --temperature), as TRL). Stored with every tree; sampling "
    "needs --branching resample (or --rollout flat) and --engine hf.")]

# Tree growth
Rollout = Annotated[str, typer.Option(
    "--rollout", help="tree (TreeRPO) or flat (plain GRPO: --num-generations samples).")]
NumGenerations = Annotated[int, typer.Option(
    "--num-generations", help="Flat rollout: samples per problem.")]
MaxDepth = Annotated[int, typer.Option("--max-depth", help="Entropy splits only above this depth.")]
MinSegmentLen = Annotated[int, typer.Option(
    "--min-segment-len", help="Tokens a segment needs before it may split.")]
EntropyThreshold = Annotated[float, typer.Option(
    "--entropy-threshold", help="Split where the top-k entropy (nats) exceeds this.")]
EntropyTopk = Annotated[int, typer.Option(
    "--entropy-topk", help="Candidates for split entropy and alternative first tokens.")]
CoverageMinChars = Annotated[int, typer.Option(
    "--coverage-min-chars", help="Characters a coverage cut leaves after it.")]
CoverageChildrenMax = Annotated[int, typer.Option(
    "--coverage-children-max", help="Children of a coverage split.")]
RootChildren = Annotated[int | None, typer.Option(
    "--root-children", help="Children of the root (default: 4 with resample, 2 with forced).")]
Branching = Annotated[str, typer.Option(
    "--branching", help="How further children of the root and of entropy splits start: "
    "resample (a free sample from the same prefix) or forced (an alternative first token from "
    "the top-k, the original release's rule).")]
SplitDelimiters = Annotated[str, typer.Option(
    "--split-delimiters", help="Characters after which a segment may split; backslash escapes "
    "allowed (default '\\n!.?;:').")]

# Sampling
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling, 0 < p <= 1.")]
TopK = Annotated[int, typer.Option("--top-k", help="Top-k sampling (0 disables).")]
MinP = Annotated[float, typer.Option("--min-p", help="Min-p sampling (0 disables).")]
RepetitionPenalty = Annotated[float, typer.Option(
    "--repetition-penalty", help="Repetition penalty (1 disables).")]
MaxNewTokens = Annotated[int, typer.Option(
    "--max-new-tokens", help="Completion tokens on any root-to-leaf path.")]

DEFAULT_DELIMITERS = "".join(DEFAULT_SPLIT_DELIMITERS).encode("unicode_escape").decode()


def parse_delimiters(text: str) -> list[str]:
    """`'\\n!.?;:'` → ['\\n', '!', '.', '?', ';', ':'] (each character one delimiter)."""
    decoded = codecs.decode(text, "unicode_escape")
    return list(dict.fromkeys(decoded))


def tree_settings(**values: Any) -> TreeSettings:
    values["split_delimiters"] = parse_delimiters(values["split_delimiters"])
    return validated(TreeSettings, **values)


def sampling_config(*, top_k: int, min_p: float, **values: Any) -> SamplingConfig:
    return validated(SamplingConfig, top_k=top_k or None, min_p=min_p or None, **values)


def data_config(**values: Any) -> DataConfig:
    return validated(DataConfig, **values)


def engine_config(**values: Any) -> EngineConfig:
    return validated(EngineConfig, **values)


def prompt_settings(**values: Any) -> PromptSettings:
    return validated(PromptSettings, **values)


DATA_FLAGS = ("dataset", "split", "dataset_config", "limit", "offset", "problem_field",
              "answer_field")
ENGINE_FLAGS = ("model", "engine", "torch_dtype", "attn_implementation", "trust_remote_code",
                "seed", "generation_batch_size", "gpu_memory_utilization", "max_model_len",
                "enable_prefix_caching", "logprob_temperature")
PROMPT_FLAGS = ("system_prompt", "prompt_template")
TREE_FLAGS = ("rollout", "branching", "num_generations", "max_depth", "min_segment_len",
              "entropy_threshold", "entropy_topk", "coverage_min_chars", "coverage_children_max",
              "root_children", "split_delimiters", "max_new_tokens")
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def growth_config_parts(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The validated data (None without --dataset), engine, prompt, tree and sampling parts of
    a command that grows trees (generate, train), from its flag values by name."""

    def pick(names: tuple[str, ...]) -> dict[str, Any]:
        return {name: flags[name] for name in names}

    return {
        "data": None if flags.get("dataset") is None else data_config(**pick(DATA_FLAGS)),
        "engine": engine_config(**pick(ENGINE_FLAGS)),
        "prompt": prompt_settings(**pick(PROMPT_FLAGS)),
        "tree": tree_settings(**pick(TREE_FLAGS)),
        "sampling": sampling_config(**pick(SAMPLING_FLAGS)),
    }

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
from treerpo.errors import BadInputError
from treerpo.growth.settings import DEFAULT_SPLIT_DELIMITERS, SamplingConfig, TreeSettings
from treerpo.problems.prompts import PromptSettings

# Help panels (`--help` groups the options of train, generate and eval under these titles).
DATA = "Data"
TREE = "Tree growth"
SAMPLING = "Sampling"
OPTIMISATION = "Optimisation"
ENGINE = "Engine"
LOGGING = "Logging, checkpoints and store"
REWARDS = "Rewards"
TRL = "TRL spellings"

# Data
Model = Annotated[str, typer.Option("--model",
                                    help="Local model folder or Hugging Face hub id "
                                    "(also --model-id, --model_name_or_path).",
                                    rich_help_panel=DATA)]
Dataset = Annotated[str, typer.Option(
    "--dataset", help="Hub dataset id (e.g. AI-MO/NuminaMath-CoT, "
    "openai/gsm8k), a local .jsonl/.json/.parquet/.csv file, or `arith` (built-in).",
    rich_help_panel=DATA)]
Split = Annotated[str, typer.Option("--split", help="Dataset split.",
    rich_help_panel=DATA)]
DatasetConfigName = Annotated[str | None, typer.Option(
    "--dataset-config", help="Hub dataset configuration (openai/gsm8k defaults to `main`).",
    rich_help_panel=DATA)]
Limit = Annotated[int | None, typer.Option("--limit", help="At most N rows (after --offset).",
    rich_help_panel=DATA)]
Offset = Annotated[int, typer.Option("--offset", help="Skip the first N rows.",
    rich_help_panel=DATA)]
ProblemField = Annotated[str | None, typer.Option(
    "--problem-field", help="Column holding the problem (default: problem|question|prompt).",
    rich_help_panel=DATA)]
AnswerField = Annotated[str | None, typer.Option(
    "--answer-field",
    help="Column holding the reference (default: final_answer|answer|solution's last \\boxed{}).",
    rich_help_panel=DATA)]
SystemPrompt = Annotated[str | None, typer.Option(
    "--system-prompt", help="Optional system message before the problem.",
    rich_help_panel=DATA)]
PromptTemplate = Annotated[str | None, typer.Option(
    "--prompt-template", help="Plain-text prompt with {problem}, for tokenizers without a chat "
    "template (replaces the chat template).",
    rich_help_panel=DATA)]

# Engine
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="auto (vLLM when importable with a GPU, else hf), hf or vllm.",
    rich_help_panel=ENGINE)]
TorchDtype = Annotated[str, typer.Option(
    "--torch-dtype", help="auto, bfloat16, float16 or float32 (auto: bf16 on GPU, fp32 on CPU).",
    rich_help_panel=ENGINE)]
AttnImplementation = Annotated[str, typer.Option(
    "--attn-implementation",
    help="Attention kernel: auto, tree, flex_attention, sdpa or eager. auto: for the packed "
    "training forward FlexAttention with a block-sparse tree mask on CUDA and treerpo's tree "
    "attention on CPU (both compute only what each token sees); sdpa for generation. vLLM "
    "uses its own kernels.", rich_help_panel=ENGINE)]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code from the model repository (off by default).",
    rich_help_panel=ENGINE)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (sampling and alternatives).",
    rich_help_panel=ENGINE)]
GenerationBatchSize = Annotated[int, typer.Option(
    "--generation-batch-size", help="HF engine: requests decoded together.",
    rich_help_panel=ENGINE)]
GpuMemoryUtilization = Annotated[float, typer.Option(
    "--gpu-memory-utilization", help="vLLM: share of the GPU's total memory it reserves.",
    rich_help_panel=ENGINE)]
TrainGpuMemoryUtilization = Annotated[float, typer.Option(
    "--gpu-memory-utilization",
    help="vLLM: share of the GPU's total memory it reserves (TRL's colocate default: the "
         "policy and its optimizer share the GPU).",
    rich_help_panel=ENGINE)]
MaxModelLen = Annotated[int | None, typer.Option("--max-model-len",
                                                 help="vLLM: maximum context length.",
    rich_help_panel=ENGINE)]
EnablePrefixCaching = Annotated[bool, typer.Option(
    "--enable-prefix-caching",
    help="vLLM: reuse the KV cache of shared prefixes (tree paths share theirs). On unless "
    "--enable-prefix-caching false (or --no-enable-prefix-caching).", show_default=False,
    rich_help_panel=ENGINE)]
# The negative spelling, hidden so that the engine panel of --help stays two columns wide.
NoPrefixCaching = Annotated[bool, typer.Option("--no-enable-prefix-caching", hidden=True)]
VllmTensorParallelSize = Annotated[int, typer.Option(
    "--vllm-tensor-parallel-size",
    help="vLLM: GPUs each engine shards the model over (tensor parallelism).",
    rich_help_panel=ENGINE)]
VllmMaxNumSeqs = Annotated[int | None, typer.Option(
    "--vllm-max-num-seqs",
    help="vLLM: most sequences decoded at once (default: vLLM's choice for the GPU).",
    rich_help_panel=ENGINE)]
VllmEnableSleepMode = Annotated[bool, typer.Option(
    "--vllm-enable-sleep-mode",
    help="vLLM in chained training: free its weights and KV cache during each update, then "
         "wake and push the new weights.", rich_help_panel=ENGINE)]
LogprobTemperature = Annotated[str, typer.Option(
    "--logprob-temperature", help="Behaviour and trained logprobs: raw (log_softmax(logits)) or "
    "sampling (log_softmax(logits / --temperature), as TRL). Stored with every tree; sampling "
    "needs --branching resample (or --rollout flat) and --engine hf.",
    rich_help_panel=ENGINE)]

# Tree growth
Rollout = Annotated[str, typer.Option(
    "--rollout", help="tree (TreeRPO) or flat (plain GRPO: --num-generations samples).",
    rich_help_panel=TREE)]
NumGenerations = Annotated[int, typer.Option(
    "--num-generations", help="Flat rollout: samples per problem.",
    rich_help_panel=TREE)]
MaxDepth = Annotated[int, typer.Option("--max-depth", help="Entropy splits only above this depth.",
    rich_help_panel=TREE)]
MinSegmentLen = Annotated[int, typer.Option(
    "--min-segment-len", help="Tokens a segment needs before it may split.",
    rich_help_panel=TREE)]
EntropyThreshold = Annotated[float, typer.Option(
    "--entropy-threshold", help="Split where the top-k entropy (nats) exceeds this.",
    rich_help_panel=TREE)]
EntropyTopk = Annotated[int, typer.Option(
    "--entropy-topk", help="Candidates for split entropy and alternative first tokens.",
    rich_help_panel=TREE)]
CoverageMinChars = Annotated[int, typer.Option(
    "--coverage-min-chars", help="Characters a coverage cut leaves after it.",
    rich_help_panel=TREE)]
CoverageChildrenMax = Annotated[int, typer.Option(
    "--coverage-children-max", help="Children of a coverage split.",
    rich_help_panel=TREE)]
RootChildren = Annotated[int | None, typer.Option(
    "--root-children", help="Children of the root (default: 4 with resample, 2 with forced).",
    rich_help_panel=TREE)]
Branching = Annotated[str, typer.Option(
    "--branching", help="How further children of the root and of entropy splits start: "
    "resample (a free sample from the same prefix) or forced (an alternative first token from "
    "the top-k, the original release's rule).",
    rich_help_panel=TREE)]
# DESIGN's delimiters as --split-delimiters spells them ('\\n!.?;:').
DEFAULT_DELIMITERS = "".join(DEFAULT_SPLIT_DELIMITERS).encode("unicode_escape").decode()
SplitDelimiters = Annotated[str | None, typer.Option(
    "--split-delimiters", help="Characters after which a segment may split, each one "
    f"delimiter; backslash escapes allowed (default '{DEFAULT_DELIMITERS}'). A delimiter of "
    "several characters: --split-delimiter.",
    rich_help_panel=TREE)]
SplitDelimiter = Annotated[list[str] | None, typer.Option(
    "--split-delimiter", help="One delimiter of any length after which a segment may split "
    "(e.g. '= ' or '\\n\\n'); repeat it for more. Instead of --split-delimiters.",
    metavar="TEXT", rich_help_panel=TREE)]

# Sampling
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0).",
    rich_help_panel=SAMPLING)]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling, 0 < p <= 1.",
    rich_help_panel=SAMPLING)]
TopK = Annotated[int, typer.Option("--top-k", help="Top-k sampling (0 disables).",
    rich_help_panel=SAMPLING)]
MinP = Annotated[float, typer.Option("--min-p", help="Min-p sampling (0 disables).",
    rich_help_panel=SAMPLING)]
RepetitionPenalty = Annotated[float, typer.Option(
    "--repetition-penalty", help="Repetition penalty (1 disables).",
    rich_help_panel=SAMPLING)]
MaxNewTokens = Annotated[int, typer.Option(
    "--max-new-tokens",
    help="Completion tokens on any root-to-leaf path.",
    rich_help_panel=SAMPLING)]

# TRL spellings that are not one of the names above (README: "TRL's GRPOConfig").
Bf16 = Annotated[bool, typer.Option(
    "--bf16", help="TRL spelling of --torch-dtype bfloat16.",
    rich_help_panel=TRL)]
Fp16 = Annotated[bool, typer.Option(
    "--fp16", help="TRL spelling of --torch-dtype float16.",
    rich_help_panel=TRL)]
UseVllm = Annotated[bool, typer.Option(
    "--use-vllm", help="TRL spelling of --engine vllm.",
    rich_help_panel=TRL)]

# Rewards (score, train)
RewardFn = Annotated[list[str] | None, typer.Option(
    "--reward-fn", help="MODULE:FUNCTION called with completion=, reference=, problem= and "
    "returning a float in [0, 1] (default: the verified \\boxed{} answer check); repeatable: "
    "the reward is the weighted sum. The working folder is importable.",
    metavar="MODULE:FUNCTION", rich_help_panel=REWARDS)]
RewardTimeout = Annotated[float, typer.Option(
    "--reward-timeout", min=0.001, max=1e6, help="Seconds a --reward-fn plug-in may take on "
    "one leaf before the run stops (plug-ins run in watched worker processes: one that exits, "
    "crashes or hangs fails the run with its name, the store unchanged).",
    rich_help_panel=REWARDS)]
RewardWeights = Annotated[list[str] | None, typer.Option(
    "--reward-weights", help="One weight per --reward-fn, comma-separated or repeated "
    "(default: 1 each).", metavar="W[,W...]", rich_help_panel=REWARDS)]


def parse_reward_weights(values: list[str] | None) -> list[float] | None:
    """`--reward-weights 0.5,1 --reward-weights 2` → [0.5, 1.0, 2.0] (None when not given)."""
    if not values:
        return None
    parts = [part for value in values for part in value.replace(",", " ").split()]
    try:
        return [float(part) for part in parts]
    except ValueError as error:
        raise BadInputError(f"--reward-weights: not a number in {' '.join(parts)!r}") from error


def decode_escapes(text: str, *, flag: str) -> str:
    """`text` with its backslash escapes (`\\n`, `\\t`, `\\u3002`, ...) decoded; every other
    character, ASCII or not, is kept as it is."""
    try:
        # Characters beyond Latin-1 become \\uXXXX first, so they come back unchanged.
        return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{flag}: bad backslash escape in {text!r} ({error.reason})") from error


def parse_delimiters(text: str) -> list[str]:
    """`'\\n!.?;:'` → ['\\n', '!', '.', '?', ';', ':'] (each character one delimiter)."""
    return list(dict.fromkeys(decode_escapes(text, flag="--split-delimiters")))


def split_delimiters(characters: str | None, delimiters: list[str] | None) -> list[str]:
    """The delimiters of `--split-delimiters CHARS` (each character one) or of repeated
    `--split-delimiter TEXT` (each value one, of any length); neither: DESIGN's default."""
    if characters is not None and delimiters:
        raise BadInputError("--split-delimiters and --split-delimiter contradict each other: "
                            "give one")
    if delimiters:
        return list(dict.fromkeys(decode_escapes(delimiter, flag="--split-delimiter")
                                  for delimiter in delimiters))
    if characters is None:
        return list(DEFAULT_SPLIT_DELIMITERS)
    return parse_delimiters(characters)


def tree_settings(**values: Any) -> TreeSettings:
    values["split_delimiters"] = split_delimiters(values["split_delimiters"],
                                                  values.pop("split_delimiter"))
    return validated(TreeSettings, **values)


def sampling_config(*, top_k: int, min_p: float, **values: Any) -> SamplingConfig:
    return validated(SamplingConfig, top_k=top_k or None, min_p=min_p or None, **values)


def data_config(**values: Any) -> DataConfig:
    return validated(DataConfig, **values)


def engine_config(**values: Any) -> EngineConfig:
    return validated(EngineConfig, **values)


def trl_torch_dtype(torch_dtype: str, *, bf16: bool, fp16: bool) -> str:
    """`--torch-dtype` after TRL's `--bf16` / `--fp16` (which must not contradict it)."""
    if bf16 and fp16:
        raise BadInputError("--bf16 and --fp16 contradict each other: give one")
    wanted = "bfloat16" if bf16 else "float16" if fp16 else None
    if wanted is None:
        return torch_dtype
    if torch_dtype not in ("auto", wanted):
        flag = "--bf16" if bf16 else "--fp16"
        raise BadInputError(f"{flag} contradicts --torch-dtype {torch_dtype}: give one of them")
    return wanted


def trl_engine(engine: str, *, use_vllm: bool) -> str:
    """`--engine` after TRL's `--use-vllm` (which must not contradict it)."""
    if not use_vllm:
        return engine
    if engine not in ("auto", "vllm"):
        raise BadInputError(f"--use-vllm contradicts --engine {engine}: give one of them")
    return "vllm"


def prompt_settings(**values: Any) -> PromptSettings:
    return validated(PromptSettings, **values)


DATA_FLAGS = ("dataset", "split", "dataset_config", "limit", "offset", "problem_field",
              "answer_field")
ENGINE_FLAGS = ("model", "engine", "torch_dtype", "attn_implementation", "trust_remote_code",
                "seed", "generation_batch_size", "gpu_memory_utilization", "max_model_len",
                "enable_prefix_caching", "logprob_temperature", "vllm_tensor_parallel_size",
                "vllm_max_num_seqs")
# Engine flags only `train` has (the engine's weights change only there).
TRAIN_ENGINE_FLAGS = ("vllm_enable_sleep_mode",)
PROMPT_FLAGS = ("system_prompt", "prompt_template")
TREE_FLAGS = ("rollout", "branching", "num_generations", "max_depth", "min_segment_len",
              "entropy_threshold", "entropy_topk", "coverage_min_chars", "coverage_children_max",
              "root_children", "split_delimiters", "split_delimiter", "max_new_tokens")
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def growth_config_parts(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The validated data (None without --dataset), engine, prompt, tree and sampling parts of
    a command that grows trees (generate, train), from its flag values by name."""

    def pick(names: tuple[str, ...]) -> dict[str, Any]:
        return {name: flags[name] for name in names}

    engine = pick(ENGINE_FLAGS)
    engine["torch_dtype"] = trl_torch_dtype(engine["torch_dtype"], bf16=flags.get("bf16", False),
                                            fp16=flags.get("fp16", False))
    engine["engine"] = trl_engine(engine["engine"], use_vllm=flags.get("use_vllm", False))
    engine["enable_prefix_caching"] = (engine["enable_prefix_caching"]
                                       and not flags.get("no_enable_prefix_caching", False))
    engine.update({name: flags[name] for name in TRAIN_ENGINE_FLAGS if name in flags})
    return {
        "data": None if flags.get("dataset") is None else data_config(**pick(DATA_FLAGS)),
        "engine": engine_config(**engine),
        "prompt": prompt_settings(**pick(PROMPT_FLAGS)),
        "tree": tree_settings(**pick(TREE_FLAGS)),
        "sampling": sampling_config(**pick(SAMPLING_FLAGS)),
    }

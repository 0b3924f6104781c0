"""Typed configuration of the stages, saved whole with every run (and every checkpoint).

Each stage's configuration is a pydantic model composed of small parts that several stages share:
where problems come from (`DataConfig`), how the policy is loaded and sampled (`EngineConfig`),
how prompts are rendered (`PromptSettings`), how trees grow (`TreeSettings`, `SamplingConfig`).
Invalid values raise `ValidationError`; the CLI turns it into a one-line exit-2 error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from treerpo.growth.settings import SamplingConfig, TreeSettings
from treerpo.limits import INT64_MAX, SEED_MAX
from treerpo.problems.prompts import PromptSettings

EngineName = Literal["auto", "hf", "vllm"]
TorchDtypeName = Literal["auto", "bfloat16", "float16", "float32"]
# Attention kernel (engines.loading.resolve_attn_implementation): "auto" = FlexAttention for
# training on CUDA, treerpo's tree attention for training on CPU, sdpa for generation.
AttnImplementationName = Literal["auto", "tree", "flex_attention", "sdpa", "eager"]
# Which logits the behaviour logprobs (stored with every tree) and the trainer's new logprobs are
# the log-softmax of (DESIGN step 10). "raw": the logits as the model gives them
# (logprob_temperature 1.0, vLLM's default logprobs). "sampling": the logits divided by the
# sampling temperature (logprob_temperature = --temperature), as TRL does for both.
LogprobTemperatureMode = Literal["raw", "sampling"]


def slug(text: str) -> str:
    """`text` as a lower-case name part: runs of anything but ASCII letters and digits become
    one `-` (run names, folder names)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Strict):
    """Which problems: a hub dataset id, a local .jsonl/.json/.parquet/.csv file, or `arith`."""

    dataset: str
    split: str = "train"
    dataset_config: str | None = None
    limit: int | None = Field(default=None, ge=1, le=INT64_MAX)
    offset: int = Field(default=0, ge=0, le=INT64_MAX)
    problem_field: str | None = None
    answer_field: str | None = None


class EngineConfig(_Strict):
    """How the policy is loaded and run for generation."""

    model: str
    engine: EngineName = "auto"
    torch_dtype: TorchDtypeName = "auto"
    attn_implementation: AttnImplementationName = "auto"
    trust_remote_code: bool = False
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    # raw or sampling (see LogprobTemperatureMode); the value an engine is built with comes from
    # `treerpo.engines.resolve_logprob_temperature`. "raw": sampling did not learn better in
    # `bench learn`'s pilots (README, "Learning"), and vLLM reports raw logprobs only.
    logprob_temperature: LogprobTemperatureMode = "raw"
    # HF engine: requests decoded together in one batch.
    generation_batch_size: int = Field(default=64, ge=1, le=INT64_MAX)
    # vLLM engine only. gpu_memory_utilization is a share of the GPU's total memory; `train`
    # defaults it to 0.3 (TRL's colocate default), as the policy and AdamW share the GPU there.
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16, le=INT64_MAX)
    enable_prefix_caching: bool = True
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_max_num_seqs: int | None = Field(default=None, ge=1)
    # Chained training: free vLLM's weights and KV cache while the policy updates.
    vllm_enable_sleep_mode: bool = False


def _check_growth_logprobs(*, tree: TreeSettings, engine: EngineConfig) -> None:
    """Settings that cannot grow trees together, refused before any model loads."""
    if (tree.rollout == "tree" and tree.branching == "forced"
            and engine.logprob_temperature == "sampling"):
        # A forced alternative's behaviour logprob is its raw top-k logprob (growth.grower).
        raise ValueError("--branching forced needs --logprob-temperature raw: a forced "
                         "alternative token's logprob is the raw one")
    if engine.engine == "vllm" and engine.logprob_temperature == "sampling":
        raise ValueError("--engine vllm reports raw logprobs only: use --logprob-temperature raw "
                         "or --engine hf")


# The engine settings that shape the trees (the rest only change speed or memory).
_TREE_SHAPING_ENGINE_FIELDS = ("model", "seed", "torch_dtype", "logprob_temperature")


class GenerateConfig(_Strict):
    """`treerpo generate`: grow (or, with rollout=flat, sample) and store trees."""

    run_name: str | None = None
    data: DataConfig
    engine: EngineConfig
    prompt: PromptSettings = PromptSettings()
    tree: TreeSettings = TreeSettings()
    sampling: SamplingConfig = SamplingConfig()
    # Problems whose trees grow together: each wave batches their requests.
    batch_size: int = Field(default=16, ge=1, le=INT64_MAX)
    # Workers sharing the run (`treerpo.growth.runner`): this one's name on its trees and claims
    # (None: host:pid), and how long a claimed batch stays its own without a renewal.
    worker_name: str | None = Field(default=None, min_length=1, max_length=256)
    lease_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)
    # `--follow-policy DIR` (`treerpo.growth.follow`): grow with the newest checkpoint a
    # `train --follow` run published in DIR, epoch after epoch, until it has published step
    # `until_steps` (None: until stopped).
    follow_policy: str | None = Field(default=None, min_length=1)
    until_steps: int | None = Field(default=None, ge=1, le=INT64_MAX)

    @model_validator(mode="after")
    def _growth_settings_agree(self) -> GenerateConfig:
        _check_growth_logprobs(tree=self.tree, engine=self.engine)
        return self

    @model_validator(mode="after")
    def _until_steps_follows(self) -> GenerateConfig:
        if self.until_steps is not None and self.follow_policy is None:
            raise ValueError("--until-steps stops a generator that follows a trainer: give "
                             "--follow-policy DIR too")
        return self

    def tree_shaping_settings(self) -> dict[str, Any]:
        """{flag name: value} of everything that shapes a tree: the model, seed, dtype and
        logprob transform, the prompt, tree and sampling settings. A resumed run must keep them
        all (its trees come from one recipe); the data selection may change (grow more rows)."""
        dumped = self.model_dump(mode="json")
        return {**{key: dumped["engine"][key] for key in _TREE_SHAPING_ENGINE_FIELDS},
                **dumped["prompt"], **dumped["tree"], **dumped["sampling"]}

    def differing_settings(self, stored: dict[str, Any]) -> list[str]:
        """`--flag (run: A, now: B)` for each tree-shaping setting that differs from a stored
        run's configuration (a setting the stored configuration predates is not compared)."""
        stored_flat: dict[str, Any] = {}
        for part in ("prompt", "tree", "sampling"):
            stored_flat.update(stored.get(part) or {})
        engine = stored.get("engine") or {}
        stored_flat.update({key: engine[key] for key in _TREE_SHAPING_ENGINE_FIELDS
                            if key in engine})
        return [f"--{name.replace('_', '-')} (run: {stored_flat[name]!r}, now: {value!r})"
                for name, value in self.tree_shaping_settings().items()
                if name in stored_flat and stored_flat[name] != value]

    def resolved_run_name(self) -> str:
        """`--run`, or a name derived from the dataset and a hash of everything that shapes the
        trees: the same command resumes the same run, a changed flag starts a new one."""
        if self.run_name:
            return self.run_name
        shaping = self.model_dump(mode="json", exclude={"run_name", "batch_size", "worker_name",
                                                        "lease_seconds", "until_steps"})
        if shaping["follow_policy"] is None:  # added later: an older command keeps its name
            del shaping["follow_policy"]
        shaping["engine"] = {k: v for k, v in shaping["engine"].items()
                             if k in _TREE_SHAPING_ENGINE_FIELDS}
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
        stem = slug(Path(self.data.dataset).stem)
        return f"{self.tree.rollout}-{stem or 'data'}-{self.data.split}-{digest}"


# --- train ------------------------------------------------------------------------------------

LossAggregation = Literal["group", "token", "leaf"]
AdvantageMode = Literal["local", "global-local"]
ReportTo = Literal["none", "tensorboard", "wandb"]
SaveDtypeName = Literal["auto", "float32", "bfloat16", "float16"]
# Every name of transformers' `SchedulerType` (a test pins the list against the installed
# transformers). Those stepped on a metric are stepped, as HF's Trainer does, after each
# evaluation during training (`--eval-dataset`) with `eval_accuracy` (mode "max" by default),
# not after every optimizer step.
SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                   "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                   "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
                   "greedy")
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
# Schedulers that need one of these `--lr-scheduler-kwargs` keys (transformers raises otherwise).
SCHEDULER_REQUIRED_KWARGS = {
    "cosine_with_min_lr": ("min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("min_lr", "min_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps",),
}
# TRL's `loss_type` → the closest `loss_aggregation` (README: "How the flags map onto TRL").
# dapo and bnpo normalise by the tokens of the (global / local) batch: `token` is the step-wide
# token mean. grpo averages per-sequence token means: a tree's sequences share segments, and the
# closest unit is the sibling group (`group`). dr_grpo divides by a constant
# (batch x max_completion_length), which nothing here does: refused.
TRL_LOSS_TYPES = {"dapo": "token", "bnpo": "token", "grpo": "group"}


def loss_aggregation_for_trl(loss_type: str) -> str:
    """`--loss-type` (TRL's names) → `--loss-aggregation`; ValueError for one with no match."""
    if loss_type in TRL_LOSS_TYPES:
        return TRL_LOSS_TYPES[loss_type]
    raise ValueError(f"--loss-type {loss_type}: treerpo has no equivalent; use one of "
                     f"{', '.join(TRL_LOSS_TYPES)} or --loss-aggregation group|token|leaf")


FSDP_OPTIONS = ("full_shard", "shard_grad_op", "auto_wrap")


def parse_fsdp(option: str) -> tuple[str, ...]:
    """HF TrainingArguments' `--fsdp` string ("full_shard auto_wrap") → its known words; one of
    full_shard / shard_grad_op must be there; auto_wrap is implied (decoder layers are wrapped)."""
    words = tuple(option.replace(",", " ").split())
    unknown = [word for word in words if word not in FSDP_OPTIONS]
    if unknown:
        raise ValueError(f"unknown --fsdp option(s) {', '.join(unknown)}: use full_shard or "
                         "shard_grad_op (auto_wrap is implied; offload and hybrid sharding are not "
                         "supported)")
    if words and not ({"full_shard", "shard_grad_op"} & set(words)):
        raise ValueError("--fsdp needs full_shard or shard_grad_op")
    if {"full_shard", "shard_grad_op"} <= set(words):
        raise ValueError("--fsdp: choose one of full_shard and shard_grad_op")
    return words


class OptimizationConfig(_Strict):
    """The update: batch shape, schedule, AdamW and the TreeRPO loss. Names follow TRL's
    `GRPOConfig` (see the README's mapping table)."""

    per_device_train_batch_size: int = Field(default=8, ge=1, le=INT64_MAX,
                                             description="trees per micro-batch")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=INT64_MAX)
    num_train_epochs: float = Field(default=1.0, gt=0.0)
    max_steps: int = Field(default=-1, ge=-1, le=INT64_MAX,
                           description="> 0 overrides num_train_epochs")
    learning_rate: float = Field(default=1e-6, ge=0.0)
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict)
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0, description="> 0 overrides warmup_ratio (TRL)")
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0, description="0 disables clipping")
    beta: float = Field(default=0.0, ge=0.0, description="k3 KL weight; 0 loads no reference")
    epsilon: float = Field(default=0.2, gt=0.0, lt=1.0)
    epsilon_high: float | None = Field(default=None, gt=0.0)
    num_iterations: int = Field(default=1, ge=1, le=INT64_MAX,
                                description="optimizer steps per batch (PPO μ)")
    # "leaf" weighs sibling groups by how often a root-to-leaf path visits them: measured at
    # least as good as one vote per group on both built-in tasks (README, "Learning").
    loss_aggregation: LossAggregation = "leaf"
    advantage: AdvantageMode = "local"
    max_packed_tokens: int | None = Field(default=None, ge=16, le=INT64_MAX)
    gradient_checkpointing: bool = False

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        if name not in SCHEDULER_TYPES:
            raise ValueError(f"unknown scheduler; use one of {', '.join(SCHEDULER_TYPES)}")
        return name

    @property
    def steps_on_metric(self) -> bool:
        """Whether the scheduler steps on eval_accuracy after each evaluation (not per step)."""
        return self.lr_scheduler_type in METRIC_SCHEDULERS

    @model_validator(mode="after")
    def _scheduler_kwargs_complete(self) -> OptimizationConfig:
        needed = SCHEDULER_REQUIRED_KWARGS.get(self.lr_scheduler_type, ())
        if needed and not any(key in self.lr_scheduler_kwargs for key in needed):
            raise ValueError(f"--lr-scheduler-type {self.lr_scheduler_type} needs "
                             f"{' or '.join(needed)} in --lr-scheduler-kwargs, e.g. "
                             f"'{{\"{needed[0]}\": ...}}'")
        return self

    def num_warmup_steps(self, total_steps: int) -> int:
        """`warmup_steps` when > 0 (TRL: it overrides the ratio), else ratio x total steps."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


class TrainEvalConfig(_Strict):
    """Greedy evaluation during training (`--eval-dataset`): every `steps` optimizer steps and
    after the last, on the first `limit` problems of `data`, stored as an eval run each."""

    data: DataConfig
    steps: int = Field(ge=1)


class FollowConfig(_Strict):
    """`train --follow` (`treerpo.training.follow`): train on the trees of generate runs as they
    land, skipping trees grown by a policy more than `max_staleness` steps older than the one
    being updated; give up after `follow_timeout` seconds without a full batch (None: wait on)."""

    max_staleness: int = Field(default=2, ge=0, le=INT64_MAX)
    follow_timeout: float | None = Field(default=None, gt=0.0)
    poll_seconds: float = Field(default=1.0, gt=0.0, le=3600.0)


class TrainConfig(_Strict):
    """`treerpo train`: replay stored trees (no `data`) or grow them on-policy (`data` set)."""

    run_name: str | None = None
    output_dir: str
    source_runs: list[str] = Field(default_factory=list, description="replay: [] = all runs")
    engine: EngineConfig
    data: DataConfig | None = None
    prompt: PromptSettings = PromptSettings()
    tree: TreeSettings = TreeSettings()
    sampling: SamplingConfig = SamplingConfig()
    optimization: OptimizationConfig = OptimizationConfig()
    full_determinism: bool = Field(
        default=False,
        description="deterministic torch kernels: bit-identical updates under a seed, slower")
    save_steps: int = Field(default=500, ge=1, le=INT64_MAX)
    save_total_limit: int | None = Field(default=None, ge=1, le=INT64_MAX)
    logging_steps: int = Field(default=10, ge=1, le=INT64_MAX)
    report_to: ReportTo = "none"
    resume_from_checkpoint: str | None = None
    # Replay: train on trees another policy grew (`treerpo.provenance`), with a warning.
    allow_off_policy: bool = False
    # dtype of the saved checkpoints and final model; auto = the base model's (its config.json).
    save_dtype: SaveDtypeName = "auto"
    # HF TrainingArguments' --fsdp: "full_shard" or "shard_grad_op" ("auto_wrap" implied); ""
    # = DDP when several processes run (treerpo.training.distributed).
    fsdp: str = ""

    @field_validator("fsdp")
    @classmethod
    def _known_fsdp_options(cls, fsdp: str) -> str:
        return " ".join(parse_fsdp(fsdp))
    # Leaf rewards: MODULE:FUNCTION plug-ins (empty: the verified-answer check), summed with
    # `reward_weights` (default 1 each), as TRL's reward_funcs / reward_weights.
    reward_fns: list[str] = Field(default_factory=list)
    reward_weights: list[float] | None = None
    eval: TrainEvalConfig | None = None
    # Warn when this many consecutive steps all trained on zero advantage (no signal).
    no_signal_warning_steps: int = Field(default=5, ge=1)
    # Replay the trees of `source_runs` as generators store them (None: what is stored now).
    follow: FollowConfig | None = None

    @model_validator(mode="after")
    def _follow_is_replay_with_a_length(self) -> TrainConfig:
        if self.follow is None:
            return self
        if self.data is not None:
            raise ValueError("--follow trains on trees that `generate` workers store; it does "
                             "not grow its own (drop --dataset)")
        if not self.source_runs:
            raise ValueError("--follow needs --run NAME: the generate run(s) whose trees to "
                             "train on as they land")
        if self.optimization.max_steps <= 0:
            raise ValueError("--follow needs --max-steps: the trees keep coming, so the run's "
                             "length is its number of optimizer steps")
        if self.save_steps > self.follow.max_staleness + 1:
            raise ValueError(
                f"--save-steps {self.save_steps} publishes checkpoints too rarely for "
                f"--max-staleness {self.follow.max_staleness}: between two checkpoints every "
                "tree would go stale and training would wait for ever; use --save-steps <= "
                f"{self.follow.max_staleness + 1}")
        return self

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_writable(cls, output_dir: str) -> str:
        # The nearest existing ancestor must be a folder we may write into: failing here is
        # an exit-2 before any model loads, not a crash at the first checkpoint.
        path = Path(output_dir).expanduser().absolute()
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{existing} is not writable")
        return output_dir

    @model_validator(mode="after")
    def _metric_scheduler_has_a_metric(self) -> TrainConfig:
        if self.optimization.steps_on_metric and self.eval is None:
            raise ValueError(f"--lr-scheduler-type {self.optimization.lr_scheduler_type} steps on "
                             "an eval metric: give --eval-dataset (it steps on eval_accuracy "
                             "after each evaluation)")
        return self

    @model_validator(mode="after")
    def _reward_weights_match(self) -> TrainConfig:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_fns):
            raise ValueError(f"--reward-weights gives {len(self.reward_weights)} weight(s) for "
                             f"{len(self.reward_fns)} --reward-fn: give one per function")
        return self

    @model_validator(mode="after")
    def _growth_settings_agree(self) -> TrainConfig:
        if self.chained:  # replay grows nothing: its trees carry their own logprob temperature
            _check_growth_logprobs(tree=self.tree, engine=self.engine)
        return self

    @property
    def chained(self) -> bool:
        return self.data is not None

    def resolved_run_name(self) -> str:
        """`--run-name`, or a name derived from the output folder and a hash of everything
        that shapes the updates: the same command (resumed or not) keeps its run."""
        if self.run_name:
            return self.run_name
        shaping = self.model_dump(mode="json", exclude={
            "run_name", "resume_from_checkpoint", "logging_steps", "save_steps",
            "save_total_limit", "report_to", "eval", "no_signal_warning_steps",
            "allow_off_policy", "save_dtype", "fsdp"})  # fsdp: the same updates, sharded
        # Settings added later count only when set, so an older command keeps its run's name.
        for part, key, default in ((shaping, "reward_fns", []), (shaping, "reward_weights", None),
                                   (shaping["optimization"], "lr_scheduler_kwargs", {}),
                                   (shaping["optimization"], "warmup_steps", 0),
                                   (shaping, "follow", None)):
            if part[key] == default:
                del part[key]
        shaping["output_dir"] = str(Path(self.output_dir).expanduser().absolute())
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
        stem = slug(Path(self.output_dir).name)
        return f"train-{stem or 'out'}-{digest}"

"""Typed configuration of the stages, saved whole with every run (and every checkpoint).

Each stage's configuration is a pydantic model composed of small parts that several stages share:
where problems come from (`DataConfig`), how the policy is loaded and sampled (`EngineConfig`),
how prompts are rendered (`PromptSettings`), how trees grow (`TreeSettings`, `SamplingConfig`).
Invalid values raise `ValidationError`; the CLI turns it into a one-line exit-2 error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from treerpo.growth.settings import SamplingConfig, TreeSettings
from treerpo.limits import INT64_MAX, SEED_MAX
from treerpo.problems.prompts import PromptSettings

EngineName = Literal["auto", "hf", "vllm"]
TorchDtypeName = Literal["auto", "bfloat16", "float16", "float32"]
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
    trust_remote_code: bool = False
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    # raw or sampling (see LogprobTemperatureMode); the value an engine is built with comes from
    # `treerpo.engines.resolve_logprob_temperature`. "raw": sampling did not learn better in
    # `bench learn`'s pilots (README, "Learning"), and vLLM reports raw logprobs only.
    logprob_temperature: LogprobTemperatureMode = "raw"
    # HF engine: requests decoded together in one batch.
    generation_batch_size: int = Field(default=64, ge=1, le=INT64_MAX)
    # vLLM engine only.
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16, le=INT64_MAX)
    enable_prefix_caching: bool = True


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

    @model_validator(mode="after")
    def _growth_settings_agree(self) -> GenerateConfig:
        _check_growth_logprobs(tree=self.tree, engine=self.engine)
        return self

    def resolved_run_name(self) -> str:
        """`--run`, or a name derived from the dataset and a hash of everything that shapes the
        trees: the same command resumes the same run, a changed flag starts a new one."""
        if self.run_name:
            return self.run_name
        shaping = self.model_dump(mode="json", exclude={"run_name", "batch_size"})
        shaping["engine"] = {k: v for k, v in shaping["engine"].items()
                             if k in ("model", "seed", "torch_dtype", "logprob_temperature")}
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
        stem = slug(Path(self.data.dataset).stem)
        return f"{self.tree.rollout}-{stem or 'data'}-{self.data.split}-{digest}"


# --- train ------------------------------------------------------------------------------------

LossAggregation = Literal["group", "token", "leaf"]
AdvantageMode = Literal["local", "global-local"]
ReportTo = Literal["none", "tensorboard", "wandb"]
# transformers `get_scheduler` names that need nothing beyond warmup and total steps.
SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                   "constant_with_warmup", "inverse_sqrt")


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
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
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
            "save_total_limit", "report_to"})
        shaping["output_dir"] = str(Path(self.output_dir).expanduser().absolute())
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
        stem = slug(Path(self.output_dir).name)
        return f"train-{stem or 'out'}-{digest}"

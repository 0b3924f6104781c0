"""Typed configuration of the stages, saved whole with every run (and every checkpoint).

Each stage's configuration is a pydantic model composed of small parts that several stages share:
where problems come from (`DataConfig`), how the policy is loaded and sampled (`EngineConfig`),
how prompts are rendered (`PromptSettings`), how trees grow (`TreeSettings`, `SamplingConfig`).
Invalid values raise `ValidationError`; the CLI turns it into a one-line exit-2 error.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from treerpo.growth.settings import SamplingConfig, TreeSettings
from treerpo.problems.prompts import PromptSettings

EngineName = Literal["auto", "hf", "vllm"]
TorchDtypeName = Literal["auto", "bfloat16", "float16", "float32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Strict):
    """Which problems: a hub dataset id, a local .jsonl/.json/.parquet/.csv file, or `arith`."""

    dataset: str
    split: str = "train"
    dataset_config: str | None = None
    limit: int | None = Field(default=None, ge=1)
    offset: int = Field(default=0, ge=0)
    problem_field: str | None = None
    answer_field: str | None = None


class EngineConfig(_Strict):
    """How the policy is loaded and run for generation."""

    model: str
    engine: EngineName = "auto"
    torch_dtype: TorchDtypeName = "auto"
    trust_remote_code: bool = False
    seed: int = 0
    # HF engine: requests decoded together in one batch.
    generation_batch_size: int = Field(default=64, ge=1)
    # vLLM engine only.
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16)
    enable_prefix_caching: bool = True


class GenerateConfig(_Strict):
    """`treerpo generate`: grow (or, with rollout=flat, sample) and store trees."""

    run_name: str | None = None
    data: DataConfig
    engine: EngineConfig
    prompt: PromptSettings = PromptSettings()
    tree: TreeSettings = TreeSettings()
    sampling: SamplingConfig = SamplingConfig()
    # Problems whose trees grow together: each wave batches their requests.
    batch_size: int = Field(default=16, ge=1)

    def resolved_run_name(self) -> str:
        """`--run`, or a name derived from the dataset and a hash of everything that shapes the
        trees: the same command resumes the same run, a changed flag starts a new one."""
        if self.run_name:
            return self.run_name
        shaping = self.model_dump(mode="json", exclude={"run_name", "batch_size"})
        shaping["engine"] = {k: v for k, v in shaping["engine"].items()
                             if k in ("model", "seed", "torch_dtype")}
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:8]
        stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(self.data.dataset).stem).strip("-").lower()
        return f"{self.tree.rollout}-{stem or 'data'}-{self.data.split}-{digest}"

"""Typed, validated settings for tree growth (DESIGN steps 1–6) and for sampling (step 3).

Both models forbid unknown fields and reject invalid values with a pydantic `ValidationError`
(the CLI maps it to exit 2). They are plain data, saved whole with every run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from treerpo.engines.base import SamplingSettings
from treerpo.limits import INT64_MAX

DEFAULT_SPLIT_DELIMITERS = ["\n", "!", ".", "?", ";", ":"]
Branching = Literal["resample", "forced"]
DEFAULT_ROOT_CHILDREN: dict[str, int] = {"resample": 4, "forced": 2}


class TreeSettings(BaseModel):
    """How trees grow. Defaults are DESIGN's.

    `coverage_children_max = 1` turns the coverage split off: a lone child carries no advantage
    signal (DESIGN step 9), so cutting a segment to hang one child below it would only add a node.

    `branching` says how every further child of the root and of an entropy split starts (DESIGN
    step 2): `resample` (the default) samples it freely from the same prefix, so every leaf is an
    on-policy sample; `forced` draws its first token as an alternative from the top-k with the used
    tokens removed (the original release's rule). `root_children` left unset means 4 with
    resample and 2 with forced, the measured defaults of each (README, "Learning").
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    rollout: Literal["tree", "flat"] = "tree"
    branching: Branching = "resample"
    max_depth: int = Field(default=7, ge=1, le=INT64_MAX,
                           description="entropy splits only at depth < this")
    min_segment_len: int = Field(default=150, ge=1, le=INT64_MAX,
                                 description="tokens before a split point")
    entropy_threshold: float = Field(
        default=1.0, ge=0.0, description="split when the top-k entropy (nats) exceeds this"
    )
    entropy_topk: int = Field(default=20, ge=2, le=INT64_MAX,
                              description="candidates for entropy/alternatives")
    coverage_min_chars: int = Field(
        default=150, ge=1, le=INT64_MAX, description="characters a coverage cut leaves after it"
    )
    coverage_children_max: int = Field(default=4, ge=1, le=INT64_MAX,
                                       description="children of a coverage cut")
    root_children: int | None = Field(
        default=None, ge=2, le=INT64_MAX,
        description="children of the root (unset: 4 resample, 2 forced)")
    split_delimiters: list[str] = Field(default_factory=lambda: list(DEFAULT_SPLIT_DELIMITERS))
    num_generations: int = Field(default=8, ge=2, le=INT64_MAX,
                                 description="samples per problem (flat)")
    max_new_tokens: int = Field(default=1300, ge=1, le=INT64_MAX,
                                description="completion tokens per path")

    @field_validator("split_delimiters")
    @classmethod
    def _delimiters_are_non_empty(cls, delimiters: list[str]) -> list[str]:
        if not delimiters:
            raise ValueError("split_delimiters must name at least one delimiter")
        if any(delimiter == "" for delimiter in delimiters):
            raise ValueError("split_delimiters must not contain the empty string")
        return delimiters

    @property
    def resolved_root_children(self) -> int:
        """Children of the root: `root_children`, or the default of the branching mode."""
        if self.root_children is not None:
            return self.root_children
        return DEFAULT_ROOT_CHILDREN[self.branching]

    @model_validator(mode="after")
    def _root_children_fit_topk(self) -> TreeSettings:
        # Forced: the sampled first token plus root_children - 1 distinct alternatives come from
        # the top-k. Resampled children may repeat a token, so any number fits.
        if self.branching == "forced" and self.resolved_root_children > self.entropy_topk:
            raise ValueError(
                f"root_children ({self.resolved_root_children}) must be <= entropy_topk "
                f"({self.entropy_topk})"
            )
        return self


class SamplingConfig(BaseModel):
    """Sampling flags as the user gives them (DESIGN step 3); `to_settings()` feeds an engine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    temperature: float = Field(default=0.6, gt=0.0)
    top_p: float = Field(default=0.85, gt=0.0, le=1.0)
    top_k: int | None = Field(default=25, ge=1, le=INT64_MAX)
    min_p: float | None = Field(default=None, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(default=1.1, gt=0.0)

    def to_settings(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

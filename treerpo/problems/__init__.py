"""Problems: where they come from (`--dataset`) and how each becomes a prompt (a tree's root)."""

from treerpo.problems.prompts import (
    PromptSettings,
    RenderedPrompt,
    build_prompt,
    encode_prompt,
    render_prompt,
)
from treerpo.problems.sources import BUILTIN_DATASETS, Problem, ProblemSet, load_problems

__all__ = [
    "BUILTIN_DATASETS",
    "Problem",
    "ProblemSet",
    "PromptSettings",
    "RenderedPrompt",
    "build_prompt",
    "encode_prompt",
    "load_problems",
    "render_prompt",
]

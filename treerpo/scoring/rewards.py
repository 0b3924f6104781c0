"""Leaf reward functions: the default pass/fail check, and user plug-ins (`--reward-fn`).

A reward function is called with keyword arguments only,
`fn(completion=..., reference=..., problem=...)`, where `completion` is the leaf's full path text
below the prompt, `reference` the problem's reference answer and `problem` the problem text, and
returns a float in [0, 1]. The default, `verified_answer_reward`, is DESIGN step 7: 1.0 when the
completion's last `\\boxed{}` equals the reference mathematically, else 0.0.

A plug-in is named `MODULE:FUNCTION` (FUNCTION may be dotted: `module:Class.method`). It is
imported by name, not pickled, so scorer worker processes import it themselves. `resolve_reward_fn`
wraps it in `CheckedRewardFn`, which turns a raise or a return value that is not a number in
[0, 1] (bools and the ints 0 and 1 are fine, NaN is not) into a `RunFailure` naming the function:
a broken plug-in stops the run instead of training on made-up rewards.

Several plug-ins (`--reward-fn` repeated, with `--reward-weights`) make one reward, the weighted
sum of theirs, as TRL's `reward_funcs` / `reward_weights` (default weight 1 each; the sum may
leave [0, 1]). They travel as one spec string, `combine_reward_specs`' `W*MODULE:FUNCTION + ...`.

The working folder is importable, as it is for `python -m`: `--reward-fn my_rewards:f` finds
`./my_rewards.py` from the `treerpo` console script too (it is appended to `sys.path`, after
the installed packages, so it shadows none of them).
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable

from treerpo.errors import BadInputError, RunFailure
from treerpo.scoring.verify import is_correct

RewardFn = Callable[..., object]
"""fn(*, completion: str, reference: str, problem: str); should return a float in [0, 1]."""

DEFAULT_REWARD_FN = "treerpo.scoring.rewards:verified_answer_reward"


def verified_answer_reward(*, completion: str, reference: str, problem: str) -> float:
    """1.0 when the last `\\boxed{}` of `completion` equals `reference` mathematically, else 0.0."""
    return 1.0 if is_correct(completion, reference) else 0.0


_TERM_SEPARATOR = " + "


def combine_reward_specs(specs: list[str], weights: list[float] | None = None) -> str | None:
    """One spec for the weighted sum of `specs` (None for none: the default reward). A single
    function with weight 1 stays its own spec."""
    if not specs:
        return None
    weights = [1.0] * len(specs) if weights is None else list(weights)
    if len(weights) != len(specs):
        raise BadInputError(f"--reward-weights gives {len(weights)} weight(s) for "
                            f"{len(specs)} --reward-fn: give one per function")
    if len(specs) == 1 and weights[0] == 1.0:
        return specs[0]
    return _TERM_SEPARATOR.join(f"{weight!r}*{spec.strip()}"
                                for spec, weight in zip(specs, weights, strict=True))


def _working_folder_importable() -> None:
    folder = os.getcwd()
    if folder not in sys.path and "" not in sys.path:
        sys.path.append(folder)


def load_reward_fn(spec: str) -> RewardFn:
    """Import the function named by `spec` ("MODULE:FUNCTION"); BadInputError when that fails."""
    _working_folder_importable()
    module_name, separator, attribute_path = spec.partition(":")
    if not separator or not module_name.strip() or not attribute_path.strip():
        raise BadInputError(f"reward function {spec!r} must be written MODULE:FUNCTION")
    try:
        target: object = importlib.import_module(module_name.strip())
    except Exception as error:  # any failure while importing user code is a bad --reward-fn
        raise BadInputError(
            f"reward function {spec}: cannot import module {module_name!r} "
            f"({type(error).__name__}: {error})"
        ) from error
    for attribute in attribute_path.strip().split("."):
        if not hasattr(target, attribute):
            raise BadInputError(
                f"reward function {spec}: {module_name!r} has no {attribute_path!r}"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise BadInputError(
            f"reward function {spec} is not callable (it is a {type(target).__name__})"
        )
    return target


class CheckedRewardFn:
    """A reward function that raises RunFailure, naming it, instead of returning a bad reward."""

    def __init__(self, fn: RewardFn, *, name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, *, completion: str, reference: str, problem: str) -> float:
        try:
            reward = self.fn(completion=completion, reference=reference, problem=problem)
        except Exception as error:  # re-raised as a failure of the run, with the plug-in's name
            raise RunFailure(
                f"reward function {self.name} raised {type(error).__name__}: {error}"
            ) from error
        return self._checked(reward)

    def _checked(self, reward: object) -> float:
        if isinstance(reward, numbers.Real):
            value = float(reward)
            if not math.isnan(value) and 0.0 <= value <= 1.0:
                return value
        raise RunFailure(
            f"reward function {self.name} returned {reward!r}; expected a float in [0, 1]"
        )


class WeightedRewardSum:
    """Several checked reward functions as one: the weighted sum of their rewards."""

    def __init__(self, terms: list[tuple[float, CheckedRewardFn]]) -> None:
        self.terms = terms

    def __call__(self, *, completion: str, reference: str, problem: str) -> float:
        return sum(weight * fn(completion=completion, reference=reference, problem=problem)
                   for weight, fn in self.terms)


def _parse_term(term: str) -> tuple[float, str]:
    weight_text, star, spec = term.partition("*")
    if not star:
        return 1.0, term.strip()
    try:
        return float(weight_text), spec.strip()
    except ValueError as error:
        raise BadInputError(f"reward term {term!r}: expected WEIGHT*MODULE:FUNCTION") from error


@functools.lru_cache(maxsize=16)
def resolve_reward_fn(spec: str | None = None) -> CheckedRewardFn | WeightedRewardSum:
    """The checked reward function for `spec`, or the default when `spec` is None (cached);
    a combined spec (`combine_reward_specs`) gives their weighted sum."""
    spec = spec or DEFAULT_REWARD_FN
    if "*" not in spec:
        return CheckedRewardFn(load_reward_fn(spec), name=spec)
    terms = [_parse_term(term) for term in spec.split(_TERM_SEPARATOR)]
    return WeightedRewardSum([(weight, CheckedRewardFn(load_reward_fn(name), name=name))
                              for weight, name in terms])

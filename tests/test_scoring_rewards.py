"""The default reward and `MODULE:FUNCTION` plug-ins, with the errors a user sees."""

from __future__ import annotations

import textwrap

import pytest

from treerpo.errors import BadInputError, RunFailure
from treerpo.scoring.rewards import (
    DEFAULT_REWARD_FN,
    load_reward_fn,
    resolve_reward_fn,
    verified_answer_reward,
)

PLUGIN_SOURCE = textwrap.dedent(
    """
    import math

    import numpy as np

    calls = []

    def length_reward(*, completion, reference, problem):
        calls.append((completion, reference, problem))
        return min(len(completion) / 100, 1.0)

    def always_true(*, completion, reference, problem):
        return True

    def one(*, completion, reference, problem):
        return 1

    def numpy_half(*, completion, reference, problem):
        return np.float32(0.5)

    def explodes(*, completion, reference, problem):
        raise KeyError("no such key")

    def too_big(*, completion, reference, problem):
        return 1.5

    def negative(*, completion, reference, problem):
        return -0.1

    def two(*, completion, reference, problem):
        return 2

    def not_a_number(*, completion, reference, problem):
        return math.nan

    def a_string(*, completion, reference, problem):
        return "1.0"

    def a_tuple(*, completion, reference, problem):
        return (1.0, {"info": 1})

    def positional_only(completion, reference, problem, /):
        return 1.0

    class Rewards:
        @staticmethod
        def nested(*, completion, reference, problem):
            return 0.25

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user module on sys.path, named uniquely so tests never share an imported copy."""
    name = f"user_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "broken_rewards_module.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def call(fn):
    return fn(completion=r"The answer is \boxed{4}.", reference="4", problem="2 + 2?")


def test_default_reward_is_pass_fail():
    assert verified_answer_reward(completion=r"\boxed{4}", reference="4.0", problem="") == 1.0
    assert verified_answer_reward(completion=r"\boxed{5}", reference="4", problem="") == 0.0
    assert verified_answer_reward(completion="4", reference="4", problem="") == 0.0
    assert resolve_reward_fn(None).name == DEFAULT_REWARD_FN
    assert call(resolve_reward_fn(None)) == 1.0


def test_a_plugin_gets_keyword_arguments(plugin):
    reward_fn = resolve_reward_fn(f"{plugin}:length_reward")
    assert call(reward_fn) == pytest.approx(len(r"The answer is \boxed{4}.") / 100)
    module = __import__(plugin)
    assert module.calls == [(r"The answer is \boxed{4}.", "4", "2 + 2?")]


@pytest.mark.parametrize(
    ("function", "expected"),
    [("always_true", 1.0), ("one", 1.0), ("numpy_half", 0.5), ("Rewards.nested", 0.25)],
)
def test_plugin_return_values_that_are_accepted(plugin, function, expected):
    reward = call(resolve_reward_fn(f"{plugin}:{function}"))
    assert reward == expected and type(reward) is float


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("explodes", "raised KeyError"),
        ("too_big", "returned 1.5"),
        ("negative", "returned -0.1"),
        ("two", "returned 2"),
        ("not_a_number", "returned nan"),
        ("a_string", "returned '1.0'"),
        ("a_tuple", "returned (1.0"),
        ("positional_only", "raised TypeError"),
    ],
)
def test_a_failing_plugin_is_a_run_failure_naming_it(plugin, function, message):
    reward_fn = resolve_reward_fn(f"{plugin}:{function}")
    with pytest.raises(RunFailure) as caught:
        call(reward_fn)
    assert message in str(caught.value)
    assert f"{plugin}:{function}" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:reward", "cannot import module 'no_such_module_xyz'"),
        ("broken_rewards_module:reward", "ModuleNotFoundError"),
        ("{plugin}:missing_function", "has no 'missing_function'"),
        ("{plugin}:Rewards.missing", "has no 'Rewards.missing'"),
        ("{plugin}:NOT_CALLABLE", "not callable"),
        ("{plugin}", "MODULE:FUNCTION"),
        ("{plugin}:", "MODULE:FUNCTION"),
        (":length_reward", "MODULE:FUNCTION"),
    ],
)
def test_a_plugin_that_cannot_be_loaded_is_bad_input_naming_it(plugin, spec, message):
    spec = spec.format(plugin=plugin)
    with pytest.raises(BadInputError) as caught:
        load_reward_fn(spec)
    assert message in str(caught.value)
    assert spec in str(caught.value)

"""A shortened `treerpo demo` through the CLI: eval, one chained TreeRPO step, eval again."""

from __future__ import annotations

import inspect
import json

from cli_runner import run_cli

from treerpo.cli.demo_command import demo, sparkline
from treerpo.demo import DemoSettings, greedy_eval, is_worked
from treerpo.policies import arith_policy_path
from treerpo.store.database import open_store


def test_short_demo_runs_end_to_end(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = tmp_path / "out"
    result = run_cli("demo", "--steps", "1", "--eval-problems", "10", "--problems-per-step", "2",
                     "--output-dir", str(out), "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload) == {"accuracy_before", "accuracy_after", "steps", "seconds"}
    assert payload["steps"] == 1
    assert 0.0 <= payload["accuracy_before"] <= 1.0
    assert 0.0 <= payload["accuracy_after"] <= 1.0
    assert payload["seconds"] > 0
    trees = run_cli("trees", "--db", db_url, "--json")
    assert trees.exit_code == 0, trees.stderr
    assert json.loads(trees.stdout)
    assert (out / "config.json").is_file()
    assert any(out.glob("*.safetensors"))


def test_cli_defaults_match_demo_settings():
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(demo).parameters.items()}
    settings = DemoSettings()
    assert defaults["steps"] == settings.steps
    assert defaults["problems_per_step"] == settings.problems_per_step
    assert defaults["eval_problems"] == settings.eval_problems
    assert defaults["seed"] == settings.seed


def test_is_worked_needs_a_line_of_arithmetic():
    assert is_worked("4 + 9 = 13\n13 * 3 = 39\n\\boxed{39}")
    assert is_worked("12 - 3 = 9")
    assert not is_worked("\\boxed{39}")
    assert not is_worked("x = 3, so \\boxed{3}")
    assert not is_worked("")


def test_shipped_policy_answers_some_problems_directly_and_works_out_others(tmp_path):
    # The warm start mixed answer-only and worked targets (MADE.md); greedy decoding shows both,
    # which is the choice the demo's training changes.
    store = open_store(f"sqlite:///{tmp_path / 'eval.db'}")
    try:
        outcome = greedy_eval(store=store, model=str(arith_policy_path()),
                              settings=DemoSettings(eval_problems=60), run_name="worked")
    finally:
        store.close()
    assert 0.0 < outcome.worked_share < 1.0
    assert 0.0 < outcome.accuracy < 1.0


def test_sparkline_scales_bar_means_between_lowest_and_highest():
    line, low, high = sparkline([0.1, 0.3, 0.2, 0.4, 0.5, 0.5], width=3)
    assert (line, round(low, 6), round(high, 6)) == ("▁▃█", 0.2, 0.5)  # means 0.2, 0.3, 0.5
    assert sparkline([0.2] * 5) == ("▁▁▁▁▁", 0.2, 0.2)
    assert len(sparkline([0.5] * 121, width=60)[0]) == 41  # 3 values per bar, rounded up

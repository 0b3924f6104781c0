"""A shortened `treerpo demo` through the CLI: eval, one chained TreeRPO step, eval again."""

from __future__ import annotations

import inspect
import json

from cli_runner import run_cli

from treerpo.cli.demo_command import demo
from treerpo.demo import DemoSettings


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

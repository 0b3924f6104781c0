"""A shortened `treerpo demo` through the CLI: eval, one chained TreeRPO step, eval again."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import replace

from cli_runner import run_cli

from treerpo.bench.tasks import task_settings
from treerpo.cli.demo_command import demo, sparkline
from treerpo.demo import greedy_eval, is_worked, run_demo
from treerpo.policies import arith_policy_path
from treerpo.store import repository
from treerpo.store.database import open_store


def test_short_demo_runs_end_to_end(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = tmp_path / "out"
    result = run_cli("demo", "--steps", "1", "--eval-problems", "10", "--problems-per-step", "2",
                     "--output-dir", str(out), "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload) == {"accuracy_before", "accuracy_after", "steps", "seconds",
                            "report_html", "tree_html"}
    assert payload["report_html"] == str(out / "report.html")
    assert payload["tree_html"] == str(out / "tree.html")
    assert "<svg" in (out / "report.html").read_text(encoding="utf-8")
    assert 'id="tree-data"' in (out / "tree.html").read_text(encoding="utf-8")
    assert payload["steps"] == 1
    assert 0.0 <= payload["accuracy_before"] <= 1.0
    assert 0.0 <= payload["accuracy_after"] <= 1.0
    assert payload["seconds"] > 0
    trees = run_cli("trees", "--db", db_url, "--json")
    assert trees.exit_code == 0, trees.stderr
    assert json.loads(trees.stdout)
    assert (out / "config.json").is_file()
    assert any(out.glob("*.safetensors"))


def test_demo_prints_the_on_policy_reward_per_step_and_the_before_after_table(tmp_path):
    result = run_cli("demo", "--steps", "1", "--eval-problems", "4", "--problems-per-step", "2",
                     "--output-dir", str(tmp_path / "out"), "--db",
                     f"sqlite:///{tmp_path / 'demo.db'}")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(re.fullmatch(r"  step   1  on-policy reward [01]\.\d{3}", line) for line in lines)
    assert any(line.startswith("on-policy reward per step  ") for line in lines)
    for row in ("shipped policy (before)", "after 1 TreeRPO steps", "change"):
        assert row in result.stdout
    assert f"run report: {tmp_path / 'out' / 'report.html'}" in lines
    assert any(line.startswith(f"tree page:  {tmp_path / 'out' / 'tree.html'}") for line in lines)


def test_cli_defaults_match_the_arith_task():
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(demo).parameters.items()}
    settings = task_settings("arith")
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
                              settings=replace(task_settings("arith"), eval_problems=60),
                              run_name="worked")
    finally:
        store.close()
    assert 0.0 < outcome.worked_share < 1.0
    assert 0.0 < outcome.accuracy < 1.0


def test_sparkline_scales_bar_means_between_lowest_and_highest():
    line, low, high = sparkline([0.1, 0.3, 0.2, 0.4, 0.5, 0.5], width=3)
    assert (line, round(low, 6), round(high, 6)) == ("▁▃█", 0.2, 0.5)  # means 0.2, 0.3, 0.5
    assert sparkline([0.2] * 5) == ("▁▁▁▁▁", 0.2, 0.2)
    assert len(sparkline([0.5] * 121, width=60)[0]) == 41  # 3 values per bar, rounded up


def test_run_demo_trains_and_evaluates_on_arith_long(tmp_path):
    settings = replace(task_settings("arith-long"), steps=1, problems_per_step=1, eval_problems=2)
    store = open_store(f"sqlite:///{tmp_path / 'long.db'}")
    try:
        result = run_demo(store=store, output_dir=tmp_path / "out", settings=settings, tag="long")
        config = repository.find_run(store, result.train_run).config
        evals = [repository.find_run(store, f"long-eval-{when}").config
                 for when in ("before", "after")]
    finally:
        store.close()
    assert result.steps == 1 and len(result.on_policy_rewards) == 1
    assert config["data"]["dataset"] == "arith-long"
    assert config["engine"]["model"] == settings.policy
    assert config["tree"]["max_new_tokens"] == 256
    assert config["tree"]["branching"] == "resample" and config["tree"]["root_children"] is None
    for eval_config in evals:
        assert eval_config["data"]["dataset"] == "arith-long"
        assert eval_config["max_new_tokens"] == 256


def test_task_profiles_leave_branching_to_the_library_defaults():
    for task in ("arith", "arith-long"):
        settings = task_settings(task)
        assert settings.task == settings.dataset == task
        assert settings.tree.branching == "resample" and settings.tree.root_children is None
        assert (settings.sampling.temperature, settings.sampling.top_p, settings.sampling.top_k,
                settings.sampling.repetition_penalty) == (0.7, 1.0, None, 1.0)
    long = task_settings("arith-long").tree
    assert (long.split_delimiters, long.min_segment_len, long.entropy_threshold,
            long.coverage_min_chars, long.coverage_children_max, long.max_depth,
            long.max_new_tokens) == (["= ", "\n"], 40, 0.0, 40, 1, 3, 256)
    short = task_settings("arith").tree
    assert (short.split_delimiters, short.min_segment_len, short.entropy_threshold,
            short.coverage_children_max, short.max_depth, short.max_new_tokens) == \
        (["= ", "\n"], 12, 0.0, 1, 3, 80)

"""`train` shows where time goes: a progress bar with step/total and growth / scoring / update
seconds, the same times and the no-signal share in metrics.jsonl, a step table within 80
columns; and it evaluates during training (`--eval-dataset`) as TRL logs eval metrics."""

from __future__ import annotations

import json

import pytest
from cli_runner import run_cli

from treerpo.cli.train_command import table_columns
from treerpo.policies import arith_policy_path

CHAINED = ["--dataset", "arith", "--limit", "8", "--per-device-train-batch-size", "2",
           "--max-new-tokens", "32", "--logging-steps", "1", "--learning-rate", "1e-4"]


def _metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_progress_bar_and_step_times(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # draw the live bar into the captured output
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(arith_policy_path()), *CHAINED, "--max-steps", "3",
                     "--output-dir", str(output_dir), "--db", db_url)
    assert result.exit_code == 0, result.stderr
    assert "3/3 steps" in result.stdout
    assert "grow " in result.stdout and "score " in result.stdout and "update " in result.stdout
    lines = _metrics(output_dir)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["growth_seconds"] > 0 and line["scoring_seconds"] > 0
        assert 0 < line["update_seconds"] <= line["step_seconds"]
        assert 0.0 <= line["no_signal_tree_share"] <= 1.0
    header = next(line for line in result.stdout.splitlines() if "step" in line and "loss" in line)
    assert "grow s" in header and "upd s" in header


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("branching", ["resample", "forced"])
def test_step_table_fits_80_columns(beta, branching):
    columns = table_columns(beta=beta, branching=branching, chained=True)
    assert sum(width + 1 for *_, width in columns) - 1 <= 80
    headers = [header for header, *_ in columns]
    assert "loss" in headers and ("kl" in headers) == (beta > 0)
    assert ("forced" in headers) == (branching == "forced")


def test_eval_during_training(tmp_path, db_url):
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(arith_policy_path()), *CHAINED, "--max-steps", "3",
                     "--eval-dataset", "arith", "--eval-limit", "4", "--eval-steps", "2",
                     "--output-dir", str(output_dir), "--db", db_url, "--run-name", "t")
    assert result.exit_code == 0, result.stderr
    evals = [line for line in _metrics(output_dir) if "eval_accuracy" in line]
    assert [line["step"] for line in evals] == [2, 3]  # every 2 steps and after the last
    for line in evals:
        assert 0.0 <= line["eval_accuracy"] <= 1.0 and line["eval_num_problems"] == 4
        records = run_cli("eval", "show", line["eval_run"], "--db", db_url, "--json").json()
        assert len(records) == 4 and {record["mode"] for record in records} == {"greedy"}
        assert line["eval_accuracy"] == sum(record["correct"] for record in records) / 4
    assert "eval step 2: greedy accuracy" in result.stdout


def test_eval_dataset_needs_a_known_source(tmp_path):
    result = run_cli("train", "--model", str(arith_policy_path()), *CHAINED, "--eval-dataset",
                     str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "out"),
                     "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_plateau_scheduler_steps_on_eval_accuracy(tmp_path, db_url):
    # A learning rate too small to change a greedy answer: the accuracy stays flat, so with
    # patience 0 the second evaluation halves the learning rate.
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(arith_policy_path()), *CHAINED, "--max-steps", "3",
                     "--learning-rate", "1e-12", "--lr-scheduler-type", "reduce_lr_on_plateau",
                     "--lr-scheduler-kwargs", '{"patience": 0, "factor": 0.5}',
                     "--eval-dataset", "arith", "--eval-limit", "3", "--eval-steps", "1",
                     "--output-dir", str(output_dir), "--db", db_url)
    assert result.exit_code == 0, result.stderr
    lines = _metrics(output_dir)
    accuracies = [line["eval_accuracy"] for line in lines if "eval_accuracy" in line]
    assert len(accuracies) == 3 and len(set(accuracies)) == 1
    rates = [line["learning_rate"] for line in lines if "learning_rate" in line]
    assert rates[0] == rates[1] == pytest.approx(1e-12)
    assert rates[2] == pytest.approx(0.5e-12)

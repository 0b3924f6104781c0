"""Runs: `treerpo runs`, resuming a generate run only with its settings, wrong run names, and
the store line of commands that write."""

from __future__ import annotations

import json

import pytest
from cli_runner import run_cli

from treerpo.store import database, repository

SMALL_TREE = ["--max-new-tokens", "30", "--min-segment-len", "8", "--max-depth", "2",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]


def _generate(model_dir, gsm8k_dir, db_url, *extra):
    return run_cli("generate", "--model", str(model_dir), "--dataset",
                   str(gsm8k_dir / "test.jsonl"), "--db", db_url, *SMALL_TREE, *extra)


@pytest.fixture
def three_kinds_of_runs(tiny_model_dir, gsm8k_dir, db_url, tmp_path):
    """A generate run (2 trees), a train run on them (2 steps) and an eval run (2 records)."""
    assert _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2",
                     "--run", "gsm8k-trees").exit_code == 0
    trained = run_cli("train", "--model", str(tiny_model_dir), "--output-dir",
                      str(tmp_path / "out"), "--db", db_url, "--max-steps", "2",
                      "--per-device-train-batch-size", "1", "--run-name", "replay-1")
    assert trained.exit_code == 0, trained.stderr
    evaluated = run_cli("eval", "gsm8k", "--model", str(tiny_model_dir), "--data-file",
                        str(gsm8k_dir / "test.jsonl"), "--db", db_url, "--limit", "2",
                        "--mode", "greedy", "--max-new-tokens", "8", "--run", "eval-tiny")
    assert evaluated.exit_code == 0, evaluated.stderr
    return db_url


def test_runs_lists_every_run_with_its_counts(three_kinds_of_runs, tiny_model_dir, monkeypatch):
    db_url = three_kinds_of_runs
    result = run_cli("runs", "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # read-only: no store line
    rows = {row["name"]: row for row in result.json()}
    assert list(rows) == ["gsm8k-trees", "replay-1", "eval-tiny"]  # oldest first
    assert {name: row["kind"] for name, row in rows.items()} == {
        "gsm8k-trees": "generate", "replay-1": "train", "eval-tiny": "eval"}
    assert (rows["gsm8k-trees"]["trees"], rows["replay-1"]["steps"],
            rows["eval-tiny"]["records"]) == (2, 2, 2)
    assert rows["replay-1"]["trees"] == 0 and rows["gsm8k-trees"]["steps"] == 0
    assert all(row["status"] == "finished" and row["model"] == str(tiny_model_dir)
               for row in rows.values())
    assert set(rows["eval-tiny"]) == {"name", "kind", "model", "status", "trees", "steps",
                                      "records", "started_at", "finished_at"}
    only_eval = run_cli("runs", "--db", db_url, "--kind", "eval", "--json").json()
    assert [row["name"] for row in only_eval] == ["eval-tiny"]
    assert run_cli("runs", "--db", db_url, "--kind", "bogus").exit_code == 2
    monkeypatch.setenv("COLUMNS", "80")
    table = run_cli("runs", "--db", db_url)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name, holds in (("gsm8k-trees", "2 trees"), ("replay-1", "2 steps"),
                        ("eval-tiny", "2 records")):
        [row] = [line for line in lines if line.strip().startswith(name)]
        assert holds in row and "finished" in row, row


def test_a_wrong_run_name_lists_the_nearest_ones(three_kinds_of_runs, tmp_path, tiny_model_dir):
    db_url = three_kinds_of_runs
    path = tmp_path / "store.db"
    before = path.read_bytes()
    for command in (["trees", "--run", "gsm8k-tree"],
                    ["score", "--run", "gsm8k-tree"],
                    ["train", "--model", str(tiny_model_dir), "--output-dir",
                     str(tmp_path / "o2"), "--run", "gsm8k-tree"],
                    ["eval", "show", "gsm8k-tree"]):
        result = run_cli(*command, "--db", db_url)
        assert result.exit_code == 2, command
        error = result.stderr.splitlines()[-1]
        assert error.startswith("error: no run named 'gsm8k-tree' in the store; did you mean: "
                                "gsm8k-trees"), (command, error)
    far = run_cli("eval", "show", "zzz", "--db", db_url)
    assert far.stderr == ("error: no run named 'zzz' in the store; none is close among its 3 "
                          "runs (`treerpo runs` lists them)\n")
    assert path.read_bytes() == before


def test_nearest_names():
    names = ["gsm8k-trees", "train-out-1a2b3c4d", "eval-tiny"]
    assert repository.nearest_names("gsm8k_trees", names).startswith("did you mean: gsm8k-trees")
    assert repository.nearest_names("train", names).startswith("did you mean: train-out-1a2b3c4d")
    assert repository.nearest_names("x", []) == "the store has no runs yet"


def test_generate_resumes_a_run_only_with_its_settings(tiny_model_dir, gsm8k_dir, tmp_path):
    db_path = tmp_path / "store.db"
    db_url = f"sqlite:///{db_path}"
    first = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "1", "--run", "g1")
    assert first.exit_code == 0, first.stderr
    assert first.stderr.splitlines()[0] == f"store: {db_url}"
    before = db_path.read_bytes()
    changed = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--run", "g1",
                        "--max-depth", "3", "--temperature", "0.9")
    assert changed.exit_code == 2
    [store_line, error] = changed.stderr.splitlines()
    assert store_line == f"store: {db_url}"
    assert error == ("error: run 'g1' exists with other settings: --max-depth (run: 2, now: 3); "
                     "--temperature (run: 0.6, now: 0.9). Resume it with its settings, or grow "
                     "the new trees in another run (--run NEW-NAME)")
    assert db_path.read_bytes() == before
    other_model = tmp_path / "copy"
    other_model.mkdir()
    for item in tiny_model_dir.iterdir():
        (other_model / item.name).write_bytes(item.read_bytes())
    moved = _generate(other_model, gsm8k_dir, db_url, "--limit", "2", "--run", "g1")
    assert moved.exit_code == 2 and "--model (run: " in moved.stderr
    # the same settings with more problems resume the run
    resumed = _generate(tiny_model_dir, gsm8k_dir, db_url, "--limit", "2", "--run", "g1",
                        "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["already_done"] == 1 and resumed.json()["trees"] == 1
    json.loads(resumed.stdout)  # the store line went to stderr: stdout is still pure JSON


def test_writing_commands_name_the_store_first_with_the_password_masked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TREERPO_DB", raising=False)
    upgraded = run_cli("db", "upgrade")
    assert upgraded.stderr.splitlines()[0] == f"store: sqlite:///{tmp_path}/data/treerpo.db"
    scored = run_cli("score", "--json")
    assert scored.exit_code == 0 and scored.stderr.splitlines()[0].startswith("store: sqlite:///")
    assert (database.display_url("postgresql+psycopg://me:secret@db.example/trees")
            == "postgresql+psycopg://me:***@db.example/trees")


def test_read_only_commands_do_not_create_a_store(tmp_path):
    db_path = tmp_path / "sub" / "missing.db"
    for command in (["trees"], ["inspect", "1"], ["runs"], ["eval", "show", "r"]):
        result = run_cli(*command, "--db", f"sqlite:///{db_path}")
        assert result.exit_code == 2, command
        assert result.stderr.startswith(f"error: no store at sqlite:///{db_path}: "), command
    assert not db_path.parent.exists()
    # an empty file (e.g. from `touch`) is no store either, and stays empty
    db_path.parent.mkdir()
    db_path.touch()
    assert run_cli("runs", "--db", f"sqlite:///{db_path}").exit_code == 2
    assert db_path.stat().st_size == 0

"""Text from datasets and models never drives the terminal, and URL passwords are never echoed
(issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import error_lines, run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import database, repository

HOSTILE = "Solve \x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m [bold]x[/bold] 2+2"


def test_trees_escapes_control_characters_of_dataset_text(db_url, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the whole problem snippet fits its column
    store = database.open_store(db_url)
    try:
        run = repository.get_or_create_run(store, name="run\x1b[5m", kind="generate", model="m",
                                           config={})
        [problem_id] = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", 0), HOSTILE, "4")])
        tree = synthetic_tree(rng=np.random.default_rng(0), num_nodes=8)
        tree.nodes[-1].text = "done \x1b[2J"
        tree_id = repository.write_tree(store, tree=tree, run_id=run.id, problem_id=problem_id,
                                        policy_version="v")
    finally:
        store.close()
    listed = run_cli("trees", "--db", db_url)
    assert listed.exit_code == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert "\\x1b]0;owned\\x07" in listed.stdout and "run\\x1b[5m" in listed.stdout
    shown = run_cli("inspect", str(tree_id), "--db", db_url, "--full")
    assert shown.exit_code == 0 and "\x1b" not in shown.stdout


@pytest.mark.parametrize("url", [
    "postgresql+nosuchdriver://alice:s3cret@localhost/db",
    "mysql://alice:s3cret@localhost/db",
    "postgresql+psycopg://alice:s3cret@localhost:1/db",
    "postgresql+psycopg://alice:s3cret@localhost:notaport/db",
])
def test_url_passwords_are_masked_in_every_message(url):
    result = run_cli("trees", "--db", url)
    assert result.exit_code == 2, result.stderr
    assert "s3cret" not in result.stderr and "s3cret" not in result.stdout
    assert len(error_lines(result.stderr)) == 1 and "unexpected" not in result.stderr


def test_error_lines_escape_control_characters(tmp_path):
    result = run_cli("generate", "--model", str(tmp_path / "m\x1b[2J"), "--dataset", "arith",
                     "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert result.exit_code == 2 and "\x1b" not in result.stderr and "\\x1b" in result.stderr

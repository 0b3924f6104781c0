"""CLI conventions and the store commands: trees, inspect, db, bench store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import typer
from cli_runner import run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.cli import app
from treerpo.store import database, repository

NODE_KEYS = {"id", "depth", "kind", "text", "num_tokens", "token_ids", "logprobs",
             "split_entropy", "reward", "value", "advantage", "forced", "children"}


@pytest.fixture
def stored_tree(db_url):
    store = database.open_store(db_url)
    try:
        run = repository.get_or_create_run(store, name="demo-run", kind="generate", model="m",
                                           config={})
        [problem_id] = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", 0), "What is 6 * 7?", "42")])
        tree = synthetic_tree(rng=np.random.default_rng(0), num_nodes=25, prompt_len=5,
                              segment_len=4)
        tree.nodes[2].text = "evil [bold red]markup[/] \x1b[2J and 1 < 2 > 0"
        tree_id = repository.write_tree(store, tree=tree, run_id=run.id, problem_id=problem_id,
                                        policy_version="v1")
    finally:
        store.close()
    return tree_id, tree


def test_trees_json_on_an_empty_store(db_url):
    assert run_cli("db", "upgrade", "--db", db_url).exit_code == 0
    result = run_cli("trees", "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == []


def test_trees_lists_stored_trees(db_url, stored_tree, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    tree_id, tree = stored_tree
    result = run_cli("trees", "--db", db_url, "--json")
    [row] = result.json()
    assert {"tree_id", "num_nodes", "num_leaves", "scored"} <= row.keys()
    assert row["tree_id"] == tree_id
    assert row["num_nodes"] == len(tree.nodes)
    assert row["num_leaves"] == len(tree.leaves())
    assert row["scored"] is False
    table = run_cli("trees", "--db", db_url)
    assert table.exit_code == 0 and "What is 6 * 7?" in table.stdout and "demo-run" in table.stdout


def _check_node(node: dict, depth: int) -> int:
    assert set(node) == NODE_KEYS
    assert node["depth"] == depth
    assert node["num_tokens"] == len(node["token_ids"])
    assert len(node["logprobs"]) == (0 if depth == 0 else node["num_tokens"])
    assert node["reward"] is None and node["value"] is None and node["advantage"] is None
    return 1 + sum(_check_node(child, depth + 1) for child in node["children"])


def test_inspect_json_contract(db_url, stored_tree):
    tree_id, tree = stored_tree
    result = run_cli("inspect", str(tree_id), "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert set(payload) == {"tree_id", "problem", "reference", "logprob_temperature", "root"}
    assert payload["tree_id"] == tree_id
    assert payload["problem"] == "What is 6 * 7?" and payload["reference"] == "42"
    assert payload["logprob_temperature"] == 1.0
    assert payload["root"]["kind"] == "root" and payload["root"]["id"] == 0
    assert _check_node(payload["root"], 0) == len(tree.nodes)
    first_child = payload["root"]["children"][0]
    original = tree.nodes[first_child["id"]]
    assert first_child["token_ids"] == original.token_ids.tolist()
    assert np.array(first_child["logprobs"], dtype=np.float32).tobytes() == \
        original.logprobs.tobytes()


def test_inspect_renders_the_tree_and_escapes_model_text(db_url, stored_tree):
    tree_id, tree = stored_tree
    result = run_cli("inspect", str(tree_id), "--db", db_url)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(tree.nodes) + 1  # header + one line per node
    assert "[bold red]markup[/]" in result.stdout  # shown as written, not interpreted
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
    folded = run_cli("inspect", str(tree_id), "--db", db_url, "--max-depth", "1")
    assert all(" d2 " not in line and " d3 " not in line for line in folded.stdout.splitlines())
    assert "below depth 1" in folded.stdout


def test_unknown_tree_id_exit_2(db_url, stored_tree):
    result = run_cli("inspect", "999", "--db", db_url)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no tree with id 999 in the store"
    assert "Traceback" not in result.stderr


def test_dash_and_snake_case_flags_and_env(db_url, stored_tree, monkeypatch):
    tree_id, _ = stored_tree
    dash = run_cli("inspect", str(tree_id), "--db", db_url, "--max-depth", "1")
    snake = run_cli("inspect", str(tree_id), "--db", db_url, "--max_depth", "1")
    assert dash.exit_code == snake.exit_code == 0 and dash.stdout == snake.stdout
    monkeypatch.setenv("TREERPO_DB", db_url)
    assert run_cli("trees", "--json").json()[0]["tree_id"] == tree_id


def test_malformed_db_url_exit_2():
    result = run_cli("trees", "--db", "sqlite:/:/not a url::")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: malformed --db URL") and result.stderr.count("\n") == 1


def test_not_a_database_exit_2_unchanged(tmp_path):
    path = tmp_path / "photo.db"
    path.write_bytes(bytes(range(256)) * 8)
    before = path.read_bytes()
    result = run_cli("trees", "--db", f"sqlite:///{path}")
    assert result.exit_code == 2 and "not a SQLite database" in result.stderr
    assert path.read_bytes() == before


def test_newer_store_exit_2_unchanged(db_url, tmp_path):
    assert run_cli("db", "upgrade", "--db", db_url).exit_code == 0
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'zzzz9999'")
    before = path.read_bytes()
    for command in (["trees"], ["inspect", "1"], ["db", "upgrade"]):
        result = run_cli(*command, "--db", db_url)
        assert result.exit_code == 2, command
        assert "zzzz9999" in result.stderr and "newer" in result.stderr
        assert result.stderr.count("\n") == 1
    assert path.read_bytes() == before
    assert run_cli("db", "current", "--db", db_url).stdout.startswith("zzzz9999")


def test_db_upgrade_and_current(db_url):
    assert run_cli("db", "current", "--db", db_url).stdout.strip() == "none"
    assert run_cli("db", "upgrade", "--db", db_url).exit_code == 0
    assert run_cli("db", "current", "--db", db_url).stdout.strip() == database.head_revision()


def test_default_store_folder_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TREERPO_DB", raising=False)
    assert run_cli("db", "upgrade").exit_code == 0
    assert (tmp_path / "data" / "treerpo.db").exists()
    assert run_cli("trees", "--json").json() == []


def test_usage_errors_are_one_line_exit_2(db_url):
    for args in (["trees", "--no-such-flag"], ["no-such-command"], ["inspect", "abc"],
                 ["trees", "--limit", "0", "--db", db_url]):
        result = run_cli(*args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args


def _all_commands(group: typer.Typer, prefix: list[str]):
    command = typer.main.get_command(group)
    for name, sub in command.commands.items():
        if hasattr(sub, "commands"):
            yield from ((prefix + [name, n]) for n in sub.commands)
        else:
            yield prefix + [name]


def test_every_command_has_help_with_an_example():
    commands = list(_all_commands(app, []))
    assert ["inspect"] in commands and ["db", "current"] in commands
    for command in commands:
        result = run_cli(*command, "--help")
        assert result.exit_code == 0, command
        assert "Example" in result.stdout, command


def test_bench_store_json_shape():
    result = run_cli("bench", "store", "--num-trees", "3", "--nodes-per-tree", "20",
                     "--inspect-nodes", "200", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert set(payload) == {"nodes_per_second", "inspect_seconds", "num_nodes"}
    assert payload["num_nodes"] >= 200 and payload["nodes_per_second"] > 0

"""`treerpo score` on stored trees: rewards, values, advantages, idempotence, plug-ins, errors."""

from __future__ import annotations

import sqlite3
import sys

import numpy as np
import pytest
from cli_runner import run_cli

from treerpo.store import database, repository
from treerpo.trees import build_tree

# root ─┬─ a "x = 6*7." ─┬─ leaf "\boxed{42}"      (correct)
#       │                └─ leaf "\boxed{41}"      (wrong)
#       └─ b "guess"  ───── leaf "\boxed{42.0}"    (correct, single child of b)
TEXTS = ["<prompt>", "x = 6*7. ", "so \\boxed{42}", "so \\boxed{41}", "guess ", "\\boxed{42.0}"]
PARENTS = [None, 0, 1, 1, 0, 4]
KINDS = ["root", "split", "leaf", "leaf", "split", "leaf"]


def _write_trees(db_url: str, count: int = 2) -> list[int]:
    store = database.open_store(db_url)
    try:
        run = repository.get_or_create_run(store, name="hand", kind="generate", model="m",
                                           config={})
        ids = []
        for row in range(count):
            [problem_id] = repository.upsert_problems(
                store, [(repository.ProblemKey("hand", "train", row), "6*7?", "42")])
            tree = build_tree(parents=PARENTS, kinds=KINDS,
                              token_ids=[np.arange(3) for _ in TEXTS],
                              logprobs=[np.zeros(0)] + [np.zeros(3) for _ in TEXTS[1:]],
                              texts=TEXTS)
            ids.append(repository.write_tree(store, tree=tree, run_id=run.id,
                                             problem_id=problem_id, policy_version="v"))
        return ids
    finally:
        store.close()


def _node(tree_json: dict, node_id: int) -> dict:
    stack = [tree_json["root"]]
    while stack:
        node = stack.pop()
        if node["id"] == node_id:
            return node
        stack.extend(node["children"])
    raise KeyError(node_id)


def test_score_fills_rewards_values_advantages(db_url):
    [tree_id, _] = _write_trees(db_url)
    result = run_cli("score", "--db", db_url, "--json")
    assert result.exit_code == 0, result.stderr
    stats = result.json()
    assert stats["trees"] == 2 and stats["leaves"] == 6
    assert stats["mean_reward"] == pytest.approx(2 / 3)
    tree = run_cli("inspect", str(tree_id), "--db", db_url, "--json").json()
    assert [_node(tree, i)["reward"] for i in (2, 3, 5)] == [1.0, 0.0, 1.0]
    assert _node(tree, 1)["value"] == 0.5 and _node(tree, 4)["value"] == 1.0
    assert tree["root"]["value"] == pytest.approx(2 / 3)  # mean of leaves, not of children (0.75)
    assert _node(tree, 1)["advantage"] == -0.25 and _node(tree, 4)["advantage"] == 0.25
    assert _node(tree, 2)["advantage"] == 0.5 and _node(tree, 3)["advantage"] == -0.5
    assert _node(tree, 5)["advantage"] is None  # single child: no signal
    assert tree["root"]["advantage"] is None
    assert all(row["scored"] for row in run_cli("trees", "--db", db_url, "--json").json())


def test_score_is_idempotent_and_rescore_restricts(db_url, tmp_path, monkeypatch):
    tree_ids = _write_trees(db_url)
    assert run_cli("score", "--db", db_url).exit_code == 0
    again = run_cli("score", "--db", db_url, "--json")
    assert again.json()["trees"] == 0
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text("def always_one(*, completion, reference, problem):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rescored = run_cli("score", "--db", db_url, "--rescore", "--tree-id", str(tree_ids[1]),
                       "--reward-fn", "my_rewards:always_one", "--json")
    assert rescored.exit_code == 0, rescored.stderr
    assert rescored.json()["trees"] == 1 and rescored.json()["mean_reward"] == 1.0
    first = run_cli("inspect", str(tree_ids[0]), "--db", db_url, "--json").json()
    second = run_cli("inspect", str(tree_ids[1]), "--db", db_url, "--json").json()
    assert _node(first, 3)["reward"] == 0.0 and _node(second, 3)["reward"] == 1.0
    assert _node(second, 1)["advantage"] == 0.0


def _file_bytes(db_url: str) -> bytes:
    path = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:  # fold the WAL into the file before comparing
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return open(path, "rb").read()


@pytest.mark.parametrize(
    ("source", "spec", "exit_code", "message"),
    [
        (None, "no_such_module_xyz:fn", 2, "no_such_module_xyz"),
        ("def f(**kw):\n    return 0.5\n", "plug_missing:g", 2, "plug_missing:g"),
        ("def f(*, completion, reference, problem):\n    raise ValueError('boom')\n",
         "plug_raises:f", 1, "plug_raises:f"),
        ("def f(*, completion, reference, problem):\n    return 1.5\n",
         "plug_range:f", 1, "plug_range:f"),
    ],
)
def test_plugin_errors_leave_the_store_unchanged(db_url, tmp_path, monkeypatch, source, spec,
                                                 exit_code, message):
    _write_trees(db_url)
    if source is not None:
        (tmp_path / f"{spec.split(':')[0]}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _file_bytes(db_url)
    result = run_cli("score", "--db", db_url, "--reward-fn", spec)
    assert result.exit_code == exit_code, result.stderr
    # one error line, after the store line when the store was opened
    *before_error, error = result.stderr.splitlines()
    assert [line.split(":")[0] for line in before_error] in ([], ["store"])
    assert message in error and error.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert _file_bytes(db_url) == before
    for name in ("plug_missing", "plug_raises", "plug_range"):
        sys.modules.pop(name, None)


def test_unknown_tree_id_exit_2(db_url):
    _write_trees(db_url, count=1)
    result = run_cli("score", "--db", db_url, "--tree-id", "77")
    assert result.exit_code == 2 and "no tree with id 77" in result.stderr

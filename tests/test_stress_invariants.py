"""The stress suite's invariant checker (tests/stress/invariants.py) finds what it looks for."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import database, repository

sys.path.insert(0, str(Path(__file__).resolve().parent / "stress"))
from invariants import check_store  # noqa: E402


def _store(path: Path) -> str:
    url = f"sqlite:///{path}"
    store = database.open_store(url)
    try:
        run = repository.get_or_create_run(store, name="r", kind="generate", model="m", config={})
        ids = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", row), f"p{row}", "1")
                    for row in range(2)])
        repository.write_trees(store, trees=[synthetic_tree(rng=np.random.default_rng(row),
                                                            num_nodes=20) for row in range(2)],
                               run_id=run.id, problem_ids=ids, policy_version="v")
    finally:
        store.close()
    return url


def test_a_healthy_store_has_no_violations(tmp_path):
    assert check_store(_store(tmp_path / "s.db")) == []


def test_each_kind_of_damage_is_reported(tmp_path):
    url = _store(tmp_path / "s.db")
    with sqlite3.connect(tmp_path / "s.db") as connection:
        connection.execute("PRAGMA foreign_keys=OFF")
        leaf = connection.execute(
            "SELECT node_index FROM nodes n WHERE tree_id = 1 AND NOT EXISTS (SELECT 1 FROM nodes "
            "c WHERE c.tree_id = 1 AND c.parent_index = n.node_index) LIMIT 1").fetchone()[0]
        connection.execute("DELETE FROM nodes WHERE tree_id = 1 AND node_index = ?", (leaf,))
        connection.execute("UPDATE trees SET scored = 1 WHERE id = 2")
        connection.execute("UPDATE nodes SET tree_id = 99 WHERE tree_id = 2 AND node_index = 0")
        connection.execute("UPDATE runs SET status = 'weird'")
    found = " | ".join(check_store(url))
    for expected in ("counts do not match", "leaf count", "orphan nodes (no tree)",
                     "orphan nodes (no parent)", "scored trees with unscored nodes",
                     "unknown status"):
        assert expected in found, found

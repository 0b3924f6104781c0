"""The tree store: migrations, round trips, bulk score updates, refusal of bad stores."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError

from treerpo.bench.synthetic import synthetic_tree
from treerpo.errors import BadInputError
from treerpo.store import database, repository
from treerpo.store.models import Base
from treerpo.trees import build_tree


def _stored_problem(store, row: int = 0) -> tuple[int, int]:
    run = repository.get_or_create_run(store, name="run", kind="generate", model="m", config={})
    [problem_id] = repository.upsert_problems(
        store, [(repository.ProblemKey("ds", "train", row), f"problem {row}", "42")])
    return run.id, problem_id


def test_single_head_and_upgrade_from_empty(db_url):
    script = database.script_directory()
    assert len(script.get_heads()) == 1
    assert database.current_revision(db_url) is None
    store = database.open_store(db_url)
    try:
        assert database.current_revision(db_url) == database.head_revision()
        tables = set(sa_inspect(store.engine).get_table_names())
        assert {"problems", "runs", "trees", "nodes", "train_steps", "eval_results"} <= tables
    finally:
        store.close()


def test_models_and_migrations_agree(db_url):
    store = database.open_store(db_url)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        store.close()


def test_sqlite_settings(db_url):
    store = database.open_store(db_url)
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        store.close()


def _random_tree(rng: np.random.Generator, num_nodes: int):
    parents = [None] + [int(rng.integers(0, index)) for index in range(1, num_nodes)]
    children = {parent for parent in parents if parent is not None}
    kinds = ["root"] + ["split" if i in children else "leaf" for i in range(1, num_nodes)]
    lengths = rng.integers(1, 40, size=num_nodes)
    return build_tree(
        parents=parents,
        kinds=kinds,
        token_ids=[rng.integers(0, 2**31 - 1, size=n) for n in lengths],
        logprobs=[np.zeros(0)]
        + [rng.standard_normal(n).astype(np.float32) * 10 for n in lengths[1:]],
        texts=[f"segment {i} [bold]x[/] \\boxed{{{i}}}" for i in range(num_nodes)],
        split_entropies=[float(rng.random()) if k == "split" else None for k in kinds],
        finish_reasons=[("eos" if rng.random() < 0.5 else "budget") if k == "leaf" else None
                        for k in kinds],
        forced=[index > 0 and rng.random() < 0.3 for index in range(num_nodes)],
        logprob_temperature=0.7,
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_nodes=st.integers(1, 60))
def test_round_trip_of_a_random_tree_is_bit_exact(tmp_path_factory, seed, num_nodes):
    rng = np.random.default_rng(seed)
    tree = _random_tree(rng, num_nodes)
    url = f"sqlite:///{tmp_path_factory.mktemp('rt') / 'store.db'}"
    store = database.open_store(url)
    try:
        run_id, problem_id = _stored_problem(store)
        tree_id = repository.write_tree(store, tree=tree, run_id=run_id, problem_id=problem_id,
                                        policy_version="v1")
        loaded = repository.load_tree(store, tree_id)
    finally:
        store.close()
    assert loaded.tree_id == tree_id and loaded.problem == "problem 0" and loaded.reference == "42"
    assert loaded.logprob_temperature == 0.7
    assert len(loaded.nodes) == len(tree.nodes)
    for original, back in zip(tree.nodes, loaded.nodes, strict=True):
        assert (back.index, back.parent, back.depth, back.ordinal, back.kind) == (
            original.index, original.parent, original.depth, original.ordinal, original.kind)
        assert back.children == original.children
        assert back.token_ids.dtype == np.int32 and back.logprobs.dtype == np.float32
        assert back.token_ids.tobytes() == original.token_ids.tobytes()
        assert back.logprobs.tobytes() == original.logprobs.tobytes()
        assert back.text == original.text
        assert back.split_entropy == original.split_entropy
        assert back.finish_reason == original.finish_reason
        assert back.forced is original.forced


def test_problems_are_stored_once(db_url):
    store = database.open_store(db_url)
    try:
        keys = [(repository.ProblemKey("ds", "train", i), f"p{i}", str(i)) for i in range(3)]
        first = repository.upsert_problems(store, keys)
        again = repository.upsert_problems(store, keys + [
            (repository.ProblemKey("ds", "test", 0), "other split", "9")])
        assert again[:3] == first and len(set(again)) == 4
    finally:
        store.close()


def test_update_scores_in_bulk_and_list(db_url):
    store = database.open_store(db_url)
    try:
        run_id, problem_id = _stored_problem(store)
        tree = synthetic_tree(rng=np.random.default_rng(1), num_nodes=40)
        tree_id = repository.write_tree(store, tree=tree, run_id=run_id, problem_id=problem_id,
                                        policy_version="v1")
        [summary] = repository.list_trees(store)
        assert (summary.tree_id, summary.scored, summary.num_nodes) == (tree_id, False, 41)
        for node in tree.nodes:
            node.value = node.index / 100
            node.advantage = -node.index / 100 if node.parent is not None else None
            node.reward = 1.0 if node.is_leaf else None
        repository.update_scores(store, trees=[tree], reward_fn="default")
        loaded = repository.load_tree(store, tree_id)
        assert [n.value for n in loaded.nodes] == [n.index / 100 for n in tree.nodes]
        assert loaded.nodes[0].advantage is None and loaded.nodes[1].advantage == -0.01
        assert loaded.scored
        assert repository.list_trees(store, scored=True)[0].mean_reward == 1.0
    finally:
        store.close()


def test_a_failed_write_leaves_no_tree(db_url):
    store = database.open_store(db_url)
    try:
        run_id, problem_id = _stored_problem(store)
        _, other_problem_id = _stored_problem(store, row=1)
        good = synthetic_tree(rng=np.random.default_rng(2), num_nodes=10)
        bad = synthetic_tree(rng=np.random.default_rng(3), num_nodes=10)
        bad.nodes[5].parent = 999  # violates the parent foreign key
        with pytest.raises(IntegrityError):
            repository.write_trees(store, trees=[good, bad], run_id=run_id,
                                   problem_ids=[problem_id, other_problem_id], policy_version="v")
        assert repository.count_trees(store) == 0
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM nodes").scalar() == 0
    finally:
        store.close()


def test_unknown_tree_id_is_bad_input(db_url):
    store = database.open_store(db_url)
    try:
        with pytest.raises(BadInputError, match="no tree with id 7"):
            repository.load_tree(store, 7)
    finally:
        store.close()


def test_not_a_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(BadInputError, match="not a SQLite database"):
        database.open_store(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_newer_revision_is_refused_untouched(db_url, tmp_path):
    database.open_store(db_url).close()
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    before = path.read_bytes()
    with pytest.raises(BadInputError, match="ffff_from_the_future.*newer"):
        database.open_store(db_url)
    assert path.read_bytes() == before


def test_malformed_url_is_bad_input():
    with pytest.raises(BadInputError, match="malformed"):
        database.open_store("sqlite:/:/not a url::")
    with pytest.raises(BadInputError, match="unsupported"):
        database.open_store("mysql://localhost/x")

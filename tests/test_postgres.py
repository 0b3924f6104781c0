"""The same store on PostgreSQL: runs when TREERPO_TEST_POSTGRES_URL names a server
(`.ci/run` starts one when PostgreSQL is installed), e.g. postgresql+psycopg://postgres@localhost:54329/postgres.
Each test gets a fresh database, dropped afterwards."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from cli_runner import run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import database, repository

SERVER_URL = os.environ.get("TREERPO_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(SERVER_URL is None, reason="TREERPO_TEST_POSTGRES_URL not set")


@pytest.fixture
def pg_url():
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"treerpo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_round_trip_and_scores_on_postgres(pg_url):
    store = database.open_store(pg_url)
    try:
        assert database.current_revision(pg_url) == database.head_revision()
        run = repository.get_or_create_run(store, name="pg", kind="generate", model="m",
                                           config={})
        [problem_id] = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", 0), "p\x00roblem", "42")])
        tree = synthetic_tree(rng=np.random.default_rng(0), num_nodes=30)
        tree.nodes[3].text = "nul \x00 byte"
        [tree_id] = repository.write_trees(store, trees=[tree], run_id=run.id,
                                           problem_ids=[problem_id], policy_version="v")
        loaded = repository.load_tree(store, tree_id)
        for original, back in zip(tree.nodes, loaded.nodes, strict=True):
            assert back.token_ids.tobytes() == original.token_ids.tobytes()
            assert back.logprobs.tobytes() == original.logprobs.tobytes()
        assert loaded.nodes[3].text == "nul \ufffd byte"
    finally:
        store.close()


def test_generate_score_inspect_on_postgres(pg_url, tiny_model_dir, gsm8k_dir):
    generated = run_cli("generate", "--model", str(tiny_model_dir), "--dataset",
                        str(gsm8k_dir / "test.jsonl"), "--limit", "2", "--max-new-tokens", "24",
                        "--min-segment-len", "6", "--coverage-min-chars", "10", "--db", pg_url,
                        "--json")
    assert generated.exit_code == 0, generated.stderr
    assert run_cli("score", "--db", pg_url).exit_code == 0
    trees = run_cli("trees", "--db", pg_url, "--json").json()
    assert len(trees) == 2 and all(row["scored"] for row in trees)
    tree = run_cli("inspect", str(trees[0]["tree_id"]), "--db", pg_url, "--json").json()
    assert tree["reference"] == "18" and tree["root"]["value"] == 0.0


def test_unknown_revision_refused_on_postgres(pg_url):
    from sqlalchemy import create_engine, text

    database.open_store(pg_url).close()
    engine = create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'zzzz9999'"))
    engine.dispose()
    result = run_cli("trees", "--db", pg_url)
    assert result.exit_code == 2 and "zzzz9999" in result.stderr

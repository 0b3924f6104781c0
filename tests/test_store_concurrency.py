"""Several processes on one store: opening a new store, creating the same run and problems,
storing the same trees. No race crashes a process or loses a tree (issue 16)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from cli_runner import error_lines, run_cli

from treerpo.bench.synthetic import synthetic_tree
from treerpo.errors import BadInputError
from treerpo.store import database, repository

ROOT = Path(__file__).resolve().parents[1]
SMALL_TREE = ["--max-new-tokens", "24", "--min-segment-len", "8", "--max-depth", "2",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5",
              "--root-children", "2"]

# Each process waits for the same start instant, then does one store operation.
_RACER = """
import sys, time
sys.path.insert(0, {root!r})
from treerpo.store import database, repository
from treerpo.bench.synthetic import synthetic_tree
import numpy as np
start, url, what = float(sys.argv[1]), sys.argv[2], sys.argv[3]
while time.time() < start:
    pass
store = database.open_store(url)
if what == "write":
    run = repository.get_or_create_run(store, name="race", kind="generate", model="m", config={{}})
    keys = [(repository.ProblemKey("ds", "train", row), f"problem {{row}}", "1")
            for row in range(8)]
    ids = repository.upsert_problems(store, keys)
    trees = [synthetic_tree(rng=np.random.default_rng(row), num_nodes=20) for row in range(8)]
    print(repository.write_trees(store, trees=trees, run_id=run.id, problem_ids=ids,
                                 policy_version="v"))
store.close()
print("ok")
"""


def _race(tmp_path: Path, url: str, what: str,
          processes: int = 3) -> list[subprocess.CompletedProcess]:
    script = tmp_path / "racer.py"
    script.write_text(_RACER.format(root=str(ROOT)))
    start = time.time() + 4.0  # every interpreter has started by then
    running = [subprocess.Popen([sys.executable, str(script), str(start), url, what],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    return [subprocess.CompletedProcess(p.args, p.wait(120), *p.communicate()) for p in running]


@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_openers_of_a_new_store_all_succeed(tmp_path, attempt):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    results = _race(tmp_path, url, "open")
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
    assert database.current_revision(url) == database.head_revision()


def test_concurrent_writers_of_the_same_run_share_each_tree(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    results = _race(tmp_path, url, "write")
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
    # Every process reports the same 8 tree ids: one tree per problem, whoever stored it.
    reported = {r.stdout.splitlines()[0] for r in results}
    assert len(reported) == 1
    with sqlite3.connect(tmp_path / "race.db") as connection:
        assert connection.execute("SELECT count(*) FROM trees").fetchone()[0] == 8
        assert connection.execute("SELECT count(*) FROM problems").fetchone()[0] == 8
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert connection.execute("SELECT count(*) FROM nodes").fetchone()[0] == (
            connection.execute("SELECT sum(num_nodes) FROM trees").fetchone()[0])


def test_a_tree_stored_by_another_process_is_skipped_as_done(db_url):
    store = database.open_store(db_url)
    try:
        run = repository.get_or_create_run(store, name="r", kind="generate", model="m", config={})
        [problem_id] = repository.upsert_problems(
            store, [(repository.ProblemKey("ds", "train", 0), "p", "1")])
        first = synthetic_tree(rng=np.random.default_rng(0), num_nodes=12)
        second = synthetic_tree(rng=np.random.default_rng(1), num_nodes=30)
        [first_id] = repository.write_trees(store, trees=[first], run_id=run.id,
                                            problem_ids=[problem_id], policy_version="v")
        [second_id] = repository.write_trees(store, trees=[second], run_id=run.id,
                                             problem_ids=[problem_id], policy_version="v")
        assert second_id == first_id
        assert len(repository.load_tree(store, first_id).nodes) == len(first.nodes)
        assert len(first.nodes) != len(second.nodes)
    finally:
        store.close()


def test_a_changed_dataset_row_is_refused_and_nothing_is_written(db_url):
    store = database.open_store(db_url)
    try:
        key = repository.ProblemKey("data.jsonl", "train", 3)
        [problem_id] = repository.upsert_problems(store, [(key, "What is 2+2?", "4")])
        with pytest.raises(BadInputError, match="row 3 of data.jsonl .* different problem text"):
            repository.upsert_problems(store, [(repository.ProblemKey("data.jsonl", "train", 4),
                                                "new", "1"), (key, "What is 2+3?", "5")])
        with pytest.raises(BadInputError, match="different reference answer"):
            repository.check_problems_unchanged(store, [(key, "What is 2+2?", "5")])
        assert repository.upsert_problems(store, [(key, "What is 2+2?", "4")]) == [problem_id]
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM problems").scalar() == 1
    finally:
        store.close()


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return list(connection.iterdump())


def _generate(model_dir, dataset, db_url, *extra):
    return run_cli("generate", "--model", str(model_dir), "--dataset", str(dataset),
                   "--db", db_url, "--engine", "hf", *SMALL_TREE, *extra)


def test_generate_on_an_edited_dataset_file_is_refused_untouched(tiny_model_dir, tmp_path):
    dataset = tmp_path / "data.jsonl"
    rows = [{"question": f"What is {n}+1?", "answer": f"#### {n + 1}"} for n in range(2)]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    assert _generate(tiny_model_dir, dataset, db_url, "--run", "a").exit_code == 0
    rows[1]["question"] = "What is 100+1?"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = _dump(tmp_path / "store.db")
    result = _generate(tiny_model_dir, dataset, db_url, "--run", "b")
    assert result.exit_code == 2
    assert "row 1 of" in result.stderr and len(error_lines(result.stderr)) == 1
    assert _dump(tmp_path / "store.db") == before


def _trees_by_problem(db_url: str, run: str) -> dict[int, dict]:
    listed = run_cli("trees", "--db", db_url, "--run", run, "--json").json()
    trees = {}
    for item in listed:
        tree = run_cli("inspect", str(item["tree_id"]), "--db", db_url, "--json").json()
        trees[tree["problem"]] = tree["root"]
    return trees


def test_a_resumed_generate_grows_the_trees_of_an_uninterrupted_run(
        tiny_model_dir, gsm8k_dir, tmp_path):
    dataset = gsm8k_dir / "test.jsonl"
    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    resumed = f"sqlite:///{tmp_path / 'resumed.db'}"
    flags = ("--run", "same", "--batch-size", "2", "--seed", "5")
    assert _generate(tiny_model_dir, dataset, whole, "--limit", "4", *flags).exit_code == 0
    # Interrupted after the first batch (batches are written all or none), then resumed.
    assert _generate(tiny_model_dir, dataset, resumed, "--limit", "2", *flags).exit_code == 0
    result = _generate(tiny_model_dir, dataset, resumed, "--limit", "4", *flags, "--json")
    assert result.exit_code == 0 and result.json()["already_done"] == 2
    assert _trees_by_problem(resumed, "same") == _trees_by_problem(whole, "same")


def test_a_failed_generate_marks_its_run_failed(tiny_model_dir, gsm8k_dir, db_url, monkeypatch):
    from treerpo.growth import runner

    def broken(**_):
        raise RuntimeError("engine fell over")

    monkeypatch.setattr(runner, "grow_and_store", broken)
    result = _generate(tiny_model_dir, gsm8k_dir / "test.jsonl", db_url, "--limit", "1",
                       "--run", "doomed")
    assert result.exit_code == 1
    store = database.open_store(db_url)
    try:
        assert repository.find_run(store, "doomed").status == "failed"
    finally:
        store.close()


POSTGRES_SERVER = os.environ.get("TREERPO_TEST_POSTGRES_URL")


@pytest.mark.skipif(POSTGRES_SERVER is None, reason="TREERPO_TEST_POSTGRES_URL not set")
def test_concurrent_openers_and_writers_on_postgres(tmp_path):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"treerpo_race_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    try:
        results = _race(tmp_path, url, "write")
        assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
        assert len({r.stdout.splitlines()[0] for r in results}) == 1
        check = create_engine(url)
        with check.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM trees")).scalar() == 8
            assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 1
        check.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

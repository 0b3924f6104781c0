"""Several `treerpo generate` processes on one run share its problems through leased claims
(issue 15): exactly one tree per problem, every worker does some of the work, and a worker
killed mid-tree leaves its batch to the others once its lease runs out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from treerpo.store.database import open_store
from treerpo.store.models import ClaimRow, NodeRow, ProblemRow, TreeRow

ROOT = Path(__file__).resolve().parents[1]
# Trees big enough that one takes longer than the workers' skew once the start gate opens.
TREE = ["--max-new-tokens", "48", "--min-segment-len", "8", "--max-depth", "3",
        "--coverage-min-chars", "10", "--entropy-threshold", "0.5", "--root-children", "2"]
POSTGRES_SERVER = os.environ.get("TREERPO_TEST_POSTGRES_URL")


def _worker(tiny_model_dir, gsm8k_dir, db_url, name, *extra,
            gate: Path | None = None) -> subprocess.Popen:
    """A `treerpo generate` process; with `gate`, its first claim waits at the start gate of
    tests/gated_generate.py."""
    launcher = ["-m", "treerpo.cli"] if gate is None else [str(ROOT / "tests" /
                                                              "gated_generate.py"), str(gate)]
    command = [sys.executable, *launcher, "generate", "--model", str(tiny_model_dir),
               "--dataset", str(gsm8k_dir / "test.jsonl"), "--limit", "9", "--batch-size", "1",
               "--run", "shared", "--db", db_url, "--worker-name", name, "--engine", "hf",
               "--json", *TREE, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def _check_store(db_url: str) -> Counter:
    """Exactly one complete tree per problem; returns the trees per worker."""
    store = open_store(db_url, create=False)
    try:
        with store.session() as session:
            trees = session.execute(select(TreeRow.id, TreeRow.problem_id, TreeRow.worker,
                                           TreeRow.num_nodes)).all()
            nodes = dict(session.execute(select(NodeRow.tree_id, func.count())
                                         .group_by(NodeRow.tree_id)).all())
            claims_left = session.scalar(select(func.count()).select_from(ClaimRow))
    finally:
        store.close()
    assert len(trees) == 9 and len({problem for _, problem, _, _ in trees}) == 9
    assert all(nodes.get(tree_id) == num_nodes for tree_id, _, _, num_nodes in trees)
    assert claims_left == 0  # every finished worker released its claims
    return Counter(worker for _, _, worker, _ in trees)


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    name = f"treerpo_workers_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    from sqlalchemy.engine import make_url

    try:
        yield make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _open_gate_when_ready(gate: Path, names: list[str], workers: list[subprocess.Popen]) -> None:
    """Open the start gate once every worker waits at it (a worker that died is reported by
    the caller through its exit code)."""
    deadline = time.monotonic() + 300
    while not all((gate / f"{name}.ready").exists() for name in names):
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            break
        time.sleep(0.05)
    (gate / "go").touch()


def _three_workers_share(tiny_model_dir, gsm8k_dir, db_url, gate: Path) -> None:
    open_store(db_url).close()  # the store exists before the workers race for it
    # Model loading takes seconds and varies across processes: without the gate, the first
    # worker to load can grow all nine trees before the last one claims (CI saw it).
    names = [f"w{index}" for index in range(3)]
    gate.mkdir()
    workers = [_worker(tiny_model_dir, gsm8k_dir, db_url, name, gate=gate) for name in names]
    _open_gate_when_ready(gate, names, workers)
    results = [_finish(worker) for worker in workers]
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    per_worker = _check_store(db_url)
    assert set(per_worker) == {"w0", "w1", "w2"}, per_worker  # each worker grew >= 1 tree
    assert sum(per_worker.values()) == 9


def test_three_workers_share_nine_problems_on_sqlite(tiny_model_dir, gsm8k_dir, tmp_path):
    _three_workers_share(tiny_model_dir, gsm8k_dir, f"sqlite:///{tmp_path / 'store.db'}",
                         tmp_path / "gate")


@pytest.mark.skipif(POSTGRES_SERVER is None, reason="TREERPO_TEST_POSTGRES_URL not set")
def test_three_workers_share_nine_problems_on_postgres(tiny_model_dir, gsm8k_dir, tmp_path):
    with _postgres_database() as url:
        _three_workers_share(tiny_model_dir, gsm8k_dir, url, tmp_path / "gate")


def test_a_killed_workers_batch_is_taken_over_after_its_lease(tiny_model_dir, gsm8k_dir,
                                                              tmp_path):
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(db_url).close()
    doomed = _worker(tiny_model_dir, gsm8k_dir, db_url, "doomed", "--lease-seconds", "4")
    store = open_store(db_url, create=False)
    try:
        deadline = time.monotonic() + 120
        held = 0
        while not held and time.monotonic() < deadline and doomed.poll() is None:
            with store.session() as session:
                held = session.scalar(select(func.count()).select_from(ClaimRow)
                                      .where(ClaimRow.worker == "doomed"))
            time.sleep(0.05)
    finally:
        store.close()
    assert held, "the first worker never claimed a batch"
    doomed.send_signal(signal.SIGKILL)  # mid-tree: it holds a claim it will never release
    doomed.communicate()
    store = open_store(db_url, create=False)
    try:
        with store.session() as session:
            stale = session.execute(select(ClaimRow.batch_index, ClaimRow.lease_until)
                                    .where(ClaimRow.worker == "doomed")).all()
    finally:
        store.close()
    assert stale  # the killed worker's claim outlives it

    others = [_worker(tiny_model_dir, gsm8k_dir, db_url, name, "--lease-seconds", "4")
              for name in ("a", "b")]
    results = [_finish(worker) for worker in others]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    per_worker = _check_store(db_url)
    assert per_worker["a"] + per_worker["b"] >= 1
    # With --batch-size 1, batch i is dataset row i: its tree was grown by a survivor, and only
    # once the killed worker's lease had run out.
    store = open_store(db_url, create=False)
    try:
        with store.session() as session:
            for batch_index, lease_until in stale:
                worker, created_at = session.execute(
                    select(TreeRow.worker, TreeRow.created_at)
                    .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
                    .where(ProblemRow.row_index == batch_index)).one()
                if worker == "doomed":  # killed after storing the batch, before releasing it
                    continue
                assert worker in ("a", "b")
                assert created_at.replace(tzinfo=None) >= lease_until.replace(tzinfo=None)
    finally:
        store.close()

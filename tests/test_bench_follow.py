"""`treerpo bench follow`: both arms train the same steps from the shipped policy."""

from __future__ import annotations

import pytest
from cli_runner import run_cli


def test_bench_follow_runs_both_arms_for_the_same_steps():
    result = run_cli("bench", "follow", "--steps", "2", "--trees-per-step", "2",
                     "--max-new-tokens", "40", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    chained, follow = report["arms"]
    assert chained["arm"] == "chained" and follow["arm"] == "follow 1g K=1"
    assert chained["steps"] == follow["steps"] == 2
    assert chained["trees_trained"] == chained["trees_grown"] == 4
    assert follow["trees_trained"] == 4 and follow["trees_grown"] >= 4
    assert 0.0 <= follow["staleness_mean"] <= 1.0
    assert report["speedup"] == pytest.approx(
        chained["wall_seconds"] / follow["wall_seconds"], abs=0.01)


def test_bench_follow_grows_with_the_arith_tasks_tree_and_sampling_settings(tmp_path):
    """The flags both arms pass reach `generate` as the task profile's settings, multi-character
    delimiters included."""
    from treerpo.bench.follow_bench import _tree_flags
    from treerpo.bench.tasks import task_settings
    from treerpo.bench.workers_bench import SHIPPED_POLICY
    from treerpo.store import repository
    from treerpo.store.database import open_store

    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    result = run_cli("generate", "--model", str(SHIPPED_POLICY), "--dataset", "arith",
                     "--limit", "1", "--run", "flags", "--db", db_url, "--engine", "hf",
                     *_tree_flags(40), "--json")
    assert result.exit_code == 0, result.stderr
    store = open_store(db_url)
    try:
        config = repository.find_run(store, "flags").config
    finally:
        store.close()
    task = task_settings("arith")
    assert config["tree"] == {**task.tree.model_dump(mode="json"), "max_new_tokens": 40}
    assert config["sampling"] == task.sampling.model_dump(mode="json")

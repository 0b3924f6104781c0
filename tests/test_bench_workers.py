"""`treerpo bench workers`: every round grows the whole run, shared by its processes."""

from __future__ import annotations

import pytest
from cli_runner import error_lines, run_cli


def test_bench_workers_rounds_grow_every_problem_once():
    result = run_cli("bench", "workers", "--workers", "1,2", "--problems", "4",
                     "--max-new-tokens", "24", "--json")
    assert result.exit_code == 0, result.stderr
    rounds = result.json()
    assert [r["workers"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["trees"] == 4 == sum(r["trees_per_worker"].values())
        assert set(r["trees_per_worker"]) <= {f"w{index}" for index in range(r["workers"])}
        assert r["trees_per_second"] == pytest.approx(r["trees"] / r["wall_seconds"], rel=0.02)
        assert 0.0 < r["store_share"] < 1.0


@pytest.mark.parametrize("workers", ["1,x", "0", "17", ""])
def test_bench_workers_refuses_bad_counts(workers):
    result = run_cli("bench", "workers", "--workers", workers, "--problems", "1")
    assert result.exit_code == 2
    assert error_lines(result.stderr)[0].startswith("error: --workers")

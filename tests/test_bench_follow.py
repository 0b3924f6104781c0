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

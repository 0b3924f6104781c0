"""`treerpo bench learn` at a tiny scale: both methods run and report comparable budgets."""

from __future__ import annotations

from cli_runner import run_cli


def test_bench_learn_tiny():
    result = run_cli("bench", "learn", "--seeds", "1", "--steps", "1", "--problems-per-step", "2",
                     "--eval-problems", "6", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    tree, flat = payload["methods"]
    assert tree["method"] == "TreeRPO" and flat["num_generations"] >= 2
    for method in (tree, flat):
        assert len(method["accuracies"]) == 1 and 0.0 <= method["accuracies"][0] <= 1.0
        assert method["tokens"][0] > 0
        assert len(method["worked_shares"]) == 1 and 0.0 <= method["worked_shares"][0] <= 1.0
    assert 0.0 <= payload["worked_before"] <= 1.0

"""`treerpo bench generate` end to end on a tiny model: the figures are there, no token wasted.

Timings are not asserted: performance lives in the benchmark, not in tests.
"""

from __future__ import annotations

import json
import math

from cli_runner import run_cli

TINY = ("--problems", "2", "--max-new-tokens", "40", "--hidden-size", "32", "--layers", "1")


def test_bench_generate_json_reports_no_waste_and_a_finite_ratio() -> None:
    result = run_cli("bench", "generate", *TINY, "--json")

    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    figures = result.json()
    assert {"waste_ratio", "seconds_per_leaf_ratio", "leaves", "tokens_decoded",
            "unique_tokens", "flat_leaves", "flat_tokens"} <= figures.keys()
    assert figures["waste_ratio"] == 1.0
    assert figures["tokens_decoded"] == figures["unique_tokens"] > 0
    # The trees branched (a root split and coverage splits at least), and the flat run sampled
    # about as many leaves: P problems times round(leaves / P) samples.
    assert figures["leaves"] > 2
    assert abs(figures["flat_leaves"] - figures["leaves"]) <= 2
    assert figures["flat_tokens"] > 0
    ratio = figures["seconds_per_leaf_ratio"]
    assert math.isfinite(ratio) and ratio > 0
    assert len(figures["round_ratios"]) == 3  # the default rounds; the ratio is their median
    assert sorted(figures["round_ratios"])[1] == ratio


def test_bench_generate_table_shows_the_goals(tmp_path) -> None:
    data_file = tmp_path / "questions.jsonl"
    rows = [{"question": f"Tom has {n} apples and eats 2. How many are left?", "answer": str(n - 2)}
            for n in (5, 9)]
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = run_cli("bench", "generate", *TINY, "--data-file", data_file)

    assert result.exit_code == 0, result.stderr
    assert "tokens decoded / unique tree tokens" in result.stdout
    assert "= 1.00" in result.stdout
    assert "≤ 0.6" in result.stdout


def test_bench_generate_rejects_a_hidden_size_the_heads_cannot_split() -> None:
    result = run_cli("bench", "generate", *TINY[:4], "--hidden-size", "36", "--json")

    assert result.exit_code == 2
    assert "--hidden-size" in result.stderr
    assert result.stdout == ""

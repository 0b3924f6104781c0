"""`treerpo bench replay` runs at a tiny scale and reports consistent figures."""

from __future__ import annotations

from cli_runner import run_cli


def test_bench_replay_tiny():
    result = run_cli("bench", "replay", "--num-trees", "1", "--tree-nodes", "8",
                     "--prompt-len", "12", "--segment-len", "10", "--hidden-size", "64",
                     "--vocab-size", "500",
                     "--repeats", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert {"speedup", "packed_tokens", "naive_tokens", "unique_tokens",
            "max_abs_logprob_diff", "grad_cosine"} <= payload.keys()
    assert payload["packed_tokens"] == payload["unique_tokens"]  # one pack: every token once
    assert payload["naive_tokens"] > payload["packed_tokens"]
    assert payload["max_abs_logprob_diff"] <= 1e-5
    assert payload["grad_cosine"] >= 0.9999

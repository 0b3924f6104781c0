"""`treerpo bench replay` runs at a tiny scale and reports consistent figures."""

from __future__ import annotations

from cli_runner import run_cli

from treerpo.bench.replay_bench import run_replay_bench

TINY = dict(num_trees=1, tree_nodes=8, prompt_len=12, segment_len=10, hidden_size=64,
            num_layers=2, vocab_size=500)


def test_bench_replay_json_has_exactly_the_documented_keys():
    result = run_cli("bench", "replay", "--num-trees", "1", "--tree-nodes", "8",
                     "--prompt-len", "12", "--segment-len", "10", "--hidden-size", "64",
                     "--layers", "2", "--vocab-size", "500", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert set(payload) == {"speedup_vs_paths", "speedup_vs_groups", "token_ratio_limit",
                            "efficiency", "max_abs_logprob_diff", "grad_cosine",
                            "packed_peak_mb", "paths_peak_mb"}
    assert payload["token_ratio_limit"] > 1.0
    ratio = payload["speedup_vs_paths"] / payload["token_ratio_limit"]
    assert abs(payload["efficiency"] - ratio) < 2e-3
    assert payload["max_abs_logprob_diff"] <= 2e-5
    assert payload["grad_cosine"] >= 0.9999


def test_bench_replay_rounds_rotate_and_tokens_add_up():
    order = []
    result = run_replay_bench(**TINY, rounds=3, paths_micro_batch_tokens=64,
                              on_round=lambda number, method, seconds: order.append(method))
    assert order == ["packed", "paths", "groups", "paths", "groups", "packed",
                     "groups", "packed", "paths"]
    assert all(len(m.wall_seconds) == 3 for m in result.measurements.values())
    assert result.packed_tokens == result.unique_tokens  # one pack: every token once
    assert result.unique_tokens < result.path_tokens < result.groups_tokens
    assert result.attn_implementation == "tree" and 0 < result.attended_share < 1
    assert result.logit_std > 2.0
    assert result.grad_cosine_paths >= 0.9999 and result.grad_cosine_groups >= 0.9999


def test_bench_replay_table():
    result = run_cli("bench", "replay", "--num-trees", "1", "--tree-nodes", "8",
                     "--prompt-len", "12", "--segment-len", "10", "--hidden-size", "64",
                     "--layers", "2", "--vocab-size", "500", "--rounds", "1",
                     "--max-packed-tokens", "40", "--attn-implementation", "eager")
    assert result.exit_code == 0, result.stderr
    assert "efficiency" in result.stdout and "eager" in result.stdout

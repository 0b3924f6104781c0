"""`treerpo train` end to end with the tiny model: replay, chained (the seed's command), errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from safetensors.torch import load_file
from test_cli_generate import stored_and_recomputed_logprobs
from test_train_update import write_scored_trees

from treerpo.store import repository
from treerpo.store.database import open_store

MIXED_REWARDS = [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 1]]
SMALL_TREE = ["--max-new-tokens", "30", "--min-segment-len", "8", "--max-depth", "2",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]


def _train(model_dir, db_url, output_dir, *extra):
    return run_cli("train", "--model", str(model_dir), "--output-dir", str(output_dir),
                   "--db", db_url, *extra)


def _train_steps(db_url: str, run_name: str):
    store = open_store(db_url)
    try:
        return repository.list_train_steps(store, run_id=repository.find_run(store, run_name).id)
    finally:
        store.close()


def test_replay_logs_metrics_and_records_the_trees_of_every_step(tiny_model_dir, db_url,
                                                                 tmp_path):
    tree_ids = write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=MIXED_REWARDS)
    output_dir = tmp_path / "out"
    result = _train(tiny_model_dir, db_url, output_dir, "--per-device-train-batch-size", "1",
                    "--gradient-accumulation-steps", "2", "--max-steps", "3",
                    "--logging-steps", "2", "--learning-rate", "1e-3", "--run", "hand-built",
                    "--run-name", "replay", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["steps"] == 3 and summary["scored_first"] == 0
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 3]  # every 2nd step, and the last
    assert {"loss", "mean_reward", "mean_abs_advantage", "clip_fraction", "kl", "grad_norm",
            "learning_rate", "tokens_per_second", "num_trees"} <= set(rows[0])
    assert rows[0]["kl"] is None  # beta 0: no KL, no reference model
    steps = _train_steps(db_url, "replay")
    assert [row.step for row in steps] == [1, 2, 3]
    # 3 trees, 2 per step: the first epoch is steps 1-2 (the second one short), each tree once
    assert [len(row.tree_ids) for row in steps] == [2, 1, 2]
    assert sorted(steps[0].tree_ids + steps[1].tree_ids) == sorted(tree_ids)
    assert [row["num_trees"] for row in rows] == [1, 2]
    assert steps[1].metrics == rows[0]  # the store keeps the logged numbers
    final = load_file(output_dir / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not (final[name] == start[name]).all() for name in start)
    saved_config = json.loads((output_dir / "train_config.json").read_text())
    assert saved_config["optimization"]["gradient_accumulation_steps"] == 2


def test_generate_then_train_scores_the_trees_first(tiny_model_dir, gsm8k_dir, db_url, tmp_path):
    generated = run_cli("generate", "--model", str(tiny_model_dir), "--dataset",
                        str(gsm8k_dir / "test.jsonl"), "--db", db_url, "--limit", "2",
                        *SMALL_TREE)
    assert generated.exit_code == 0, generated.stderr
    assert not any(tree["scored"] for tree in run_cli("trees", "--db", db_url, "--json").json())
    result = _train(tiny_model_dir, db_url, tmp_path / "out", "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    assert "scoring 2 unscored tree(s) first with the default reward" in result.stdout
    assert all(tree["scored"] for tree in run_cli("trees", "--db", db_url, "--json").json())


def test_seed_command_runs_verbatim_with_tiny_values(tiny_model_dir, gsm8k_dir, db_url,
                                                     tmp_path):
    # The original README's command, flag for flag (snake_case), with tiny values, a local GSM8K
    # file for the hub dataset, --max_steps 1 and a store in tmp_path. No --engine: auto = hf.
    command = [
        sys.executable, "-m", "treerpo.cli", "train", "--model_id", str(tiny_model_dir),
        "--dataset", str(gsm8k_dir / "test.jsonl"), "--per_device_train_batch_size", "2",
        "--output_dir", "./checkpoints/treerpo", "--save_steps", "200", "--save_total_limit", "2",
        "--logging_steps", "50", "--gpu_memory_utilization", "0.4", "--enable_prefix_caching",
        "--torch_dtype", "bfloat16", "--max_depth", "2", "--min_segment_len", "8",
        "--entropy_threshold", "1.0", "--entropy_topk", "20", "--coverage_min_chars", "10",
        "--coverage_children_max", "2", "--temperature", "0.6", "--top_p", "0.85", "--top_k",
        "25", "--repetition_penalty", "1.1", "--max_new_tokens", "30",
        "--max_steps", "1", "--db", db_url,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "bfloat16 on CPU: training in float32" in result.stdout
    output_dir = tmp_path / "checkpoints" / "treerpo"
    assert (output_dir / "model.safetensors").is_file()
    rows = (output_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["num_trees"] == 2
    trees = run_cli("trees", "--db", db_url, "--json").json()
    assert len(trees) == 2 and all(tree["scored"] for tree in trees)  # grown, stored, scored
    config = json.loads((output_dir / "train_config.json").read_text())
    assert config["data"]["dataset"].endswith("test.jsonl") and config["engine"]["torch_dtype"] \
        == "bfloat16"


def test_no_trees_is_bad_input(tiny_model_dir, db_url, tmp_path):
    result = _train(tiny_model_dir, db_url, tmp_path / "out")
    assert result.exit_code == 2
    assert "no trees to train on" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unwritable_output_dir_is_bad_input(tiny_model_dir, db_url, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _train(tiny_model_dir, db_url, blocker / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --output-dir:") and "is a file" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--epsilon", "0"], "--epsilon: Input should be greater than 0"),
    (["--epsilon", "-0.1"], "--epsilon: Input should be greater than 0"),
    (["--loss-aggregation", "sequence"], "--loss-aggregation"),
    (["--lr-scheduler-type", "nope"], "unknown scheduler"),
])
def test_bad_flags_are_refused_before_anything_runs(tiny_model_dir, db_url, tmp_path, flags,
                                                    message):
    result = _train(tiny_model_dir, db_url, tmp_path / "out", *flags)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed here")
def test_report_to_a_missing_tracker_is_bad_input(tiny_model_dir, db_url, tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=MIXED_REWARDS[:1])
    result = _train(tiny_model_dir, db_url, tmp_path / "out", "--report-to", "tensorboard")
    assert result.exit_code == 2 and "pip install tensorboard" in result.stderr


def test_kl_checkpointing_sub_packs_and_token_mean_run_together(tiny_model_dir, db_url,
                                                                 tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=MIXED_REWARDS)
    result = _train(tiny_model_dir, db_url, tmp_path / "out", "--beta", "0.04",
                    "--gradient-checkpointing", "--max-packed-tokens", "16",
                    "--loss-aggregation", "token", "--epsilon-high", "0.28",
                    "--lr-scheduler-type", "cosine", "--warmup-ratio", "0.5",
                    "--weight-decay", "0.1", "--max-steps", "3", "--logging-steps", "1",
                    "--learning-rate", "1e-3", "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line)
            for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # 2 warmup steps: step 1 at lr 0 (the policy stays the reference), step 2 at half the peak
    assert [row["learning_rate"] for row in rows] == pytest.approx([0.0, 5e-4, 1e-3])
    assert rows[0]["kl"] == rows[1]["kl"] == 0.0
    assert rows[2]["kl"] > 0.0


def test_chained_sampling_logprobs_are_the_tempered_ones_of_the_growing_policy(
        tiny_model_dir, gsm8k_dir, db_url, tmp_path):
    from treerpo.engines.loading import load_policy

    result = _train(tiny_model_dir, db_url, tmp_path / "out", "--dataset",
                    str(gsm8k_dir / "test.jsonl"), "--per-device-train-batch-size", "2",
                    "--max-steps", "1", "--temperature", "0.7", "--logprob_temperature",
                    "sampling", *SMALL_TREE)
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert config["engine"]["logprob_temperature"] == "sampling"
    # The step's trees were grown by the starting policy: the ratio of the first update is 1.
    model = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")
    found = stored_and_recomputed_logprobs(db_url=db_url, model=model, logprob_temperature=0.7)
    assert len(found) == 2
    for logprob_temperature, stored, recomputed in found:
        assert logprob_temperature == 0.7
        assert abs(stored - recomputed).max() <= 1e-5


@pytest.mark.parametrize("flags, message", [
    (["--branching", "forced", "--logprob-temperature", "sampling"],
     "--branching forced needs --logprob-temperature raw"),
    (["--engine", "vllm", "--logprob-temperature", "sampling"], "--engine hf"),
    (["--logprob-temperature", "tempered"], "--logprob-temperature"),
])
def test_chained_logprob_temperature_conflicts_are_refused_before_the_store_opens(
        tiny_model_dir, gsm8k_dir, tmp_path, flags, message):
    db_path = tmp_path / "store.db"
    result = _train(tiny_model_dir, f"sqlite:///{db_path}", tmp_path / "out", "--dataset",
                    str(gsm8k_dir / "test.jsonl"), *flags)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert not db_path.exists() and not (tmp_path / "out").exists()


def test_attention_implementations_train_alike_and_flex_needs_a_gpu(tiny_model_dir, db_url,
                                                                    tmp_path):
    """`--attn-implementation` reaches the trainer's model: tree (auto on CPU), sdpa and eager
    give the same first-step loss on the same trees; flex_attention on CPU is bad input."""
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=MIXED_REWARDS[:2])
    losses = {}
    for implementation in ("auto", "tree", "sdpa", "eager"):
        output_dir = tmp_path / implementation
        result = _train(tiny_model_dir, db_url, output_dir, "--attn-implementation",
                        implementation, "--max-steps", "1", "--logging-steps", "1", "--json")
        assert result.exit_code == 0, result.stderr
        losses[implementation] = json.loads(
            (output_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert max(losses.values()) - min(losses.values()) < 1e-5, losses
    result = _train(tiny_model_dir, db_url, tmp_path / "flex", "--attn-implementation",
                    "flex_attention", "--max-steps", "1")
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.stderr, result.stderr

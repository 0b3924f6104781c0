"""Two training processes (gloo on CPU, launched by torchrun) make the same update as one process
that holds both shards: the aggregation over groups is exact across processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file
from test_train_update import write_scored_trees

# Three trees with different group sizes and rewards: the 2-process shards are uneven (2 + 1).
REWARDS = [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 1, 0, 1, 1]]
COMMON = ["--learning-rate", "1e-3", "--max-steps", "2", "--loss-aggregation", "group",
          "--logging-steps", "1", "--json"]


def _torchrun() -> list[str]:
    launcher = Path(sys.executable).with_name("torchrun")
    if launcher.exists():
        return [str(launcher)]
    if shutil.which("torchrun"):
        return ["torchrun"]
    pytest.fail("torchrun (part of torch) is expected next to the interpreter")


def test_two_processes_make_the_update_of_one_with_the_combined_batch(tiny_model_dir, db_url,
                                                                      tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    single = run_cli("train", "--model", str(tiny_model_dir), "--output-dir",
                     str(tmp_path / "one"), "--db", db_url, "--per-device-train-batch-size", "3",
                     "--run-name", "one", *COMMON)
    assert single.exit_code == 0, single.stderr

    command = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "treerpo.cli",
               "train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "two"),
               "--db", db_url, "--per-device-train-batch-size", "1",
               "--gradient-accumulation-steps", "2", "--run-name", "two", *COMMON]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two_steps = [line for line in launched.stdout.splitlines() if line.startswith("{")]
    assert len(two_steps) == 1  # only the main process reports

    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(one[name], start[name]) for name in start)
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=1e-6, msg=name)
    metrics_one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    metrics_two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics_one) == len(metrics_two) == 2
    for row_one, row_two in zip(metrics_one, metrics_two, strict=True):
        a, b = json.loads(row_one), json.loads(row_two)
        assert (a["num_trees"], a["num_groups"], a["num_tokens"]) == \
            (b["num_trees"], b["num_groups"], b["num_tokens"]) == (3, 9, 69)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)

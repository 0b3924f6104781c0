"""Two training processes (gloo on CPU, launched by torchrun) make the same update as one process
that holds both shards: the aggregation over groups is exact across processes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
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


def _launch_two(tiny_model_dir, db_url, output_dir, *extra) -> subprocess.CompletedProcess:
    # `--` as the README says: torchrun would read --run as an abbreviation of --run-path.
    command = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "treerpo.cli",
               "--", "train", "--model", str(tiny_model_dir), "--output-dir", str(output_dir),
               "--db", db_url, "--per-device-train-batch-size", "1",
               "--gradient-accumulation-steps", "2", *COMMON, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_fsdp_with_uneven_packs_makes_the_update_of_one_process(tiny_model_dir, db_url,
                                                                tmp_path):
    # --max-packed-tokens 16 splits each tree into several packs, a different number per tree,
    # so the two processes run different numbers of forwards: the padding must line them up.
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    single = run_cli("train", "--model", str(tiny_model_dir), "--output-dir",
                     str(tmp_path / "one"), "--db", db_url, "--per-device-train-batch-size", "3",
                     "--run-name", "one", "--max-packed-tokens", "16", *COMMON)
    assert single.exit_code == 0, single.stderr
    launched = _launch_two(tiny_model_dir, db_url, tmp_path / "fsdp", "--run-name", "fsdp",
                           "--max-packed-tokens", "16", "--fsdp", "full_shard auto_wrap",
                           "--save-steps", "2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    state = json.loads((tmp_path / "fsdp" / "checkpoint-2" / "treerpo_state.json").read_text())
    assert state["parallelism"] == "fsdp"

    one = load_file(tmp_path / "one" / "model.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert set(sharded) == set(one)
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(one[name], start[name]) for name in start)
    for name, tensor in one.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-5, msg=name)


def test_fsdp_resume_from_a_checkpoint_ends_with_the_uninterrupted_weights(tiny_model_dir,
                                                                          db_url, tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    whole = _launch_two(tiny_model_dir, db_url, tmp_path / "whole", "--run-name", "whole",
                        "--fsdp", "shard_grad_op")
    assert whole.returncode == 0, whole.stderr[-3000:]
    interrupted = tmp_path / "interrupted"
    first = _launch_two(tiny_model_dir, db_url, interrupted, "--run-name", "interrupted",
                        "--fsdp", "shard_grad_op", "--save-steps", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = interrupted / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file()
    assert json.loads((checkpoint / "treerpo_state.json").read_text())["parallelism"] == "fsdp"
    for item in interrupted.iterdir():  # keep only checkpoint-1, as after a crash at step 2
        if item != checkpoint:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    resumed = _launch_two(tiny_model_dir, db_url, interrupted, "--run-name", "interrupted",
                          "--fsdp", "shard_grad_op", "--resume-from-checkpoint",
                          str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_file(tmp_path / "whole" / "model.safetensors")
    got = load_file(interrupted / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)
    refused = _launch_two(tiny_model_dir, db_url, interrupted, "--run-name", "interrupted",
                          "--resume-from-checkpoint", str(checkpoint))
    # torchrun exits 1 when a process fails; each process said why, in one line, with exit 2.
    assert refused.returncode != 0 and "resume with --fsdp" in refused.stderr
    assert "exitcode  : 2" in refused.stderr


class _Accelerator:
    """What `resolve_parallelism` reads from accelerate's `Accelerator`."""

    def __init__(self, distributed_type, num_processes=2, fsdp_plugin=None):
        self.distributed_type = distributed_type
        self.num_processes = num_processes
        self.state = type("State", (), {"fsdp_plugin": fsdp_plugin})()


def test_parallelism_follows_the_flag_and_accelerates_launch_config():
    from accelerate.utils import DistributedType

    from treerpo.errors import BadInputError
    from treerpo.training.distributed import resolve_parallelism

    plan = resolve_parallelism(accelerator=_Accelerator(DistributedType.NO, 1), fsdp="")
    assert (plan.mode, plan.wrapped) == ("single", False)
    assert resolve_parallelism(accelerator=_Accelerator(DistributedType.MULTI_CPU),
                               fsdp="").mode == "ddp"
    plan = resolve_parallelism(accelerator=_Accelerator(DistributedType.MULTI_GPU),
                               fsdp="shard_grad_op")
    assert (plan.mode, plan.reshard_after_forward) == ("fsdp", False)
    plugin = type("Plugin", (), {"reshard_after_forward": True})()
    plan = resolve_parallelism(accelerator=_Accelerator(DistributedType.FSDP, fsdp_plugin=plugin),
                               fsdp="")
    assert (plan.mode, plan.reshard_after_forward) == ("fsdp", True)
    with pytest.raises(BadInputError, match="DeepSpeed is not supported.*--fsdp"):
        resolve_parallelism(accelerator=_Accelerator(DistributedType.DEEPSPEED), fsdp="")


@pytest.mark.parametrize(("value", "message"), [
    ("offload", "unknown --fsdp option"), ("auto_wrap", "needs full_shard or shard_grad_op"),
    ("full_shard shard_grad_op", "choose one")])
def test_bad_fsdp_values_are_one_line_exit_2(tiny_model_dir, db_url, tmp_path, value, message):
    result = run_cli("train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
                     "--db", db_url, "--fsdp", value)
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chained_fsdp_with_the_hf_engine_is_refused_before_the_store_changes(
        tiny_model_dir, gsm8k_dir, tmp_path):
    db = tmp_path / "store.db"
    result = run_cli("train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
                     "--db", f"sqlite:///{db}", "--dataset", str(gsm8k_dir / "test.jsonl"),
                     "--engine", "hf", "--fsdp", "full_shard")
    assert result.exit_code == 2 and "--engine vllm" in result.stderr
    if db.exists():  # the store may have been created (migrated), but holds no run or problem
        with sqlite3.connect(db) as connection:
            for table in ("runs", "problems", "trees"):
                assert connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / name
    config = load_config_from_file(str(path))
    assert config.num_processes == 2 and config.mixed_precision == "no"
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_reshard_after_forward"] is True


def test_follow_under_two_processes_trains_what_one_process_trains(tiny_model_dir, db_url,
                                                                   tmp_path):
    """`train --follow`: the main process chooses each batch and broadcasts it."""
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir,
                       rewards=[*REWARDS, [0, 1, 0, 0, 1]])
    follow = ["--follow", "--run", "hand-built", "--max-staleness", "2", "--follow-timeout", "60"]
    single = run_cli("train", "--model", str(tiny_model_dir), "--output-dir",
                     str(tmp_path / "one"), "--db", db_url, "--per-device-train-batch-size", "2",
                     "--run-name", "one", *COMMON, *follow)
    assert single.exit_code == 0, single.stderr
    launched = _launch_two(tiny_model_dir, db_url, tmp_path / "two", "--run-name", "two",
                           "--gradient-accumulation-steps", "1", *follow)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=1e-6, msg=name)
    connection = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        steps = {run: [json.loads(ids) for (ids,) in connection.execute(
            "SELECT tree_ids FROM train_steps JOIN runs ON runs.id = train_steps.run_id "
            "WHERE runs.name = ? ORDER BY step", (run,))] for run in ("one", "two")}
    finally:
        connection.close()
    assert steps["one"] == steps["two"] == [[1, 2], [3, 4]]  # oldest first, each tree once

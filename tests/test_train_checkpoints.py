"""Checkpoints of `treerpo train`: rotation, atomic writes, and a resume that changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file
from test_train_update import write_scored_trees

from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.training import checkpoints, trainer

REWARDS = [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0]]


@pytest.fixture
def stored_trees(tiny_model_dir, db_url):
    return write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)


def _train(model_dir, db_url, output_dir, *extra):
    return run_cli("train", "--model", str(model_dir), "--output-dir", str(output_dir),
                   "--db", db_url, "--per-device-train-batch-size", "1", "--learning-rate",
                   "1e-3", *extra)


def _checkpoint_names(output_dir) -> list[str]:
    return [path.name for path in checkpoints.list_checkpoints(output_dir)]


def test_save_total_limit_keeps_the_newest_checkpoints(tiny_model_dir, db_url, tmp_path,
                                                       stored_trees):
    output_dir = tmp_path / "out"
    result = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "5", "--save-steps", "1",
                    "--save-total-limit", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert _checkpoint_names(output_dir) == ["checkpoint-4", "checkpoint-5"]
    assert not [p for p in output_dir.iterdir() if p.name.startswith(".tmp")]
    state = json.loads((output_dir / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    for name in ("model.safetensors", "tokenizer.json", "optimizer.pt", "scheduler.pt",
                 "rng_state_0.pth", "train_config.json"):
        assert (output_dir / "checkpoint-5" / name).is_file(), name


def test_a_crash_while_saving_leaves_no_partial_checkpoint(tiny_model_dir, db_url, tmp_path,
                                                           stored_trees, monkeypatch):
    output_dir = tmp_path / "out"
    real_save = torch.save

    def crash_on_second_optimizer_state(obj, path, *args, **kwargs):
        # The model and tokenizer of checkpoint-2 are already written when this fires.
        if str(path).endswith(checkpoints.OPTIMIZER_FILE) and "checkpoint-2" in str(path):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", crash_on_second_optimizer_state)
    result = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "3", "--save-steps", "1")
    assert result.exit_code == 1 and "disk full" in result.stderr
    assert _checkpoint_names(output_dir) == ["checkpoint-1"]
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint-2" in p.name) == []
    assert (output_dir / "checkpoint-1" / "optimizer.pt").is_file()
    # A hard kill cannot clean up: its temporary folder must never be mistaken for a checkpoint.
    leftover = output_dir / ".tmp-checkpoint-9-12345"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    monkeypatch.undo()
    resumed = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "3", "--save-steps", "1",
                     "--resume-from-checkpoint", "latest")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "checkpoint-1 at step 1" in resumed.stdout


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_model_dir, db_url, tmp_path,
                                                               stored_trees, monkeypatch):
    # 2 trees, 1 per step, 2 PPO iterations per batch, 6 steps: batches 0,0,1,1,2,2 where batch 2
    # opens the second epoch (reshuffled). The crash comes at step 5, after checkpoint-3, which
    # ends in the middle of batch 1. Warmup + linear decay make the schedule position matter.
    flags = ["--max-steps", "6", "--num-iterations", "2", "--warmup-ratio", "0.34",
             "--save-steps", "3", "--logging-steps", "1", "--run-name", "resume"]
    straight = _train(tiny_model_dir, db_url, tmp_path / "straight", *flags[:-2],
                      "--run-name", "straight")
    assert straight.exit_code == 0, straight.stderr

    real_update = trainer.PolicyUpdater.update
    calls = {"n": 0}

    def crash_at_step_five(self, trees):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed (simulated)")
        return real_update(self, trees)

    monkeypatch.setattr(trainer.PolicyUpdater, "update", crash_at_step_five)
    crashed = _train(tiny_model_dir, db_url, tmp_path / "resumed", *flags)
    assert crashed.exit_code == 1 and "killed" in crashed.stderr
    monkeypatch.setattr(trainer.PolicyUpdater, "update", real_update)
    resumed = _train(tiny_model_dir, db_url, tmp_path / "resumed", *flags,
                     "--resume-from-checkpoint", "latest")
    assert resumed.exit_code == 0, resumed.stderr

    expected = load_file(tmp_path / "straight" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(expected[name], start[name]) for name in start)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name

    store = open_store(db_url)
    try:
        rows = {name: repository.list_train_steps(
            store, run_id=repository.find_run(store, name).id) for name in ("straight", "resume")}
    finally:
        store.close()
    assert [row.step for row in rows["resume"]] == [1, 2, 3, 4, 5, 6]
    assert [row.tree_ids for row in rows["resume"]] == [row.tree_ids for row in rows["straight"]]
    assert [row.metrics["loss"] for row in rows["resume"]] == pytest.approx(
        [row.metrics["loss"] for row in rows["straight"]], abs=1e-7)
    assert rows["resume"][2].checkpoint.endswith("checkpoint-3")
    logged = [json.loads(line)["step"] for line in
              (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # the crashed attempt's rows after step 3 are gone

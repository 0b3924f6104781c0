"""Resuming `treerpo train`: a changed schedule is refused, a finished run says so; the dtype
checkpoints are saved in; trainer_state.json as HF's TrainerState reads it."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import run_cli
from safetensors import safe_open
from test_train_update import write_scored_trees

from treerpo.training import trainer

REWARDS = [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0]]


def _train(model_dir, db_url, output_dir, *extra):
    return run_cli("train", "--model", str(model_dir), "--output-dir", str(output_dir),
                   "--db", db_url, "--per-device-train-batch-size", "1", "--learning-rate",
                   "1e-3", "--run-name", "r", *extra)


def _dtypes(folder) -> set[torch.dtype]:
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in bfloat16, as most hub checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("bf16-model")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(
        folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_a_changed_schedule_is_refused_and_a_finished_run_says_so(tiny_model_dir, db_url,
                                                                  tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    output_dir = tmp_path / "out"
    first = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "2", "--save-steps", "1")
    assert first.exit_code == 0, first.stderr
    db_path = tmp_path / "store.db"
    store_before, metrics_before = db_path.read_bytes(), (output_dir / "metrics.jsonl").read_text()
    runs_before = run_cli("runs", "--db", db_url, "--json").json()

    for flags, named in [(["--max-steps", "4"], "--max-steps 4 (checkpoint: 2)"),
                         (["--max-steps", "2", "--learning-rate", "2e-3"],
                          "--learning-rate 0.002 (checkpoint: 0.001)"),
                         (["--max-steps", "2", "--lr-scheduler-type", "cosine"],
                          "--lr-scheduler-type cosine (checkpoint: linear)")]:
        refused = _train(tiny_model_dir, db_url, output_dir, *flags,
                         "--resume-from-checkpoint", "latest")
        assert refused.exit_code == 2, flags
        error = refused.stderr.splitlines()[-1]
        assert error.startswith(f"error: cannot resume {output_dir / 'checkpoint-2'} with a "
                                "changed schedule: "), error
        assert named in error and "--output-dir NEW-DIR" in error
    # nothing ran, nothing was renamed or written
    assert db_path.read_bytes() == store_before
    assert (output_dir / "metrics.jsonl").read_text() == metrics_before
    assert run_cli("runs", "--db", db_url, "--json").json() == runs_before

    done = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "2",
                  "--resume-from-checkpoint", "latest")
    assert done.exit_code == 0, done.stderr
    assert (f"nothing left to do: {output_dir / 'checkpoint-2'} is at step 2 of 2"
            in " ".join(done.stdout.split()))
    assert db_path.read_bytes() == store_before
    # resuming an earlier checkpoint of the same schedule still works
    earlier = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "2",
                     "--resume-from-checkpoint", str(output_dir / "checkpoint-1"), "--json")
    assert earlier.exit_code == 0, earlier.stderr
    assert (earlier.json()["start_step"], earlier.json()["steps"]) == (1, 2)


def test_checkpoints_and_final_model_keep_the_base_models_dtype(bf16_model_dir, db_url,
                                                                tmp_path):
    from transformers import AutoModelForCausalLM

    write_scored_trees(db_url=db_url, model_dir=bf16_model_dir, rewards=REWARDS)
    output_dir = tmp_path / "auto"
    result = _train(bf16_model_dir, db_url, output_dir, "--max-steps", "1", "--save-steps", "1")
    assert result.exit_code == 0, result.stderr
    for folder in (output_dir, output_dir / "checkpoint-1"):
        assert _dtypes(folder) == {torch.bfloat16}, folder
        assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(output_dir, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    # one tensor for the tied embeddings, as the base model has
    with safe_open(output_dir / "model.safetensors", "pt") as saved, safe_open(
            bf16_model_dir / "model.safetensors", "pt") as base:
        assert set(saved.keys()) == set(base.keys())
    # a resume loads the bf16 checkpoint into float32 master weights and trains on
    resumed = _train(bf16_model_dir, db_url, tmp_path / "auto", "--max-steps", "1",
                     "--resume-from-checkpoint", "latest")
    assert resumed.exit_code == 0 and "nothing left to do" in resumed.stdout

    for choice, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        chosen = _train(bf16_model_dir, db_url, tmp_path / choice, "--max-steps", "1",
                        "--save-dtype", choice, "--run-name", f"r-{choice}")
        assert chosen.exit_code == 0, chosen.stderr
        assert _dtypes(tmp_path / choice) == {dtype}
    assert _train(bf16_model_dir, db_url, tmp_path / "x", "--save-dtype", "int8").exit_code == 2


def test_trainer_state_is_hf_readable_and_its_log_history_survives_a_resume(
        tiny_model_dir, db_url, tmp_path, monkeypatch):
    from transformers import TrainerState

    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    output_dir = tmp_path / "out"
    flags = ["--max-steps", "4", "--save-steps", "2", "--logging-steps", "1"]
    real_update = trainer.PolicyUpdater.update
    calls = {"n": 0}

    def crash_at_step_three(self, trees):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed (simulated)")
        return real_update(self, trees)

    monkeypatch.setattr(trainer.PolicyUpdater, "update", crash_at_step_three)
    assert _train(tiny_model_dir, db_url, output_dir, *flags).exit_code == 1
    monkeypatch.setattr(trainer.PolicyUpdater, "update", real_update)
    resumed = _train(tiny_model_dir, db_url, output_dir, *flags,
                     "--resume-from-checkpoint", "latest")
    assert resumed.exit_code == 0, resumed.stderr

    state = TrainerState.load_from_json(str(output_dir / "checkpoint-4" / "trainer_state.json"))
    assert (state.global_step, state.max_steps, state.logging_steps, state.save_steps) == (
        4, 4, 1, 2)
    assert state.num_train_epochs == 2 and state.epoch == pytest.approx(2.0)  # epochs done
    assert state.train_batch_size == 1
    assert [entry["step"] for entry in state.log_history] == [1, 2, 3, 4]
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [entry["loss"] for entry in state.log_history] == [entry["loss"] for entry in logged]
    assert {"epoch", "learning_rate", "grad_norm"} <= set(state.log_history[0])
    own = json.loads((output_dir / "checkpoint-4" / "treerpo_state.json").read_text())
    assert own["num_processes"] == 1 and len(own["batch_tree_ids"]) == 1


def test_a_resume_whose_data_gives_another_length_is_refused(tiny_model_dir, db_url, tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    output_dir = tmp_path / "out"
    first = _train(tiny_model_dir, db_url, output_dir, "--num-train-epochs", "1",
                   "--save-steps", "1", "--json")
    assert first.exit_code == 0 and first.json()["steps"] == 2  # 2 trees, 1 per step
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=[[1, 1, 0, 0, 0]],
                       run_name="later", seed=1)
    refused = _train(tiny_model_dir, db_url, output_dir, "--num-train-epochs", "1",
                     "--resume-from-checkpoint", str(output_dir / "checkpoint-1"))
    assert refused.exit_code == 2
    assert ("the run now has 3 optimizer steps in all, the checkpoint's had 2"
            in refused.stderr.splitlines()[-1])
    # refused before the train run was reopened: it still reads finished, its steps unchanged
    [train_run] = run_cli("runs", "--db", db_url, "--kind", "train", "--json").json()
    assert (train_run["status"], train_run["steps"]) == ("finished", 2)


def test_a_checkpoint_written_before_treerpo_state_json_still_resumes(tiny_model_dir, db_url,
                                                                      tmp_path):
    write_scored_trees(db_url=db_url, model_dir=tiny_model_dir, rewards=REWARDS)
    output_dir = tmp_path / "out"
    assert _train(tiny_model_dir, db_url, output_dir, "--max-steps", "2",
                  "--save-steps", "1").exit_code == 0
    checkpoint = output_dir / "checkpoint-1"
    own = json.loads((checkpoint / "treerpo_state.json").read_text())
    (checkpoint / "treerpo_state.json").unlink()
    # the layout of earlier releases: treerpo's fields in trainer_state.json, no HF schema
    (checkpoint / "trainer_state.json").write_text(json.dumps(
        {"global_step": 1, "total_steps": 2, **own}))
    changed = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "3",
                     "--resume-from-checkpoint", str(checkpoint))
    assert changed.exit_code == 2 and "--max-steps 3 (checkpoint: 2)" in changed.stderr
    resumed = _train(tiny_model_dir, db_url, output_dir, "--max-steps", "2",
                     "--resume-from-checkpoint", str(checkpoint), "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert (resumed.json()["start_step"], resumed.json()["steps"]) == (1, 2)

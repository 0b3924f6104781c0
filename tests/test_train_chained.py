"""Chained training with the vLLM engine (its faithful stand-in): weights go into the engine in
place after every optimizer step, and the trees of each step are grown, stored and scored."""

from __future__ import annotations

import sys

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file

SMALL_TREE = ["--max-new-tokens", "20", "--min-segment-len", "6", "--max-depth", "2",
              "--coverage-min-chars", "10", "--entropy-threshold", "0.5"]


@pytest.fixture
def fake_vllm(monkeypatch):
    import fake_vllm

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    engines = []
    real_init = fake_vllm.LLM.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        engines.append(self)

    monkeypatch.setattr(fake_vllm.LLM, "__init__", recording_init)
    return engines


def _train_with_fake_vllm(tiny_model_dir, gsm8k_dir, db_url, output_dir, *extra):
    return run_cli("train", "--model", str(tiny_model_dir), "--dataset",
                   str(gsm8k_dir / "test.jsonl"), "--limit", "4", "--engine", "vllm",
                   "--per-device-train-batch-size", "1", "--max-steps", "3", "--save-steps", "1",
                   "--learning-rate", "1e-2", "--output-dir", str(output_dir), "--db", db_url,
                   "--run-name", "online", "--json", *SMALL_TREE, *extra)


def _assert_serves(engine, checkpoint_dir) -> None:
    weights = load_file(checkpoint_dir / "model.safetensors")
    served = dict(engine._model.named_parameters())
    for name, tensor in weights.items():
        if name in served:
            assert torch.equal(served[name].detach(), tensor.to(served[name].dtype)), name


def test_chained_vllm_gets_the_new_weights_before_each_growth(tiny_model_dir, gsm8k_dir, db_url,
                                                              tmp_path, fake_vllm):
    output_dir = tmp_path / "out"
    result = _train_with_fake_vllm(tiny_model_dir, gsm8k_dir, db_url, output_dir)
    assert result.exit_code == 0, result.stderr
    (engine,) = fake_vllm
    # One in-place push before the growth of steps 2 and 3; none after the last update.
    assert engine.prefix_cache_resets == 2
    assert engine.gpu_memory_utilization == 0.3  # train's colocated default
    growths = [index for index, event in enumerate(engine.events) if event == ("generate",)]
    pushes = [index for index, event in enumerate(engine.events) if event == ("apply_model",)]
    assert len(pushes) == 2 and pushes[0] > growths[0] and pushes[-1] < growths[-1]
    _assert_serves(engine, output_dir / "checkpoint-2")  # step 3 grew with step 2's weights
    trees = run_cli("trees", "--db", db_url, "--json").json()
    assert len(trees) == 3 and all(tree["scored"] for tree in trees)
    assert result.json()["trees_trained"] == 3


def test_chained_vllm_sleep_mode_sleeps_through_each_update(tiny_model_dir, gsm8k_dir, db_url,
                                                            tmp_path, fake_vllm):
    output_dir = tmp_path / "out"
    result = _train_with_fake_vllm(tiny_model_dir, gsm8k_dir, db_url, output_dir,
                                   "--vllm-enable-sleep-mode", "--vllm-tensor-parallel-size", "1",
                                   "--vllm-max-num-seqs", "8")
    assert result.exit_code == 0, result.stderr
    (engine,) = fake_vllm
    assert engine.enable_sleep_mode
    assert engine.extra_engine_args == {"tensor_parallel_size": 1, "max_num_seqs": 8}
    phases = []  # the events with each batch's run of generate calls collapsed into one
    for event in engine.events:
        if not (event == ("generate",) and phases and phases[-1] == event):
            phases.append(event)
    wake_and_push = [("wake_up", ("weights",)), ("apply_model",), ("wake_up", ("kv_cache",)),
                     ("reset_prefix_cache",)]
    assert phases == [("generate",), ("sleep", 2),
                      *wake_and_push, ("generate",), ("sleep", 2),
                      *wake_and_push, ("generate",), ("sleep", 2)]


def test_full_determinism_gives_bit_identical_chained_updates_on_two_threads(
        tiny_model_dir, gsm8k_dir, tmp_path):
    # Multi-threaded CPU backward accumulates in thread-dependent order; --full-determinism must
    # make two runs of the same seed agree to the last bit, and leave torch's setting as it was.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for attempt in range(2):
            output_dir = tmp_path / f"out{attempt}"
            result = run_cli("train", "--model", str(tiny_model_dir), "--dataset",
                             str(gsm8k_dir / "test.jsonl"), "--limit", "4", "--engine", "hf",
                             "--per-device-train-batch-size", "2", "--max-steps", "2",
                             "--learning-rate", "1e-2", "--output-dir", str(output_dir),
                             "--db", f"sqlite:///{tmp_path / f'run{attempt}.db'}",
                             "--full-determinism", "--json", *SMALL_TREE)
            assert result.exit_code == 0, result.stderr
            assert not torch.are_deterministic_algorithms_enabled()
            weights.append(load_file(output_dir / "model.safetensors"))
    finally:
        torch.set_num_threads(threads)
    first, second = weights
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_train_help_shows_the_colocation_flags_and_the_03_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = run_cli("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for flag in ("--vllm-enable-sleep-mode", "--vllm-tensor-parallel-size",
                 "--vllm-max-num-seqs", "--gpu-memory-utilization"):
        assert flag in text, flag
    assert "TRL's colocate default" in text and "[default: 0.3]" in text

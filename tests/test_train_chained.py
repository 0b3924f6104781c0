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


def test_chained_vllm_gets_the_new_weights_after_every_step(tiny_model_dir, gsm8k_dir, db_url,
                                                            tmp_path, fake_vllm):
    output_dir = tmp_path / "out"
    result = run_cli("train", "--model", str(tiny_model_dir), "--dataset",
                     str(gsm8k_dir / "test.jsonl"), "--limit", "4", "--engine", "vllm",
                     "--per-device-train-batch-size", "1", "--max-steps", "2",
                     "--learning-rate", "1e-2", "--output-dir", str(output_dir), "--db", db_url,
                     "--run-name", "online", "--json", *SMALL_TREE)
    assert result.exit_code == 0, result.stderr
    (engine,) = fake_vllm
    assert engine.prefix_cache_resets == 2  # one in-place weight load per optimizer step
    assert len(engine.calls) >= 2  # both steps grew their trees with the engine
    final = load_file(output_dir / "model.safetensors")
    served = dict(engine._model.named_parameters())
    for name, tensor in final.items():
        if name in served:
            assert torch.equal(served[name].detach(), tensor), name
    trees = run_cli("trees", "--db", db_url, "--json").json()
    assert len(trees) == 2 and all(tree["scored"] for tree in trees)
    assert result.json()["trees_trained"] == 2

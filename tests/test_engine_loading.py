"""Loading a policy safely, fingerprinting its weights, and choosing an engine."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from treerpo.engines import create_engine, resolve_engine_name
from treerpo.engines.hf import HFEngine
from treerpo.engines.loading import (
    eos_token_ids,
    load_policy,
    load_tokenizer,
    policy_version,
    resolve_dtype,
)
from treerpo.errors import BadInputError


def assert_one_line_naming(error: BadInputError, model: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert model in message


def test_loads_the_tiny_model_in_float32_on_cpu_by_default(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_policy(str(tiny_model_dir), device="cpu")
    assert policy.dtype == torch.float32
    assert not policy.training
    assert policy.config.vocab_size == len(tokenizer)
    assert resolve_dtype("auto", device="cpu") == torch.float32


def test_explicit_dtype_is_honoured(tiny_model_dir):
    policy = load_policy(str(tiny_model_dir), torch_dtype="bfloat16", device="cpu")
    assert policy.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "model", ["/no/such/folder/model", "./missing-model-folder", "not a model id!"]
)
def test_missing_local_model_is_a_one_line_bad_input(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError) as caught:
        load_policy(model)
    assert_one_line_naming(caught.value, model)
    with pytest.raises(BadInputError):
        load_tokenizer(model)


def test_hub_id_not_available_offline_is_a_one_line_bad_input(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model = "treerpo-tests/no-such-model"
    with pytest.raises(BadInputError) as caught:
        load_tokenizer(model)
    assert_one_line_naming(caught.value, model)
    with pytest.raises(BadInputError) as caught:
        load_policy(model)
    assert_one_line_naming(caught.value, model)


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    """A folder with only `pytorch_model.bin` is refused: pickles can run code when loaded."""
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    state_dict = load_file(pickled / "model.safetensors")
    torch.save(state_dict, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(BadInputError) as caught:
        load_policy(str(pickled))
    assert_one_line_naming(caught.value, str(pickled))
    assert "safetensors" in str(caught.value)


def test_policy_version_fingerprints_the_weights(tiny_model_dir, tmp_path):
    version = policy_version(str(tiny_model_dir))
    assert version.startswith(f"{tiny_model_dir}@")
    assert version == policy_version(str(tiny_model_dir))

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert policy_version(str(copy)).split("@")[1] == version.split("@")[1]

    policy = load_policy(str(copy), device="cpu")
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(1e-3)
    policy.save_pretrained(copy, safe_serialization=True)
    assert policy_version(str(copy)).split("@")[1] != version.split("@")[1]


def test_eos_ids_merge_tokenizer_and_generation_config(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))

    class Config:
        eos_token_id = [tokenizer.eos_token_id, 5]

    assert eos_token_ids(tokenizer) == (tokenizer.eos_token_id,)
    assert set(eos_token_ids(tokenizer, Config())) == {tokenizer.eos_token_id, 5}


def test_unknown_engine_is_bad_input():
    with pytest.raises(BadInputError, match="unknown engine 'tgi'"):
        resolve_engine_name("tgi")


def test_auto_picks_hf_without_a_gpu_even_with_vllm_importable(monkeypatch, tiny_model_dir):
    import fake_vllm

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine_name("auto") == "hf"
    engine, tokenizer = create_engine("auto", model=str(tiny_model_dir), seed=0, batch_size=4)
    assert isinstance(engine, HFEngine)
    assert engine.batch_size == 4
    assert tokenizer.eos_token_id in engine.eos_token_ids


def test_auto_picks_vllm_with_a_gpu_and_vllm(monkeypatch):
    import fake_vllm

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine_name("auto") == "vllm"


def test_auto_picks_hf_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine_name("auto") == "hf"

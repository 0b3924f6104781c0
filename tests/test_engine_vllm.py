"""The vLLM engine, run against `tests/fake_vllm.py` (vLLM needs a CUDA GPU; see its docstring).

What is checked here is the engine's side of the contract: the keywords it passes, how it reads
vLLM's outputs (the sampled token riding along in the top-k dict, finish reasons), and that the
numbers it returns are the model's raw logprobs. The fake's own faithfulness to vLLM is pinned by
the last tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from treerpo.engines import create_engine
from treerpo.engines.base import GenerationRequest, SamplingSettings
from treerpo.engines.hf import HFEngine
from treerpo.engines.loading import load_policy, load_tokenizer
from treerpo.engines.vllm import VLLM_MISSING, VLLMEngine, completion_to_result
from treerpo.errors import BadInputError, RunFailure

UNTRUNCATED = SamplingSettings(temperature=1.0, top_p=None, top_k=None, repetition_penalty=None)
TOLERANCE = 1e-5


@pytest.fixture
def fake_vllm(monkeypatch):
    import fake_vllm

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return fake_vllm


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def contexts(tokenizer) -> list[list[int]]:
    texts = ["Compute (7 + 8) * 2 - 6 = 24.", "3 * 4 =", "Let x be the number. Then 2x + 3 = 11"]
    return [tokenizer.encode(text) for text in texts]


def vllm_engine(model_dir, **kwargs) -> VLLMEngine:
    engine, _ = create_engine("vllm", model=str(model_dir), **{"seed": 0, **kwargs})
    assert isinstance(engine, VLLMEngine)
    return engine


def forward_logprobs(model, context, generated) -> torch.Tensor:
    """Raw float32 log-softmax predicting each generated token, from a full forward: (T, V)."""
    sequence = torch.tensor([list(context) + [int(t) for t in generated]])
    with torch.no_grad():
        logits = model(sequence).logits[0].float()
    start = len(context) - 1
    return torch.log_softmax(logits[start : start + len(generated)], dim=-1)


def test_constructor_passes_vllm_keywords(fake_vllm, tiny_model_dir):
    engine = vllm_engine(
        tiny_model_dir,
        seed=3,
        torch_dtype="float32",
        gpu_memory_utilization=0.5,
        max_model_len=512,
        enable_prefix_caching=True,
        max_logprobs=25,
    )
    llm = engine.llm
    assert (llm.model, llm.dtype, llm.seed) == (str(tiny_model_dir), "float32", 3)
    assert (llm.gpu_memory_utilization, llm.max_model_len) == (0.5, 512)
    assert llm.enable_prefix_caching is True and llm.trust_remote_code is False
    assert llm.logprobs_mode == "raw_logprobs" and llm.max_logprobs == 25
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_sampling_settings_map_to_sampling_params(fake_vllm, tiny_model_dir, contexts):
    engine = vllm_engine(tiny_model_dir)
    settings = SamplingSettings(temperature=0.6, top_p=None, top_k=None, min_p=None)
    requests = [GenerationRequest(contexts[0], 4), GenerationRequest(contexts[1], 6)]
    engine.generate(requests, sampling=settings, topk=3)
    prompts, params = engine.llm.calls[-1].prompts, engine.llm.calls[-1].params
    assert [p["prompt_token_ids"] for p in prompts] == [contexts[0], contexts[1]]
    assert [p.max_tokens for p in params] == [4, 6]
    for p in params:
        assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.6, 1.0, 0, 0.0)
        assert p.repetition_penalty == 1.1 and p.logprobs == 3 and p.detokenize is False
    assert params[0].seed != params[1].seed

    engine.generate(requests[:1], sampling=SamplingSettings(), topk=3)
    (default,) = engine.llm.calls[-1].params
    assert (default.top_p, default.top_k, default.repetition_penalty) == (0.85, 25, 1.1)


def test_outputs_are_the_models_raw_logprobs_and_topk(fake_vllm, tiny_model_dir, model, contexts):
    engine = vllm_engine(tiny_model_dir)
    requests = [GenerationRequest(c, 9) for c in contexts]
    results = engine.generate(requests, sampling=UNTRUNCATED, topk=4)
    for context, result in zip(contexts, results, strict=True):
        assert result.finish_reason == "budget" and len(result.token_ids) == 9
        assert result.token_ids.dtype == np.int32 and result.topk_token_ids.dtype == np.int32
        reference = forward_logprobs(model, context, result.token_ids)  # (T, V)
        tokens = torch.as_tensor(result.token_ids, dtype=torch.long)
        expected = reference[torch.arange(len(tokens)), tokens]
        np.testing.assert_allclose(result.logprobs, expected.numpy(), atol=TOLERANCE, rtol=0)
        top = torch.topk(reference, 4)
        np.testing.assert_allclose(result.topk_logprobs, top.values.numpy(), atol=TOLERANCE)
        np.testing.assert_array_equal(result.topk_token_ids, top.indices.numpy())


def test_sampled_token_outside_the_topk_is_not_a_candidate(fake_vllm, tiny_model_dir, model):
    engine = vllm_engine(tiny_model_dir)
    context = [5, 6, 7]
    hot = SamplingSettings(temperature=3.0, top_p=None, top_k=None, repetition_penalty=None)
    (result,) = engine.generate([GenerationRequest(context, 30)], sampling=hot, topk=1)
    reference = forward_logprobs(model, context, result.token_ids)
    outside = result.token_ids != reference.argmax(-1).numpy()
    assert outside.sum() > 5  # the hot sampling left the top-1 often
    assert result.topk_token_ids.shape == (30, 1)
    np.testing.assert_array_equal(result.topk_token_ids[:, 0], reference.argmax(-1).numpy())
    tokens = torch.as_tensor(result.token_ids, dtype=torch.long)
    np.testing.assert_allclose(
        result.logprobs, reference[torch.arange(30), tokens].numpy(), atol=TOLERANCE
    )
    assert np.all(result.logprobs[outside] < result.topk_logprobs[outside, 0])


def test_greedy_matches_the_hf_engine(fake_vllm, tiny_model_dir, model, tokenizer, contexts):
    greedy = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=1.5)
    requests = [GenerationRequest(c, 12) for c in contexts]
    from_vllm = vllm_engine(tiny_model_dir).generate(requests, sampling=greedy, topk=5)
    hf = HFEngine(model, tokenizer, seed=0, eos_token_ids=())
    from_hf = hf.generate(requests, sampling=greedy, topk=5)
    for a, b in zip(from_vllm, from_hf, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=TOLERANCE, rtol=0)
        np.testing.assert_array_equal(a.topk_token_ids, b.topk_token_ids)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=TOLERANCE, rtol=0)


def test_same_seed_same_samples_different_seed_different(fake_vllm, tiny_model_dir, contexts):
    requests = [GenerationRequest(c, 10) for c in contexts]

    def sample(seed):
        engine = vllm_engine(tiny_model_dir, seed=seed)
        return [r.token_ids for r in engine.generate(requests, sampling=UNTRUNCATED, topk=2)]

    first, again, other = sample(1), sample(1), sample(2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_generation_config_eos_stops_with_finish_reason_eos(
    fake_vllm, tiny_model_dir, tokenizer, contexts, tmp_path
):
    penalised_greedy = SamplingSettings(
        temperature=0.0, top_p=None, top_k=None, repetition_penalty=5.0
    )
    request = [GenerationRequest(contexts[0], 12)]
    (free_run,) = vllm_engine(tiny_model_dir).generate(request, sampling=penalised_greedy, topk=2)
    assert free_run.finish_reason == "budget"
    stop_at = next(
        i for i, t in enumerate(free_run.token_ids) if i > 1 and t not in free_run.token_ids[:i]
    )
    stop_id = int(free_run.token_ids[stop_at])

    # A second EOS id in generation_config.json: vLLM turns it into a stop token id.
    model_dir = tmp_path / "two-eos"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, stop_id]
    config_path.write_text(json.dumps(config))

    engine = vllm_engine(model_dir)
    assert stop_id in engine.eos_token_ids
    (stopped,) = engine.generate(request, sampling=penalised_greedy, topk=2)
    assert stopped.finish_reason == "eos"
    np.testing.assert_array_equal(stopped.token_ids, free_run.token_ids[: stop_at + 1])
    assert len(stopped.logprobs) == len(stopped.topk_logprobs) == stop_at + 1


def _completion(fake_vllm, token_ids, finish_reason, *, topk=2):
    logprobs = [
        {t: fake_vllm.Logprob(-0.1, 1), 1000 + t: fake_vllm.Logprob(-0.5, 2)} for t in token_ids
    ]
    return fake_vllm.CompletionOutput(
        index=0,
        text="",
        token_ids=list(token_ids),
        cumulative_logprob=None,
        logprobs=logprobs,
        finish_reason=finish_reason,
    )


def test_finish_reasons_map_to_eos_and_budget(fake_vllm):
    stop = completion_to_result(_completion(fake_vllm, [4, 9], "stop"), topk=2, eos_token_ids=[9])
    assert stop.finish_reason == "eos"
    length = completion_to_result(_completion(fake_vllm, [4, 5], "length"), topk=2)
    assert length.finish_reason == "budget"
    np.testing.assert_array_equal(length.topk_token_ids, [[4, 1004], [5, 1005]])
    # vLLM checks the length before the EOS: an EOS on the last allowed token still ends it.
    eos_last = completion_to_result(
        _completion(fake_vllm, [4, 9], "length"), topk=2, eos_token_ids=[9]
    )
    assert eos_last.finish_reason == "eos"


def test_aborted_or_logprob_less_outputs_are_run_failures(fake_vllm):
    with pytest.raises(RunFailure, match="abort"):
        completion_to_result(_completion(fake_vllm, [4], "abort"), topk=2)
    without_logprobs = _completion(fake_vllm, [4, 5], "length")
    without_logprobs.logprobs = None
    with pytest.raises(RunFailure, match="logprob"):
        completion_to_result(without_logprobs, topk=2)


def test_unsupported_settings_are_bad_input(fake_vllm, tiny_model_dir, contexts):
    with pytest.raises(BadInputError, match="--logprob-temperature raw or --engine hf"):
        vllm_engine(tiny_model_dir, logprob_temperature=0.5)
    engine = vllm_engine(tiny_model_dir, max_logprobs=20)
    with pytest.raises(BadInputError, match="max_logprobs"):
        engine.generate([GenerationRequest(contexts[0], 2)], sampling=UNTRUNCATED, topk=21)


def test_load_weights_updates_the_served_model_and_resets_the_prefix_cache(
    fake_vllm, tiny_model_dir, contexts
):
    engine = vllm_engine(tiny_model_dir)
    greedy = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=None)
    request = [GenerationRequest(contexts[0], 8)]
    (before,) = engine.generate(request, sampling=greedy, topk=1)

    trained = load_policy(str(tiny_model_dir), device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    engine.load_weights(trained.named_parameters())

    assert engine.llm.prefix_cache_resets == 1
    served = dict(engine.llm._model.named_parameters())
    for name, parameter in trained.named_parameters():
        torch.testing.assert_close(served[name], parameter.detach())
    (after,) = engine.generate(request, sampling=greedy, topk=1)
    assert not np.array_equal(before.token_ids, after.token_ids)


def test_colocation_settings_reach_vllm(fake_vllm, tiny_model_dir):
    engine = vllm_engine(tiny_model_dir, vllm_tensor_parallel_size=2, vllm_max_num_seqs=32,
                         vllm_enable_sleep_mode=True)
    assert engine.llm.extra_engine_args == {"tensor_parallel_size": 2, "max_num_seqs": 32}
    assert engine.llm.enable_sleep_mode is True
    default = vllm_engine(tiny_model_dir)  # unset max_num_seqs is left to vLLM
    assert default.llm.extra_engine_args == {"tensor_parallel_size": 1}


def test_sleep_then_load_weights_wakes_weights_before_kv_cache(fake_vllm, tiny_model_dir,
                                                               contexts):
    engine = vllm_engine(tiny_model_dir, vllm_enable_sleep_mode=True)
    greedy = SamplingSettings(temperature=0.0, top_p=None, top_k=None, repetition_penalty=None)
    request = [GenerationRequest(contexts[0], 4)]
    (before,) = engine.generate(request, sampling=greedy, topk=1)
    engine.sleep()
    engine.sleep()  # already asleep: nothing more
    with pytest.raises(RunFailure, match="asleep"):
        engine.generate(request, sampling=greedy, topk=1)
    policy = load_policy(str(tiny_model_dir), device="cpu")
    engine.load_weights(policy.named_parameters())
    assert engine.llm.events[-5:] == [("sleep", 2), ("wake_up", ("weights",)), ("apply_model",),
                                      ("wake_up", ("kv_cache",)), ("reset_prefix_cache",)]
    (after,) = engine.generate(request, sampling=greedy, topk=1)
    np.testing.assert_array_equal(before.token_ids, after.token_ids)  # same weights, reloaded
    np.testing.assert_allclose(before.logprobs, after.logprobs, atol=TOLERANCE)


def test_sleep_without_sleep_mode_keeps_the_engine_awake(fake_vllm, tiny_model_dir):
    engine = vllm_engine(tiny_model_dir)
    engine.sleep()
    assert not engine.sleeping and engine.llm.events == []


def test_multiprocessing_engine_is_refused(fake_vllm, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(BadInputError, match="VLLM_ENABLE_V1_MULTIPROCESSING=1.*unset it"):
        vllm_engine(tiny_model_dir)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    # An engine that came up in another process anyway (the guard after construction).
    monkeypatch.setattr(fake_vllm, "_LLMEngine", lambda in_process: types.SimpleNamespace())
    with pytest.raises(RunFailure, match="another process"):
        vllm_engine(tiny_model_dir)


def test_too_little_free_gpu_memory_names_the_flag(fake_vllm, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(fake_vllm, "FAKE_GPU_FREE_GIB", 20.0)  # of 80: a policy holds the rest
    with pytest.raises(BadInputError) as caught:
        vllm_engine(tiny_model_dir, gpu_memory_utilization=0.9)
    message = str(caught.value)
    assert "--gpu-memory-utilization 0.9" in message and "20.00/80.00 GiB" in message
    assert "--vllm-enable-sleep-mode" in message and "\n" not in message
    assert vllm_engine(tiny_model_dir, gpu_memory_utilization=0.2).llm is not None


def test_fake_follows_vllm_033_stop_order(fake_vllm, tiny_model_dir, contexts, monkeypatch):
    # v0.33 checks EOS before the length: an EOS drawn as the last allowed token is "stop".
    llm = fake_vllm.LLM(str(tiny_model_dir), seed=0)
    eos = llm.get_tokenizer().eos_token_id
    monkeypatch.setattr(llm, "_sample", lambda *args: eos)
    params = fake_vllm.SamplingParams(temperature=0.0, max_tokens=1, logprobs=1)
    (output,) = llm.generate([fake_vllm.TokensPrompt(prompt_token_ids=contexts[0])], params)
    assert output.outputs[0].token_ids == [eos] and output.outputs[0].finish_reason == "stop"


def test_engine_vllm_without_vllm_is_a_one_line_bad_input(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(BadInputError) as caught:
        create_engine("vllm", model=str(tiny_model_dir), seed=0)
    assert str(caught.value) == VLLM_MISSING
    assert "pip install 'treerpo[vllm]'" in VLLM_MISSING and "\n" not in VLLM_MISSING
    with pytest.raises(BadInputError):
        VLLMEngine(str(tiny_model_dir), seed=0)


# ---- the stand-in's faithfulness to vLLM v0.33.0 ----


def test_fake_logprob_dicts_put_the_sampled_token_first_and_rank_it(fake_vllm, tiny_model_dir):
    llm = fake_vllm.LLM(model=str(tiny_model_dir), seed=0)
    sizes = set()
    for temperature in (0.01, 3.0):  # nearly always the top-1, then nearly never
        params = fake_vllm.SamplingParams(
            temperature=temperature, max_tokens=20, logprobs=1, seed=4
        )
        (output,) = llm.generate([fake_vllm.TokensPrompt(prompt_token_ids=[5, 6, 7])], params)
        completion = output.outputs[0]
        assert completion.finish_reason == "length" and len(completion.token_ids) == 20
        for token_id, candidates in zip(completion.token_ids, completion.logprobs, strict=True):
            assert next(iter(candidates)) == token_id  # the sampled token is inserted first
            sizes.add(len(candidates))
            if len(candidates) == 2:
                assert candidates[token_id].rank > 1
            else:
                assert candidates[token_id].rank == 1
    assert sizes == {1, 2}


def test_fake_sampling_params_validate_like_vllm(fake_vllm):
    with pytest.raises(ValueError, match="top_p"):
        fake_vllm.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        fake_vllm.SamplingParams(top_k=-2)
    greedy = fake_vllm.SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2)
    assert (greedy.top_p, greedy.top_k, greedy.min_p) == (1.0, 0, 0.0)
    with pytest.raises(TypeError):
        fake_vllm.LLM(model="unused", no_such_engine_arg=True)


def test_follow_policy_loads_a_published_checkpoint_into_the_served_model(
    fake_vllm, tiny_model_dir, tmp_path
):
    """`generate --follow-policy` with vLLM: a trainer's checkpoint folder (save_pretrained's
    safetensors) is loaded into the served model in place, names as HF writes them."""
    from treerpo.growth.follow import PolicyFollower

    engine = vllm_engine(tiny_model_dir)
    trained = load_policy(str(tiny_model_dir), device="cpu")
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    trained.save_pretrained(tmp_path / "out" / "checkpoint-3")
    follower = PolicyFollower(directory=str(tmp_path / "out"), engine=engine, base_version="b")
    assert follower.refresh() and follower.step == 3
    served = dict(engine.llm._model.named_parameters())
    for name, parameter in trained.named_parameters():
        torch.testing.assert_close(served[name], parameter.detach())
    assert engine.llm.prefix_cache_resets == 1

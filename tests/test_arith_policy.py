"""The shipped `arith-tiny` policy: loads safely through the project's loaders and answers."""

from __future__ import annotations

import pytest

from treerpo.engines.base import GenerationRequest, SamplingSettings
from treerpo.engines.hf import HFEngine
from treerpo.engines.loading import load_policy, load_tokenizer
from treerpo.policies import arith_policy_path
from treerpo.problems.arith import load_arith_split
from treerpo.problems.prompts import build_prompt
from treerpo.scoring.answers import extract_boxed
from treerpo.scoring.verify import is_correct

GREEDY = SamplingSettings(
    temperature=0.0, top_p=None, top_k=None, min_p=None, repetition_penalty=None
)


def greedy_results(policy, tokenizer, rows, *, max_new_tokens: int):
    """Greedy decoding of `rows`' problems, one batch, with the project's HF engine."""
    engine = HFEngine(policy, tokenizer, seed=0, batch_size=len(rows))
    requests = [
        GenerationRequest(
            context_token_ids=build_prompt(tokenizer, row["problem"]).token_ids,
            max_new_tokens=max_new_tokens,
        )
        for row in rows
    ]
    return engine.generate(requests, sampling=GREEDY, topk=1)


@pytest.fixture(scope="module")
def arith_policy():
    policy_dir = str(arith_policy_path())
    policy = load_policy(policy_dir, torch_dtype="float32", device="cpu")
    tokenizer = load_tokenizer(policy_dir)
    return policy, tokenizer


def test_the_policy_ships_as_safetensors_with_its_record():
    policy_dir = arith_policy_path()
    file_names = {path.name for path in policy_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "MADE.md"} <= file_names
    assert "tokenizer.json" in file_names
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in file_names)
    made = (policy_dir / "MADE.md").read_text(encoding="utf-8")
    assert "scripts/warm_start_arith.py" in made and "--seed 0" in made
    assert (policy_dir / "model.safetensors").stat().st_size < 10_000_000


def test_the_policy_is_a_small_qwen2_with_the_chat_markers(arith_policy):
    policy, tokenizer = arith_policy
    assert policy.config.model_type == "qwen2"
    assert next(policy.parameters()).device.type == "cpu"
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = build_prompt(tokenizer, "Compute 2 + 3.")
    assert prompt.text == "<|im_start|>user\nCompute 2 + 3.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(prompt.token_ids) == prompt.text
    # Digits are single tokens, so numbers are spelled digit by digit.
    assert len(tokenizer.encode("1234", add_special_tokens=False)) == 4


def test_greedy_decoding_writes_boxed_answers(arith_policy):
    policy, tokenizer = arith_policy
    test_rows = load_arith_split("test")[:20]
    results = greedy_results(policy, tokenizer, test_rows, max_new_tokens=80)
    completions = [
        tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=True) for result in results
    ]
    assert all(result.finish_reason == "eos" for result in results)
    assert all(extract_boxed(completion) is not None for completion in completions)
    num_correct = sum(
        is_correct(completion, row["answer"])
        for completion, row in zip(completions, test_rows, strict=True)
    )
    assert num_correct >= 1

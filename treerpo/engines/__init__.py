"""Generation engines: one protocol (`base.Engine`), two implementations, one factory.

`create_engine("auto")` picks vLLM when it is importable and a CUDA GPU is present, else the
Hugging Face transformers engine. Both are imported lazily: vLLM only exists on GPU machines.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Literal

from treerpo.engines.base import Engine, GenerationRequest, GenerationResult, SamplingSettings
from treerpo.errors import BadInputError

if TYPE_CHECKING:  # torch loads with the first engine, not with this package
    from treerpo.config import EngineConfig, LogprobTemperatureMode
    from treerpo.engines.loading import AttnImplementationName, TorchDtypeName

EngineName = Literal["auto", "hf", "vllm"]

__all__ = [
    "Engine",
    "EngineName",
    "GenerationRequest",
    "GenerationResult",
    "SamplingSettings",
    "create_engine",
    "create_engine_from_config",
    "resolve_engine_name",
    "resolve_logprob_temperature",
]


def resolve_engine_name(name: str) -> Literal["hf", "vllm"]:
    """`auto` → "vllm" when vLLM is importable and CUDA is available, else "hf"."""
    if name in ("hf", "vllm"):
        return name  # type: ignore[return-value]
    if name != "auto":
        raise BadInputError(f"unknown engine {name!r}: use auto, hf or vllm")
    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return "hf"


def resolve_logprob_temperature(
    mode: LogprobTemperatureMode, *, sampling_temperature: float | None
) -> float:
    """The `logprob_temperature` an engine is built with, for `--logprob-temperature MODE`:
    "raw" → 1.0 (log_softmax(logits)); "sampling" → the sampling temperature
    (log_softmax(logits / T), TRL's transform). `sampling_temperature` None means the caller does
    not sample (greedy eval), where only raw has a meaning."""
    if mode == "raw":
        return 1.0
    if mode != "sampling":
        raise BadInputError(f"unknown logprob temperature {mode!r}: use raw or sampling")
    if sampling_temperature is None:
        raise BadInputError("--logprob-temperature sampling needs a sampling temperature")
    return float(sampling_temperature)


def create_engine(
    name: str,
    *,
    model: str,
    seed: int,
    torch_dtype: TorchDtypeName = "auto",
    attn_implementation: AttnImplementationName = "auto",
    trust_remote_code: bool = False,
    logprob_temperature: float = 1.0,
    batch_size: int = 64,
    device: str | None = None,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    enable_prefix_caching: bool = True,
    max_logprobs: int = 20,
    vllm_tensor_parallel_size: int = 1,
    vllm_max_num_seqs: int | None = None,
    vllm_enable_sleep_mode: bool = False,
):
    """Load `model` into the named engine; returns `(engine, tokenizer)`.

    `batch_size`, `device` and `attn_implementation` apply to the HF engine;
    `gpu_memory_utilization`, `max_model_len`, `max_logprobs` and the `vllm_*` settings to vLLM;
    `enable_prefix_caching` to both (the HF engine keeps the KV of the previous call's rows for
    the next wave). Errors are `BadInputError`s.
    """
    from treerpo.engines.loading import (
        eos_token_ids,
        load_generation_config,
        load_policy,
        load_tokenizer,
    )

    resolved = resolve_engine_name(name)
    if resolved == "vllm":
        from treerpo.engines.vllm import VLLMEngine, import_vllm

        import_vllm()  # fail on a missing vLLM before loading anything
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        engine = VLLMEngine(
            model,
            seed=seed,
            torch_dtype=torch_dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            trust_remote_code=trust_remote_code,
            logprob_temperature=logprob_temperature,
            max_logprobs=max_logprobs,
            eos_token_ids=eos_token_ids(tokenizer, load_generation_config(model)),
            tensor_parallel_size=vllm_tensor_parallel_size,
            max_num_seqs=vllm_max_num_seqs,
            enable_sleep_mode=vllm_enable_sleep_mode,
        )
        return engine, tokenizer

    from treerpo.engines.hf import HFEngine

    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    policy = load_policy(
        model, torch_dtype=torch_dtype, device=device, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    engine = HFEngine(
        policy,
        tokenizer,
        seed=seed,
        logprob_temperature=logprob_temperature,
        batch_size=batch_size,
        prefix_cache=enable_prefix_caching,
    )
    return engine, tokenizer


def create_engine_from_config(
    config: EngineConfig, *, sampling_temperature: float | None = None, max_logprobs: int = 20
):
    """`create_engine` with the settings of an `EngineConfig` (generate, train and eval share
    it); returns `(engine, tokenizer)`. `sampling_temperature` is the temperature the engine
    will sample at (None: greedy), which `config.logprob_temperature` "sampling" needs."""
    return create_engine(
        config.engine,
        model=config.model,
        seed=config.seed,
        torch_dtype=config.torch_dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        logprob_temperature=resolve_logprob_temperature(
            config.logprob_temperature, sampling_temperature=sampling_temperature),
        batch_size=config.generation_batch_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        enable_prefix_caching=config.enable_prefix_caching,
        max_logprobs=max_logprobs,
        vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
        vllm_max_num_seqs=config.vllm_max_num_seqs,
        vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
    )

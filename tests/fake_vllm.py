"""A stand-in for the subset of vLLM's offline API that `treerpo.engines.vllm` uses.

vLLM needs a CUDA GPU and cannot be installed here, so the tests put this module in
`sys.modules["vllm"]`. It mirrors vLLM v0.33.0 (V1 engine), read from its sources:

- `LLM(model, *, dtype, seed, gpu_memory_utilization, max_model_len, enable_prefix_caching,
  trust_remote_code, logprobs_mode="raw_logprobs", max_logprobs=20, tensor_parallel_size,
  enable_sleep_mode, max_num_seqs, ...)`; unknown keywords raise TypeError as `EngineArgs` would;
- start-up memory check (`vllm/v1/worker/utils.py`): a ValueError "Free memory on device ... is
  less than desired GPU memory utilization ..." when `gpu_memory_utilization` x total is more
  than is free; this fake's GPU has `FAKE_GPU_TOTAL_GIB` with `FAKE_GPU_FREE_GIB` free (module
  attributes the tests set);
- `LLM.llm_engine.model_executor` exists only with the engine core in-process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; vLLM's default is 1), as in `vllm/v1/engine/llm_engine.py`;
  `apply_model` in the multiprocess mode raises, as pickling a callable does there without
  `VLLM_ALLOW_INSECURE_SERIALIZATION`;
- `LLM.generate(prompts, sampling_params, *, use_tqdm=True, lora_request=None, priority=None)`
  with `TokensPrompt` dicts and one `SamplingParams` or one per prompt, returning
  `RequestOutput`s in prompt order;
- the V1 sampler's order (`vllm/v1/sample/sampler.py`): raw logprobs first, then repetition
  penalty over prompt + output tokens, temperature, min-p, top-k/top-p, and a draw from
  `probs / Exponential(1)`; temperature < 1e-5 is greedy;
- the logprob dicts of `LogprobsProcessor._make_logprob_dict`: the sampled token first (with its
  rank = number of tokens with logprob >= its own), then the top-k with ranks 1..k, so a
  sampled token inside the top-k is overwritten by its top-k entry;
- `check_stop` in `vllm/v1/core/sched/utils.py` (v0.33 order): the tokenizer's EOS gives
  "stop", then a stop token id (a generation-config EOS id is one) gives "stop" with
  `stop_reason` = the id, and only then the length (max_tokens or max_model_len) gives "length";
  the stop token stays in `token_ids`;
- `reset_prefix_cache(reset_running_requests=False, reset_connector=False)`;
- `sleep(level=1, mode="abort")` / `wake_up(tags=None)` (`vllm/v1/engine/core.py`) with tags
  from ("weights", "kv_cache", "scheduling"), needing `enable_sleep_mode=True`: any level pauses
  the scheduler, level 1+ releases the weights and the KV cache, and the scheduler resumes only
  once both are awake again; level 2 discards the weights (this fake overwrites them with NaN,
  so serving them before a weight push shows), level 1 keeps them; generating while asleep is
  refused (vLLM would not make progress; the caller must not do it);
- `SamplingParams` defaults and validation (`top_k` 0 or -1 disables, greedy resets
  top_p/top_k/min_p), `logprobs` above `max_logprobs` is a ValueError.

It decodes one request at a time with a full forward per step on a real (tiny) HF model, so the
numbers it reports are the model's. Calls are recorded on the instance for the tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch

_SAMPLING_EPS = 1e-5

# EngineArgs fields the fake accepts besides those it uses (the real one has many more).
_OTHER_ENGINE_ARGS = {
    "tokenizer",
    "tensor_parallel_size",
    "enforce_eager",
    "max_num_seqs",
    "max_num_batched_tokens",
    "distributed_executor_backend",
    "quantization",
    "revision",
}
_WAKE_TAGS = ("weights", "kv_cache", "scheduling")
FAKE_GPU_TOTAL_GIB = 80.0
FAKE_GPU_FREE_GIB = 80.0


class _LLMEngine:
    """`LLM.llm_engine`: has `model_executor` only when the engine core runs in-process."""

    def __init__(self, in_process: bool) -> None:
        if in_process:
            self.model_executor = object()


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
    prompt: str


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: None
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.n != 1:
            raise NotImplementedError("the fake samples n=1 only")
        if self.repetition_penalty <= 0.0:
            raise ValueError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not isinstance(self.top_k, int):
            raise TypeError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.temperature < _SAMPLING_EPS:
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0


@dataclass
class _Call:
    prompts: list[Any]
    params: list[SamplingParams]


@dataclass
class LLM:
    """A one-request-at-a-time engine over a transformers model loaded from `model`."""

    model: str
    dtype: str = "auto"
    seed: int | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    logprobs_mode: str = "raw_logprobs"
    max_logprobs: int = 20
    enable_sleep_mode: bool = False
    extra_engine_args: dict[str, Any] = field(default_factory=dict)
    calls: list[_Call] = field(default_factory=list)
    prefix_cache_resets: int = 0
    # ("sleep", level), ("wake_up", tags), ("apply_model",), ("reset_prefix_cache",) and
    # ("generate",), in call order
    events: list[tuple] = field(default_factory=list)

    def __init__(self, model: str, **kwargs: Any) -> None:
        known = {name for name in type(self).__dataclass_fields__} - {
            "model",
            "extra_engine_args",
            "calls",
            "prefix_cache_resets",
            "events",
        }
        unknown = set(kwargs) - known - _OTHER_ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword argument(s) {unknown}")
        if kwargs.get("logprobs_mode", "raw_logprobs") not in ("raw_logprobs", "raw_logits"):
            raise NotImplementedError("the fake implements raw logprobs only")
        self.model = model
        for name in known:
            setattr(self, name, kwargs.get(name, type(self).__dataclass_fields__[name].default))
        self.extra_engine_args = {k: v for k, v in kwargs.items() if k in _OTHER_ENGINE_ARGS}
        self.calls = []
        self.prefix_cache_resets = 0
        self.events = []
        self._asleep: set[str] = set()  # "weights" / "kv_cache": executor memory released
        self._scheduler_paused = False
        self._weights_discarded = False  # level-2 sleep, no weights loaded since
        requested_gib = self.gpu_memory_utilization * FAKE_GPU_TOTAL_GIB
        if FAKE_GPU_FREE_GIB < requested_gib:
            raise ValueError(
                f"Free memory on device cuda:0 ({FAKE_GPU_FREE_GIB:.2f}/{FAKE_GPU_TOTAL_GIB:.2f} "
                "GiB) on startup is less than desired GPU memory utilization "
                f"({self.gpu_memory_utilization}, {requested_gib:.2f} GiB). Decrease GPU memory "
                "utilization or reduce GPU memory used by other processes."
            )
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        self.llm_engine = _LLMEngine(in_process)
        if self.seed is None:
            self.seed = 0  # V1 sets the default seed to 0
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self._global_generator = torch.Generator().manual_seed(self.seed)
        self._eos_token_id = self._tokenizer.eos_token_id
        config_eos = self._model.generation_config.eos_token_id
        config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
        self._extra_stop_ids = [i for i in config_eos if i != self._eos_token_id]

    def get_tokenizer(self):
        return self._tokenizer

    def reset_prefix_cache(
        self, reset_running_requests: bool = False, reset_connector: bool = False
    ) -> bool:
        self.prefix_cache_resets += 1
        self.events.append(("reset_prefix_cache",))
        return True

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """EngineCore.sleep: pause the scheduler; level 1+ also releases the executor's memory
        (level 1 keeps the weights on the CPU, level 2 discards them)."""
        if not self.enable_sleep_mode:
            raise ValueError("Sleep mode is not enabled (enable_sleep_mode=False)")
        if level not in (0, 1, 2):
            raise ValueError(f"invalid sleep level {level}")
        self.events.append(("sleep", level))
        self._scheduler_paused = True
        if level == 0:
            return
        self._asleep |= {"weights", "kv_cache"}
        if level == 2:
            self._weights_discarded = True
            with torch.no_grad():
                for parameter in self._model.parameters():
                    parameter.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """EngineCore.wake_up: reallocate the tagged memory; the scheduler resumes once all
        executor memory is resident again ("scheduling" alone resumes a level-0 sleep)."""
        if not self.enable_sleep_mode:
            raise ValueError("Sleep mode is not enabled (enable_sleep_mode=False)")
        unknown = set(tags or ()) - set(_WAKE_TAGS)
        if unknown:
            raise ValueError(f"unknown wake-up tags {sorted(unknown)}")
        self.events.append(("wake_up", None if tags is None else tuple(tags)))
        memory_tags = {"weights", "kv_cache"} if tags is None else set(tags) - {"scheduling"}
        self._asleep -= memory_tags
        if not self._asleep:
            self._scheduler_paused = False
        return not self._asleep

    def is_sleeping(self) -> bool:
        return bool(self._asleep) or self._scheduler_paused

    def apply_model(self, func):
        """Run `func` on the model in each worker (one here); the model has `load_weights`."""
        if not hasattr(self.llm_engine, "model_executor"):
            raise TypeError("Object of type function is not serializable (set "
                            "VLLM_ALLOW_INSECURE_SERIALIZATION=1 to allow pickle)")
        if "weights" in self._asleep:
            raise RuntimeError("the model's weights are asleep: wake_up(tags=['weights'])")
        self.events.append(("apply_model",))
        self._weights_discarded = False  # treerpo's `func` loads every weight
        model = self._model
        if not hasattr(model, "load_weights"):

            def load_weights(weights):
                parameters = dict(model.named_parameters())
                loaded = set()
                with torch.no_grad():
                    for name, tensor in weights:
                        parameters[name].copy_(tensor)
                        loaded.add(name)
                return loaded

            model.load_weights = load_weights
        return [func(model)]

    def generate(
        self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None
    ) -> list[RequestOutput]:
        if isinstance(prompts, dict):
            prompts = [prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        if self.is_sleeping():
            raise RuntimeError(f"generate() while asleep ({sorted(self._asleep)} released)")
        if self._weights_discarded:
            raise RuntimeError("generate() with the weights a level-2 sleep discarded")
        for params in sampling_params:
            if params.logprobs is not None and params.logprobs > self.max_logprobs:
                raise ValueError(
                    f"Requested sample logprobs of {params.logprobs}, which is greater than max "
                    f"allowed: {self.max_logprobs}"
                )
        self.calls.append(_Call(list(prompts), list(sampling_params)))
        self.events.append(("generate",))
        return [
            self._generate_one(str(index), prompt, params)
            for index, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True))
        ]

    @torch.inference_mode()
    def _generate_one(self, request_id: str, prompt, params: SamplingParams) -> RequestOutput:
        prompt_token_ids = list(prompt["prompt_token_ids"])
        if self.max_model_len is not None and len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(prompt_token_ids)}) is longer than the maximum "
                f"model length of {self.max_model_len}."
            )
        generator = self._global_generator
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        output_token_ids: list[int] = []
        position_logprobs: list[dict[int, Logprob]] = []
        stop_ids = set(params.stop_token_ids or []) | set(self._extra_stop_ids)
        finish_reason = stop_reason = None
        while finish_reason is None:
            sequence = torch.tensor([prompt_token_ids + output_token_ids])
            logits = self._model(sequence).logits[0, -1].float()  # (V,)
            raw_logprobs = logits.log_softmax(dim=-1)  # (V,)
            token_id = self._sample(logits, params, prompt_token_ids + output_token_ids, generator)
            output_token_ids.append(token_id)
            if params.logprobs is not None:
                position_logprobs.append(
                    self._logprob_dict(
                        raw_logprobs, token_id, params.logprobs, detokenize=params.detokenize
                    )
                )
            num_tokens = len(prompt_token_ids) + len(output_token_ids)
            if not params.ignore_eos and token_id == self._eos_token_id:
                finish_reason = "stop"
            elif token_id in stop_ids:
                finish_reason, stop_reason = "stop", token_id
            elif len(output_token_ids) >= params.max_tokens or (
                self.max_model_len is not None and num_tokens >= self.max_model_len
            ):
                finish_reason = "length"
        completion = CompletionOutput(
            index=0,
            text=self._tokenizer.decode(output_token_ids) if params.detokenize else "",
            token_ids=output_token_ids,
            cumulative_logprob=(
                sum(d[t].logprob for d, t in zip(position_logprobs, output_token_ids, strict=True))
                if params.logprobs is not None
                else None
            ),
            logprobs=position_logprobs if params.logprobs is not None else None,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
        )
        return RequestOutput(
            request_id, prompt.get("prompt"), prompt_token_ids, None, [completion], finished=True
        )

    def _sample(self, logits, params: SamplingParams, seen_token_ids, generator) -> int:
        logits = logits.clone()  # (V,)
        if params.repetition_penalty != 1.0:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[torch.tensor(seen_token_ids)] = True
            penalised = torch.where(
                logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty
            )
            logits = torch.where(seen, penalised, logits)
        if params.temperature < _SAMPLING_EPS:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.min_p > 0.0:
            probs = logits.softmax(dim=-1)
            logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
        if params.top_k > 0:
            kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logits, sorted_ids = torch.sort(logits)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= 1.0 - params.top_p
            remove[-1] = False
            logits[sorted_ids[remove]] = float("-inf")
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=generator)
        return int((probs / noise).argmax())

    def _logprob_dict(
        self, raw_logprobs, token_id: int, num_logprobs: int, *, detokenize: bool
    ) -> dict[int, Logprob]:
        sampled_logprob = raw_logprobs[token_id]
        sampled_rank = int((raw_logprobs >= sampled_logprob).sum())
        top_logprobs, top_ids = torch.topk(raw_logprobs, num_logprobs)
        token_ids = [token_id, *top_ids.tolist()]
        logprobs = [float(sampled_logprob), *top_logprobs.tolist()]
        ranks = [sampled_rank, *range(1, num_logprobs + 1)]
        return {
            candidate_id: Logprob(
                logprob=logprob,
                rank=rank,
                decoded_token=(
                    self._tokenizer.convert_ids_to_tokens(candidate_id) if detokenize else None
                ),
            )
            for candidate_id, logprob, rank in zip(token_ids, logprobs, ranks, strict=True)
        }

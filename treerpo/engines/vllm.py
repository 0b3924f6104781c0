"""The vLLM engine: offline `vllm.LLM` with token-id prompts, raw top-k logprobs, prefix caching.

Written against vLLM's V1 offline API as read in the v0.33.0 sources (the newest release, and the
upper end of the range `treerpo[vllm]` accepts), having first been written against v0.11.0: every
call below exists with the same meaning in both. vLLM cannot be installed on the CPU machines
treerpo is developed on, so the tests run this engine against `tests/fake_vllm.py`, a stand-in of
the same API subset that follows v0.33.0. What is used:

- `vllm.LLM(model=, dtype=, seed=, gpu_memory_utilization=, max_model_len=,
  enable_prefix_caching=, trust_remote_code=, logprobs_mode="raw_logprobs", max_logprobs=,
  tensor_parallel_size=, enable_sleep_mode=, max_num_seqs=)`;
- `LLM.generate([TokensPrompt(prompt_token_ids=...)], [SamplingParams(...)], use_tqdm=False)`,
  one `SamplingParams` per request (its own `max_tokens` and `seed`);
- `RequestOutput.outputs[0]`: `.token_ids` (the stop token included), `.finish_reason`
  ("stop": EOS or a generation-config stop id; "length": `max_tokens` or `max_model_len`) and
  `.logprobs`, one `{token_id: Logprob(logprob, rank, decoded_token)}` per position holding the
  top-`logprobs` tokens *and* the sampled token (so k or k + 1 entries; the sampled token comes
  first and is overwritten by its top-k entry when it is one of them);
- `LLM.apply_model(fn)` and `LLM.reset_prefix_cache()` for in-place weight updates;
- `LLM.sleep(level=2)` and `LLM.wake_up(tags=[...])` with `--vllm-enable-sleep-mode`.

Logprobs: with `logprobs_mode="raw_logprobs"` (V1's default, set explicitly) vLLM reports
`log_softmax(logits)` before penalties, temperature and truncation: exactly the behaviour logprob
of `treerpo.engines.base` at `logprob_temperature = 1` (`--logprob-temperature raw`). vLLM has no
mode for `--logprob-temperature sampling`, log_softmax(logits / T): its "processed_logprobs" are
taken after the repetition penalty and after top-k/top-p masking as well as the temperature, so
they equal it only with every other transform off; and the mode is one per engine, while tree
growth also needs the raw top-k. So this engine refuses any logprob temperature but 1.0, naming
`--logprob-temperature raw` and `--engine hf` (which computes the sampling transform exactly).

Weight updates: `load_weights` runs `model.load_weights(named_tensors)` inside the worker through
`LLM.apply_model`, the public route to the model object (`apply_model` also unwraps a CUDA-graph
wrapper), then resets the prefix cache, whose blocks hold keys and values of the old weights.
This needs the engine core in this process: with V1 multiprocessing `apply_model` would pickle
the function, weights included, to another process (and vLLM refuses to without
`VLLM_ALLOW_INSECURE_SERIALIZATION`). So the constructor sets `VLLM_ENABLE_V1_MULTIPROCESSING=0`,
refuses a user's explicit `=1`, and checks afterwards that the engine really is in-process (the
V1 `LLMEngine` has `model_executor` only then). With tensor parallelism the workers are other
processes of vLLM's executor and each receives its shard's tensors through `apply_model`.

Colocation (chained training, where the policy and its optimizer share the GPU): vLLM reserves
`gpu_memory_utilization` of the GPU's *total* memory and raises at start-up when that much is not
free; the constructor turns that into a one-line error naming `--gpu-memory-utilization`. With
sleep mode, `sleep()` after each growth phase frees the weights and the KV cache (level 2: the
weights are replaced by the next push anyway), and `load_weights` wakes the weights, loads the
new ones, then wakes the KV cache, so both are never allocated during the update.

Sampling differences with the HF engine, none of which touch the reported logprobs: vLLM applies
min-p before top-k/top-p, and each request gets its own seed drawn from the engine's seeded
generator, so a run is reproducible whatever the batch composition (vLLM's per-request
generators). v0.33 checks EOS and stop ids before the length; v0.11 checked the length first,
which `completion_to_result` undoes (an EOS at the budget is an EOS either way).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from treerpo.engines.base import GenerationRequest, GenerationResult, SamplingSettings
from treerpo.engines.loading import TorchDtypeName, resolve_dtype
from treerpo.errors import BadInputError, RunFailure

VLLM_MISSING = "--engine vllm needs vLLM: pip install 'treerpo[vllm]' on a machine with a CUDA GPU"
_SEED_RANGE = 2**31 - 1
_IN_PROCESS_VARIABLE = "VLLM_ENABLE_V1_MULTIPROCESSING"


def import_vllm():
    """The `vllm` module, or BadInputError saying how to get it."""
    try:
        import vllm
    except ImportError as error:
        raise BadInputError(VLLM_MISSING) from error
    return vllm


def completion_to_result(
    completion, *, topk: int, eos_token_ids: Iterable[int] = ()
) -> GenerationResult:
    """Map one vLLM `CompletionOutput` (with raw logprobs) to a `GenerationResult`.

    The top-k at a position is its logprob dict without the sampled token when that token is an
    extra (k + 1 entries), sorted by decreasing logprob. Finish reason "stop" is "eos"; "length"
    is "budget", except when the last token is an EOS id: vLLM checks the length first, the HF
    engine reports the EOS, and tree growth needs to know the sequence ended.
    """
    if completion.finish_reason not in ("stop", "length"):
        raise RunFailure(f"vLLM ended a request with finish reason {completion.finish_reason!r}")
    token_ids = np.asarray(completion.token_ids, dtype=np.int32)  # (T,)
    position_logprobs: Sequence[Mapping[int, object]] = completion.logprobs or []
    if len(position_logprobs) != len(token_ids):
        raise RunFailure(
            f"vLLM returned {len(position_logprobs)} logprob entries for {len(token_ids)} tokens "
            "(were logprobs requested?)"
        )
    num_tokens = len(token_ids)
    logprobs = np.empty(num_tokens, dtype=np.float32)  # (T,)
    topk_token_ids = np.empty((num_tokens, topk), dtype=np.int32)  # (T, K)
    topk_logprobs = np.empty((num_tokens, topk), dtype=np.float32)  # (T, K)
    for position, (token_id, candidates) in enumerate(
        zip(token_ids.tolist(), position_logprobs, strict=True)
    ):
        logprobs[position] = candidates[token_id].logprob
        entries = [
            (candidate_id, entry.logprob)
            for candidate_id, entry in candidates.items()
            if not (len(candidates) > topk and candidate_id == token_id)
        ]
        if len(entries) < topk:
            raise RunFailure(f"vLLM returned {len(entries)} top logprobs, {topk} were requested")
        entries.sort(key=lambda entry: -entry[1])
        topk_token_ids[position] = [candidate_id for candidate_id, _ in entries[:topk]]
        topk_logprobs[position] = [logprob for _, logprob in entries[:topk]]
    ended_at_eos = num_tokens > 0 and int(token_ids[-1]) in set(eos_token_ids)
    finish_reason = "eos" if completion.finish_reason == "stop" or ended_at_eos else "budget"
    return GenerationResult(
        token_ids=token_ids,
        logprobs=logprobs,
        topk_token_ids=topk_token_ids,
        topk_logprobs=topk_logprobs,
        finish_reason=finish_reason,
    )


class VLLMEngine:
    """`Engine` over an offline `vllm.LLM` (one CUDA GPU, or several with tensor parallelism)."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        seed: int,
        torch_dtype: TorchDtypeName = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
        logprob_temperature: float = 1.0,
        max_logprobs: int = 20,
        eos_token_ids: Iterable[int] = (),
        tensor_parallel_size: int = 1,
        max_num_seqs: int | None = None,
        enable_sleep_mode: bool = False,
    ) -> None:
        if logprob_temperature != 1.0:
            raise BadInputError(
                "--engine vllm reports raw logprobs only: use --logprob-temperature raw "
                f"or --engine hf (got logprob temperature {logprob_temperature})"
            )
        if os.environ.get(_IN_PROCESS_VARIABLE, "0") not in ("", "0"):
            raise BadInputError(
                f"{_IN_PROCESS_VARIABLE}={os.environ[_IN_PROCESS_VARIABLE]} runs vLLM's engine "
                "in another process, where treerpo cannot push new weights: unset it"
            )
        vllm = import_vllm()
        self._vllm = vllm
        self.logprob_temperature = 1.0
        self.max_logprobs = max_logprobs
        self.eos_token_ids = tuple(eos_token_ids)
        self.enable_sleep_mode = enable_sleep_mode
        self.sleeping = False
        self.reseed(seed)
        os.environ[_IN_PROCESS_VARIABLE] = "0"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(torch_dtype, device=device)
        engine_arguments = {
            "model": model,
            "dtype": str(dtype).removeprefix("torch."),
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "enable_prefix_caching": enable_prefix_caching,
            "trust_remote_code": trust_remote_code,
            "logprobs_mode": "raw_logprobs",
            "max_logprobs": max_logprobs,
            "tensor_parallel_size": tensor_parallel_size,
            "enable_sleep_mode": enable_sleep_mode,
        }
        if max_num_seqs is not None:  # vLLM picks a default per GPU and usage when unset
            engine_arguments["max_num_seqs"] = max_num_seqs
        try:
            self.llm = vllm.LLM(**engine_arguments)
        except ValueError as error:
            if "GPU memory utilization" not in str(error):
                raise
            raise BadInputError(
                f"vLLM cannot reserve --gpu-memory-utilization {gpu_memory_utilization} of the "
                f"GPU ({' '.join(str(error).split())}): lower --gpu-memory-utilization, or free "
                "memory with --vllm-enable-sleep-mode"
            ) from error
        if not hasattr(self.llm.llm_engine, "model_executor"):
            raise RunFailure(
                "vLLM started its engine in another process although "
                f"{_IN_PROCESS_VARIABLE}=0: weights could not be pushed into it (was another "
                "vLLM engine created earlier in this process?)"
            )

    def _sampling_params(self, request: GenerationRequest, *, sampling: SamplingSettings, topk):
        # vLLM spells "disabled" as top_p=1, top_k=0 (-1 is accepted too), min_p=0, penalty=1.
        return self._vllm.SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            top_k=0 if sampling.top_k is None else sampling.top_k,
            min_p=0.0 if sampling.min_p is None else sampling.min_p,
            repetition_penalty=(
                1.0 if sampling.repetition_penalty is None else sampling.repetition_penalty
            ),
            max_tokens=request.max_new_tokens,
            logprobs=topk,
            seed=int(self._seeds.integers(_SEED_RANGE)),
            detokenize=False,
        )

    def reseed(self, seed: int) -> None:
        """Restart the per-request seeds at `seed` (as a fresh engine seeded `seed` draws them)."""
        self._seeds = np.random.default_rng(seed)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        sampling: SamplingSettings,
        topk: int,
    ) -> list[GenerationResult]:
        if topk > self.max_logprobs:
            raise BadInputError(
                f"top-k of {topk} logprobs is above vLLM's max_logprobs ({self.max_logprobs})"
            )
        if not requests:
            return []
        if self.sleeping:
            raise RunFailure("the vLLM engine is asleep: push weights (load_weights) first")
        prompts = [
            self._vllm.TokensPrompt(prompt_token_ids=[int(t) for t in request.context_token_ids])
            for request in requests
        ]
        params = [
            self._sampling_params(request, sampling=sampling, topk=topk) for request in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            completion_to_result(output.outputs[0], topk=topk, eos_token_ids=self.eos_token_ids)
            for output in outputs
        ]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Update the served weights in place (HF parameter names), then drop stale KV blocks.

        Asleep (sleep mode): wake the weights' memory, load, then wake the KV cache, so the
        cache is allocated only once the new weights are in.
        """
        weights = list(named_tensors)

        def load(model) -> None:
            model.load_weights(weights)

        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        self.llm.apply_model(load)
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the GPU memory of the weights and the KV cache until the next `load_weights`
        (sleep mode only; otherwise nothing to do). Level 2 discards the weights rather than
        copying them to CPU: the next push replaces them all."""
        if self.enable_sleep_mode and not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = True

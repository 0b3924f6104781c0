"""Chained (online) training: each batch of trees is grown by the current policy, stored, scored.

Batch b takes the next per_device_train_batch_size x gradient_accumulation_steps x processes
problems of the dataset (in a seeded order, reshuffled every epoch), and each process grows the
trees of its own share with `grow_and_store`, the code `treerpo generate` runs, so the trees are
persisted in the train run exactly like generated ones, then scored with `score_stored_trees`
(the default reward, or `--reward-fn`'s, as `treerpo score`).

The engine follows the policy:

- Hugging Face engine: it shares the trainer's model object, so every optimizer step is seen by
  the next batch for free. A fresh engine wrapper is made per batch with a seed derived from
  (seed, batch, process), which makes a resumed run grow exactly the trees the uninterrupted run
  would have grown.
- vLLM: one engine for the run; before each growth that follows an optimizer step the trainer's
  parameters are loaded into it in place (`engine.load_weights`), never through a checkpoint on
  disk. With `--vllm-enable-sleep-mode` the engine sleeps (weights and KV cache freed) from the
  end of each growth until that push, so the update has the GPU's memory to itself.

Both engines are built with the logprob temperature of `--logprob-temperature` (raw: 1.0;
sampling: the sampling temperature), which every grown tree stores and the trainer's forward uses.

After a restart, trees the run already grew for a batch's problems (same epoch) are reused rather
than grown twice (the store keeps one tree per problem, run and epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from treerpo.config import TrainConfig
from treerpo.errors import BadInputError
from treerpo.problems.sources import Problem, load_problems
from treerpo.provenance import tokenizer_fingerprint
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.training.data_order import tree_order

_SEED_STRIDE = 1_000_003


def load_chained_problems(config: TrainConfig) -> list[Problem]:
    """The problems of `config.data`; an empty selection is bad input."""
    data = config.data
    problem_set = load_problems(dataset=data.dataset, split=data.split, config=data.dataset_config,
                                limit=data.limit, offset=data.offset,
                                problem_field=data.problem_field, answer_field=data.answer_field)
    if not problem_set.problems:
        raise BadInputError(f"no usable problems in {data.dataset} ({data.split})")
    return problem_set.problems


class ChainedBatches:
    """`BatchSource` that grows, stores and scores each batch's trees with the current policy."""

    def __init__(
        self,
        *,
        store: Store,
        config: TrainConfig,
        problems: list[Problem],
        run_id: int,
        model,
        tokenizer,
        accelerator,
        trees_per_step: int,
        on_message: Callable[[str], None],
        reward_fn_spec: str | None = None,
    ) -> None:
        from treerpo.engines import (
            create_engine_from_config,
            resolve_engine_name,
            resolve_logprob_temperature,
        )

        self.store = store
        self.config = config
        self.problems = problems
        self.run_id = run_id
        self.model = model
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.trees_per_step = trees_per_step
        self.on_message = on_message
        self.reward_fn_spec = reward_fn_spec
        self.seconds = {"growth_seconds": 0.0, "scoring_seconds": 0.0}
        self.batches_per_epoch = math.ceil(len(problems) / trees_per_step)
        self.tokenizer_hash = tokenizer_fingerprint(tokenizer)
        self.base_policy_version: str | None = None
        config.prompt.build(tokenizer, problems[0].problem,  # no chat template: exit 2 now
                            messages=problems[0].messages)
        engine = config.engine
        self.logprob_temperature = resolve_logprob_temperature(
            engine.logprob_temperature, sampling_temperature=config.sampling.temperature)
        self.engine_name = resolve_engine_name(engine.engine)
        self.vllm_engine = None
        self._vllm_weights_stale = False  # the policy changed since vLLM last got its weights
        if self.engine_name == "vllm":
            self.vllm_engine, _ = create_engine_from_config(
                engine.model_copy(update={"engine": "vllm",
                                          "seed": engine.seed + accelerator.process_index}),
                sampling_temperature=config.sampling.temperature,
                max_logprobs=config.tree.entropy_topk)

    def batch_tree_ids(self, batch_index: int) -> list[int]:
        from accelerate.utils import gather_object

        from treerpo.growth.runner import grow_and_store
        from treerpo.scoring.store_scoring import score_stored_trees, select_trees_to_score

        config, rank = self.config, self.accelerator.process_index
        epoch, position = divmod(batch_index, self.batches_per_epoch)
        order = tree_order(num_trees=len(self.problems), seed=config.engine.seed, epoch=epoch)
        chosen = order[position * self.trees_per_step:(position + 1) * self.trees_per_step]
        mine = [self.problems[index] for index in chosen.tolist()][
            rank::self.accelerator.num_processes]
        own_ids: list[int] = []
        growth_seconds = scoring_seconds = 0.0
        # Before any branch: under FSDP gathering the weights is a collective of every process.
        started = time.perf_counter()
        self._refresh_vllm_weights()
        growth_seconds += time.perf_counter() - started  # the weight push is part of growth
        if mine:
            problem_ids = repository.upsert_problems(self.store, [
                (repository.ProblemKey(p.dataset, p.split, p.row_index), p.problem, p.reference)
                for p in mine])
            existing = repository.trees_of_problems(self.store, run_id=self.run_id,
                                                    problem_ids=problem_ids, epoch=epoch)
            if existing:
                self.on_message(f"batch {batch_index}: reusing {len(existing)} tree(s) this run "
                                "grew before the restart")
            todo = [(problem, problem_id) for problem, problem_id in zip(mine, problem_ids,
                                                                         strict=True)
                    if problem_id not in existing]
            if todo:
                started = time.perf_counter()
                grown = grow_and_store(
                    store=self.store, engine=self._engine(batch_index), tokenizer=self.tokenizer,
                    problems=[problem for problem, _ in todo],
                    problem_ids=[problem_id for _, problem_id in todo], run_id=self.run_id,
                    policy_version=self._policy_version(batch_index),
                    policy_step=batch_index * config.optimization.num_iterations,
                    tokenizer_hash=self.tokenizer_hash, prompt=config.prompt,
                    tree_settings=config.tree, sampling=config.sampling,
                    seed=self._seed(batch_index), epoch=epoch)
                existing.update({tree.problem_id: tree.tree_id for tree in grown})
                growth_seconds += time.perf_counter() - started
            own_ids = [existing[problem_id] for problem_id in problem_ids]
            unscored = select_trees_to_score(self.store, tree_ids=own_ids)
            if unscored:
                started = time.perf_counter()
                score_stored_trees(self.store, tree_ids=unscored,
                                   reward_fn_spec=self.reward_fn_spec)
                scoring_seconds = time.perf_counter() - started
        if self.vllm_engine is not None:
            self.vllm_engine.sleep()  # sleep mode: free vLLM's memory for the updates
        # This process's own times (under several processes, the main process's share).
        self.seconds = {"growth_seconds": growth_seconds, "scoring_seconds": scoring_seconds}
        if self.accelerator.num_processes == 1:
            return own_ids
        return [tree_id for ids in gather_object([own_ids]) for tree_id in ids]

    def last_batch_seconds(self) -> dict[str, float]:
        return dict(self.seconds)

    def after_checkpoint(self, step: int, path: Path) -> None:
        """Chained growth uses the trainer's own weights, not its checkpoints."""

    def after_update(self, model) -> None:
        """vLLM: its weights are now stale; they are pushed once, right before the next growth
        (with --num-iterations > 1 several updates share one push). The HF engine shares
        `model` already."""
        if self.vllm_engine is not None:
            self._vllm_weights_stale = True

    def _refresh_vllm_weights(self) -> None:
        """Push the policy's weights into vLLM when they changed (waking it from sleep mode)."""
        if self.vllm_engine is not None and (self._vllm_weights_stale
                                             or self.vllm_engine.sleeping):
            from treerpo.training.distributed import full_named_parameters

            self.vllm_engine.load_weights(full_named_parameters(self.model))
            self._vllm_weights_stale = False

    def _engine(self, batch_index: int):
        if self.vllm_engine is not None:
            return self.vllm_engine
        from treerpo.engines.hf import HFEngine

        return HFEngine(self.model, self.tokenizer, seed=self._seed(batch_index),
                        logprob_temperature=self.logprob_temperature,
                        batch_size=self.config.engine.generation_batch_size)

    def _seed(self, batch_index: int) -> int:
        stride = batch_index * self.accelerator.num_processes + self.accelerator.process_index
        return self.config.engine.seed * _SEED_STRIDE + stride

    def _policy_version(self, batch_index: int) -> str:
        """The first batch is grown by the base model itself (its weights' fingerprint, so
        replaying those trees on it is on-policy); later ones by the policy after N steps."""
        step = batch_index * self.config.optimization.num_iterations
        if step == 0:
            if self.base_policy_version is None:
                from treerpo.engines.loading import policy_version

                self.base_policy_version = policy_version(self.config.engine.model)
            return self.base_policy_version
        return f"{self.config.resolved_run_name()}@step-{step}"

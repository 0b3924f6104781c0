"""`treerpo train --follow`: train on the trees generate workers store, as they land.

The trainer updates the policy step by step and publishes `checkpoint-STEP` folders (every
`--save-steps`, and at the last step); `treerpo generate --follow-policy OUTPUT_DIR` workers load
the newest one between batches and record on each tree the step it was grown with
(`trees.policy_step`, 0 for the base model; `treerpo.growth.follow`). Each batch of the trainer
takes the oldest stored trees it has not trained on whose policy is fresh enough:

- **staleness** of a tree for the batch whose first update starts from the weights of step `w`
  (w = batch index x num_iterations) is `w - policy_step`. Trees staler than `--max-staleness`
  are skipped for good (counted in the metrics as `stale_trees_skipped`); with
  `--max-staleness 0` every tree was grown by exactly the weights it updates.
- **whose policy**: a tree's step is believed only when its weights fingerprint
  (`trees.policy_version`) is the one of the checkpoint this run published at that step (or of
  the base model at step 0), when this run knows it; a tree of a plain `generate` run (no step)
  counts as step 0 when its fingerprint is the base model's. Any other tree, and a tree of a
  step this run has not reached (a checkpoint left by an earlier, longer run), is off-policy:
  skipped and counted (`off_policy_trees_skipped`) unless `--allow-off-policy` (then trained,
  with no staleness). Trees of another tokenizer stop the run (exit 2): their ids mean other
  tokens to this model.
- **waiting**: until a full batch of fresh trees is stored, polling the store; the wait is
  `wait_seconds` in the metrics, and `--follow-timeout` gives up (exit 1) after that long
  without a full batch. Unscored trees are scored when they are taken, as `treerpo score` would.

At start the trainer writes OUTPUT_DIR/follow.json (its trees per step and --max-staleness),
from which generators bound how far they run ahead (`treerpo.growth.follow`).

A resumed run deletes the checkpoints of later steps a killed run left in OUTPUT_DIR first
(`remove_later_checkpoints`): generators load the highest step there.

Under several processes the main process chooses each batch and broadcasts it. A resumed run
knows what it trained from the store (the train run's recorded steps) and the fingerprints of
the checkpoints in OUTPUT_DIR.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerpo.config import FollowConfig
from treerpo.errors import BadInputError, RunFailure
from treerpo.provenance import policy_identity
from treerpo.store import repository
from treerpo.store.database import Store

# How often a wait tells the user what it waits for.
_WAIT_MESSAGE_SECONDS = 30.0


@dataclass
class _Queued:
    tree_id: int
    policy_step: int | None  # None: off-policy, trained with --allow-off-policy
    scored: bool


def _weights_identity(checkpoint: Path) -> str:
    """The weights fingerprint a generator records for trees grown with `checkpoint`."""
    from treerpo.engines.loading import policy_version

    return policy_identity(policy_version(str(checkpoint)))


def remove_later_checkpoints(output_dir: Path, *, step: int,
                             on_message: Callable[[str], None]) -> None:
    """A follow run resumed at `step` deletes the checkpoints of later steps a killed run left:
    generators load the highest step, and would grow with a policy the resumed run never has
    (it would overwrite them when it gets there anyway)."""
    import shutil

    from treerpo.training.checkpoints import checkpoint_step, list_checkpoints

    later = [path for path in list_checkpoints(output_dir) if checkpoint_step(path) > step]
    for path in later:
        shutil.rmtree(path)
    if later:
        on_message(f"removed {', '.join(path.name for path in later)}: later than the resumed "
                   f"step {step}, generators must not grow with them")


class FollowBatches:
    """`BatchSource` of `train --follow`: each batch is the oldest fresh trees (module doc)."""

    def __init__(self, *, store: Store, source_runs: Sequence[str], train_run_id: int,
                 follow: FollowConfig, trees_per_step: int, num_iterations: int,
                 total_steps: int, tokenizer_hash: str, base_policy_version: str, model: str,
                 allow_off_policy: bool, reward_fn_spec: str | None, output_dir: Path,
                 accelerator, on_message: Callable[[str], None] = lambda message: None) -> None:
        self.store = store
        self.run_names = list(source_runs)
        self.run_ids: list[int] | None = None  # once every followed run exists
        self._said_missing = False
        self.train_run_id = train_run_id
        self.follow = follow
        self.trees_per_step = trees_per_step
        self.num_iterations = num_iterations
        self.batches_per_epoch = max(math.ceil(total_steps / num_iterations), 1)
        self.tokenizer_hash = tokenizer_hash
        self.model = model
        self.allow_off_policy = allow_off_policy
        self.reward_fn_spec = reward_fn_spec
        self.accelerator = accelerator
        self.on_message = on_message
        # step -> weights fingerprint of this run's policy at that step.
        self.identities: dict[int, str] = {0: policy_identity(base_policy_version)}
        self._record_checkpoints(output_dir)
        self.seen: set[int] | None = None  # trees looked at (trained, queued or skipped)
        self.queue: list[_Queued] = []
        self.stale_skipped = self.off_policy_skipped = 0  # over the run
        self._last: dict[str, float] = {}
        if accelerator.is_main_process:
            self._tell_generators(output_dir)

    def _tell_generators(self, output_dir: Path) -> None:
        """Write OUTPUT_DIR/follow.json: the generators grow no more trees than this run can
        use before they go stale (`treerpo.growth.follow`)."""
        from treerpo.growth.follow import FOLLOW_FILE

        output_dir.mkdir(parents=True, exist_ok=True)
        temporary = output_dir / f".{FOLLOW_FILE}.{os.getpid()}"
        temporary.write_text(json.dumps({
            "trees_per_step": self.trees_per_step,
            "max_staleness": self.follow.max_staleness,
            "runs": self.run_names,
        }, indent=2) + "\n")
        os.replace(temporary, output_dir / FOLLOW_FILE)

    def _record_checkpoints(self, output_dir: Path) -> None:
        from treerpo.training.checkpoints import checkpoint_step, list_checkpoints

        for checkpoint in list_checkpoints(output_dir):
            try:
                self.identities[checkpoint_step(checkpoint)] = _weights_identity(checkpoint)
            except (BadInputError, OSError):  # rotated away or unreadable: trees of it stay
                continue                      # unverified, and off-policy unless allowed

    def after_checkpoint(self, step: int, path: Path) -> None:
        """The trainer published `path` at `step`: trees grown with it are this run's."""
        if self.accelerator.is_main_process:
            self.identities[step] = _weights_identity(path)

    def after_update(self, model) -> None:
        """Generators load the published checkpoints themselves."""

    def last_batch_seconds(self) -> dict[str, float]:
        return dict(self._last)

    def batch_tree_ids(self, batch_index: int) -> list[int]:
        chosen: list[Any] = [None]
        if self.accelerator.is_main_process:
            chosen[0] = self._choose(weights_step=batch_index * self.num_iterations)
        if self.accelerator.num_processes > 1:
            import torch.distributed

            torch.distributed.broadcast_object_list(chosen, src=0)
        tree_ids, self._last = chosen[0]
        return tree_ids

    def _choose(self, *, weights_step: int) -> tuple[list[int], dict[str, float]]:
        from treerpo.scoring.store_scoring import score_stored_trees

        started = time.perf_counter()
        if self.seen is None:  # first batch (of a fresh or resumed run)
            self.seen = repository.trained_tree_ids(self.store, run_id=self.train_run_id)
        stale_before, off_before = self.stale_skipped, self.off_policy_skipped
        last_message = started
        while True:
            self._take_arrivals(weights_step=weights_step)
            fresh = []
            for queued in self.queue:
                if (queued.policy_step is not None
                        and weights_step - queued.policy_step > self.follow.max_staleness):
                    self.stale_skipped += 1
                else:
                    fresh.append(queued)
            self.queue = fresh
            if len(self.queue) >= self.trees_per_step:
                break
            now = time.perf_counter()
            waited = now - started
            if self.follow.follow_timeout is not None and waited > self.follow.follow_timeout:
                raise RunFailure(
                    f"--follow-timeout: no full batch for {waited:.0f} s (have "
                    f"{len(self.queue)} of {self.trees_per_step} fresh trees in "
                    f"{', '.join(self.run_names)}; {self.stale_skipped} stale and "
                    f"{self.off_policy_skipped} off-policy skipped so far): are its "
                    "`generate --follow-policy` workers running?")
            if now - last_message > _WAIT_MESSAGE_SECONDS:
                self.on_message(f"step {weights_step + 1}: waiting for trees ({len(self.queue)} "
                                f"of {self.trees_per_step} fresh)")
                last_message = now
            time.sleep(self.follow.poll_seconds)
        waited = time.perf_counter() - started
        batch, self.queue = self.queue[:self.trees_per_step], self.queue[self.trees_per_step:]
        scoring = time.perf_counter()
        unscored = [queued.tree_id for queued in batch if not queued.scored]
        if unscored:
            score_stored_trees(self.store, tree_ids=unscored, reward_fn_spec=self.reward_fn_spec)
        stalenesses = [weights_step - queued.policy_step for queued in batch
                       if queued.policy_step is not None]
        metrics = {
            "growth_seconds": 0.0,
            "scoring_seconds": time.perf_counter() - scoring,
            "wait_seconds": waited,
            "stale_trees_skipped": self.stale_skipped - stale_before,
            "off_policy_trees_skipped": self.off_policy_skipped - off_before,
            "staleness_mean": sum(stalenesses) / len(stalenesses) if stalenesses else None,
            "staleness_max": max(stalenesses) if stalenesses else None,
        }
        return [queued.tree_id for queued in batch], metrics

    def _followed_run_ids(self) -> list[int] | None:
        """The followed runs' ids, once every one exists (the trainer may start first: its
        generators create the run); says once what it waits for."""
        if self.run_ids is None:
            run_ids = []
            for name in self.run_names:
                try:
                    run_ids.append(repository.find_run(self.store, name).id)
                except BadInputError as error:  # not yet: "no run named ...; did you mean ..."
                    if not self._said_missing:
                        self.on_message(f"waiting for its generators to create the run: {error}")
                        self._said_missing = True
                    return None
            for name in self.run_names:
                repository.refuse_run_of_other_kind(self.store, name=name, kind="generate")
            self.run_ids = run_ids
        return self.run_ids

    def _take_arrivals(self, *, weights_step: int) -> None:
        """Queue the trees stored since the last look, or count them as skipped."""
        assert self.seen is not None
        run_ids = self._followed_run_ids()
        if run_ids is None:
            return
        for tree in repository.tree_arrivals(self.store, run_ids=run_ids, known=self.seen):
            self.seen.add(tree.tree_id)
            if tree.tokenizer_hash is not None and tree.tokenizer_hash != self.tokenizer_hash:
                raise BadInputError(
                    f"tree {tree.tree_id} of the followed runs was tokenized by another "
                    f"tokenizer than {self.model}'s: its generator runs another model")
            step = self._policy_step(tree, weights_step=weights_step)
            if step is None and not self.allow_off_policy:
                self.off_policy_skipped += 1
                continue
            self.queue.append(_Queued(tree_id=tree.tree_id, policy_step=step, scored=tree.scored))

    def _policy_step(self, tree: repository.ArrivedTree, *, weights_step: int) -> int | None:
        """The step of this run whose policy grew `tree`, or None (off-policy)."""
        identity = policy_identity(tree.policy_version)
        if tree.policy_step is None:  # a plain generate: the base model's, or another policy
            return 0 if identity == self.identities[0] else None
        if tree.policy_step > weights_step:  # a step this run has not reached
            return None
        known = self.identities.get(tree.policy_step)
        if known is not None and known != identity:  # another run's checkpoint of that step
            return None
        return tree.policy_step

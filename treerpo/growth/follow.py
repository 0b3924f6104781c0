"""`treerpo generate --follow-policy DIR`: grow with the newest policy a trainer has published.

A `treerpo train --follow` run publishes `DIR/checkpoint-STEP` folders (written to a hidden
temporary folder and renamed, so a `checkpoint-*` folder is always complete). Between batches a
following generator looks for the newest one and, when it is not the policy it grows with, loads
its safetensors weights into the engine in place (`engine.load_weights`: the HF engine copies
them into its model, vLLM's loads them into the served model), and records on every tree it then
grows the checkpoint's step (`trees.policy_step`; 0 before any checkpoint: the base model) and
its weights' fingerprint (`trees.policy_version`). The trainer measures staleness with the step
and checks the fingerprint against the checkpoint it wrote.

A checkpoint that disappears while it is read (the trainer's `--save-total-limit` rotated it
away) is not an error: the next look finds a newer one.

Generators do not run ahead of the trainer: the trainer writes its trees per step B and its
`--max-staleness` K into `DIR/follow.json`, and a generator waits while the run already holds
(K + 1) x B trees of the policies of the last K + 1 steps (`PolicyFollower.enough_ahead`): those
are all the trainer can use before it publishes a newer policy; more would be skipped as stale.
Batches other workers are growing (live claims) count as trees already there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerpo.errors import BadInputError

# What a `train --follow` run tells its generators (written in its output folder at start).
FOLLOW_FILE = "follow.json"


@dataclass(frozen=True)
class PublishedPolicy:
    """A complete `checkpoint-STEP` folder, with what tells a rewritten one apart (a trainer
    resumed from an earlier step writes the same name again)."""

    step: int
    path: Path
    stamp: tuple[int, int]  # (inode, mtime in ns) of the folder


def newest_checkpoint(directory: Path) -> PublishedPolicy | None:
    """The `checkpoint-STEP` folder of `directory` with the highest STEP, or None (none yet, or
    no such directory yet: the trainer may not have started)."""
    from treerpo.training.checkpoints import checkpoint_step, list_checkpoints

    try:
        checkpoints = list_checkpoints(directory)
        if not checkpoints:
            return None
        status = checkpoints[-1].stat()
    except FileNotFoundError:  # rewritten or rotated away while we looked: look again later
        return None
    return PublishedPolicy(step=checkpoint_step(checkpoints[-1]), path=checkpoints[-1],
                           stamp=(status.st_ino, status.st_mtime_ns))


def checkpoint_tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of every tensor in the folder's safetensors files (HF parameter names)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no .safetensors weights")
    for weight_file in files:
        yield from load_file(str(weight_file)).items()


class PolicyFollower:
    """The policy a following generator grows with: the base model until the trainer publishes a
    checkpoint in `directory`, then the newest checkpoint (`refresh`, between batches)."""

    def __init__(self, *, directory: str, engine, base_version: str,
                 on_message: Callable[[str], None] = lambda message: None) -> None:
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise BadInputError(f"--follow-policy {directory}: not a folder")
        self.engine = engine
        if getattr(engine, "load_weights", None) is None:
            raise BadInputError(f"--follow-policy: the {getattr(engine, 'name', '?')} engine "
                                "cannot load new weights")
        self.on_message = on_message
        self.step = 0
        self.version = base_version
        self.loaded: PublishedPolicy | None = None
        self.reloads = 0
        self.newest_seen: int | None = None  # the highest published step seen so far
        self.versions = {0: base_version}  # step -> policy version grown with at that step

    def refresh(self) -> bool:
        """Load the newest published checkpoint when it is not the one grown with; True when
        the engine's weights changed."""
        from treerpo.engines.loading import policy_version

        newest = newest_checkpoint(self.directory)
        if newest is None:
            return False
        self.newest_seen = max(self.newest_seen or 0, newest.step)
        if self.loaded is not None and newest == self.loaded:
            return False
        try:
            version = policy_version(str(newest.path))
            # Read whole before loading: a folder rotated away midway leaves the engine as it was.
            tensors = list(checkpoint_tensors(newest.path))
        except (FileNotFoundError, BadInputError):  # rotated away meanwhile: look again later
            return False
        self.engine.load_weights(tensors)
        self.loaded, self.step, self.version = newest, newest.step, version
        self.versions[newest.step] = version
        self.reloads += 1
        self.on_message(f"growing with {newest.path.name} (step {newest.step})")
        return True

    def trainer_settings(self) -> dict[str, Any] | None:
        """The followed trainer's `follow.json` (its trees per step and --max-staleness), or
        None before it has started."""
        try:
            settings = json.loads((self.directory / FOLLOW_FILE).read_text())
            return {"trees_per_step": int(settings["trees_per_step"]),
                    "max_staleness": int(settings["max_staleness"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def enough_ahead(self, count_trees: Callable[[list[str], int], int]) -> bool:
        """Whether the run already holds every tree the trainer can use before it publishes a
        newer policy: (max_staleness + 1) x trees_per_step trees grown with the policies of the
        last max_staleness + 1 steps. More would go stale before they are trained (the rule of
        AReaL's staleness-bounded rollouts). `count_trees(versions, min_step)` counts the run's
        trees of those policy versions grown at step min_step or later, whichever worker grew
        them."""
        settings = self.trainer_settings()
        if settings is None:
            return False
        oldest = self.step - settings["max_staleness"]
        window = [version for step, version in self.versions.items() if step >= oldest]
        return (count_trees(window, max(oldest, 0))
                >= (settings["max_staleness"] + 1) * settings["trees_per_step"])

    def reached(self, until_steps: int | None) -> bool:
        """The trainer has published step `until_steps` (or later): it is done."""
        return until_steps is not None and (self.newest_seen or 0) >= until_steps

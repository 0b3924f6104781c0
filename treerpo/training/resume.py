"""Resuming `treerpo train` from a checkpoint: what must not change, and when nothing is left.

A checkpoint continues *its* run: the learning-rate schedule (its length, warmup and shape) and
the data order (trees per step, PPO iterations per batch) were fixed when the run started, and
the scheduler state in the checkpoint only makes sense under them. So a resume with a changed
`--max-steps`, `--num-train-epochs`, `--learning-rate`, `--lr-scheduler-type`, `--warmup-ratio`,
`--num-iterations`, `--per-device-train-batch-size` or `--gradient-accumulation-steps` is
refused (exit 2, naming the flags) rather than continued on a schedule that no uninterrupted run
would have followed. To train longer, start a new run from the checkpoint's model
(`--model OUT/checkpoint-N`) in another `--output-dir`.

Everything here is read before any model loads or anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerpo.config import OptimizationConfig
from treerpo.errors import BadInputError
from treerpo.training import checkpoints

SCHEDULE_FIELDS = ("max_steps", "num_train_epochs", "learning_rate", "lr_scheduler_type",
                   "warmup_ratio", "num_iterations", "per_device_train_batch_size",
                   "gradient_accumulation_steps")


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    step: int  # optimizer steps done
    total_steps: int | None  # steps the run was scheduled for (None: unknown, very old state)

    @property
    def finished(self) -> bool:
        return self.total_steps is not None and self.step >= self.total_steps


def changed_schedule(*, saved: dict[str, Any], optimization: OptimizationConfig) -> list[str]:
    """`--flag NOW (checkpoint: THEN)` for each schedule setting that differs."""
    now = optimization.model_dump(mode="json")
    return [f"--{name.replace('_', '-')} {now[name]} (checkpoint: {saved[name]})"
            for name in SCHEDULE_FIELDS if name in saved and saved[name] != now[name]]


def check_resume(*, checkpoint: Path, optimization: OptimizationConfig) -> ResumePoint:
    """Where the checkpoint stands; refuses a changed schedule (module docstring)."""
    state = checkpoints.read_trainer_state(checkpoint)
    config_file = checkpoint / checkpoints.CONFIG_FILE
    saved_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    changed = changed_schedule(saved=saved_config.get("optimization", {}),
                               optimization=optimization)
    if changed:
        raise BadInputError(
            f"cannot resume {checkpoint} with a changed schedule: {', '.join(changed)}. Its "
            "learning-rate schedule and data order were fixed when the run started: resume with "
            "the checkpoint's values, or train on from it as a new run (--model "
            f"{checkpoint} --output-dir NEW-DIR)")
    total = state.get("max_steps")
    return ResumePoint(checkpoint=checkpoint, step=int(state["global_step"]),
                       total_steps=int(total) if total is not None else None)


def check_total_steps(*, point: ResumePoint, total_steps: int) -> None:
    """The run's length, recomputed now (epochs x batches), must be the checkpoint's: with
    `--num-train-epochs` it changes when the trees to replay or the dataset changed."""
    if point.total_steps is not None and point.total_steps != total_steps:
        raise BadInputError(
            f"cannot resume {point.checkpoint}: the run now has {total_steps} optimizer steps "
            f"in all, the checkpoint's had {point.total_steps} (the trees or problems to train "
            "on changed); resume with the same data, or train on from it as a new run (--model "
            f"{point.checkpoint} --output-dir NEW-DIR)")


def nothing_left_message(point: ResumePoint) -> str:
    return (f"nothing left to do: {point.checkpoint} is at step {point.step} of "
            f"{point.total_steps}; its model is the trained one (to train longer, start a new "
            f"run with --model {point.checkpoint} and another --output-dir)")

"""Checkpoints: Hugging Face model folders plus everything a resumed run needs, written atomically.

`output_dir/checkpoint-STEP/` holds

- the policy as `save_pretrained` writes it (safetensors) and the tokenizer, so any checkpoint
  loads with `AutoModelForCausalLM.from_pretrained` (or `treerpo eval gsm8k --model ...`);
- `optimizer.pt`, `scheduler.pt`: the AdamW and learning-rate scheduler states;
- `rng_state_RANK.pth`: python, numpy and torch (CPU and CUDA) generator states of each process;
- `trainer_state.json`: the step, the data order position, the trees of the batch in progress;
- `train_config.json`: the whole `TrainConfig` the run was started with.

A checkpoint is first written to a hidden temporary folder in `output_dir` and then renamed (one
atomic `rename` on POSIX): a crash midway leaves at most a `.tmp-checkpoint-*` folder that no
reader looks at, never a half `checkpoint-STEP`. Rotation (`save_total_limit`) deletes the oldest
complete checkpoints after the new one is in place. The next start removes the temporary folders
a killed run left (`remove_stale_temporaries`: at real scale each is a whole checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treerpo.errors import BadInputError

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# `write_atomically`'s temporary folders: .tmp-NAME-PID, and .tmp-stale-NAME-PID (the folder it
# replaces, held for the instant between two renames).
_TEMPORARY_NAME = re.compile(r"^\.tmp-(stale-)?(.+)-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest (lowest step) first."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the temporary folders of `write_atomically` whose writer process is gone (killed
    mid-write); returns what was removed. A `.tmp-stale-NAME-PID` whose NAME is missing (killed
    between the two renames) is the last complete NAME: it is renamed back instead."""
    if not output_dir.is_dir():
        return []
    removed = []
    for child in sorted(output_dir.iterdir()):
        match = _TEMPORARY_NAME.match(child.name)
        if match is None or not child.is_dir() or _process_is_alive(int(match.group(3))):
            continue
        final = output_dir / match.group(2)
        if match.group(1) and not final.exists():
            child.rename(final)
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def resolve_checkpoint(reference: str, *, output_dir: Path) -> Path:
    """`latest` → the newest checkpoint in `output_dir`; otherwise a checkpoint folder's path."""
    if reference == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise BadInputError(f"--resume-from-checkpoint latest: no checkpoint in {output_dir}")
        return checkpoints[-1]
    path = Path(reference).expanduser()
    if not (path / TRAINER_STATE_FILE).is_file():
        raise BadInputError(f"--resume-from-checkpoint: {reference} is not a treerpo checkpoint "
                            f"(no {TRAINER_STATE_FILE})")
    return path


def write_atomically(
    *, output_dir: Path, name: str, write: Callable[[Path], None]
) -> Path:
    """Call `write(folder)` on a fresh temporary folder, then rename it to `output_dir/name`
    (replacing an older folder of that name)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    temporary = output_dir / f".tmp-{name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        write(temporary)
        _fsync_folder(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    final = output_dir / name
    if final.exists():  # the same step saved again after a resume: the new one wins
        stale = output_dir / f".tmp-stale-{name}-{os.getpid()}"
        final.rename(stale)
        temporary.rename(final)
        shutil.rmtree(stale)
    else:
        temporary.rename(final)
    return final


def save_checkpoint(
    *,
    output_dir: Path,
    step: int,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    config_json: dict[str, Any],
    rng_states: dict[int, dict[str, Any]],
    save_total_limit: int | None,
) -> Path:
    """Write `checkpoint-STEP` atomically (module docstring), then rotate old checkpoints.

    `rng_states` maps each process rank to its `capture_rng_state()`.
    """

    def write(folder: Path) -> None:
        save_model_folder(folder=folder, model=model, tokenizer=tokenizer)
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), folder / SCHEDULER_FILE)
        for rank, state in rng_states.items():
            torch.save(state, folder / f"rng_state_{rank}.pth")
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=1))

    path = write_atomically(output_dir=output_dir, name=f"{CHECKPOINT_PREFIX}{step}", write=write)
    if save_total_limit is not None:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old)
    return path


def save_model_folder(*, folder: Path, model, tokenizer) -> None:
    """The model as safetensors (float32 master weights as trained) and its tokenizer."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_final_model(*, output_dir: Path, model, tokenizer, config_json: dict[str, Any]) -> None:
    """The trained model in `output_dir` itself. Each file is renamed into place from a complete
    temporary folder, so a crash leaves the previous file or the new one, never a torn file."""

    def write(folder: Path) -> None:
        save_model_folder(folder=folder, model=model, tokenizer=tokenizer)
        (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=1))

    staged = write_atomically(output_dir=output_dir, name="final-model-staging", write=write)
    for item in staged.iterdir():
        os.replace(item, output_dir / item.name)
    staged.rmdir()


def load_checkpoint_states(*, checkpoint: Path, rank: int) -> dict[str, Any]:
    """Trainer state, optimizer and scheduler state dicts and this rank's RNG state."""
    rng_file = checkpoint / f"rng_state_{rank}.pth"
    if not rng_file.is_file():
        raise BadInputError(f"{checkpoint} has no RNG state for process {rank}: resume with the "
                            "number of processes that wrote it")
    return {
        "trainer_state": json.loads((checkpoint / TRAINER_STATE_FILE).read_text()),
        "optimizer": torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True),
        "scheduler": torch.load(checkpoint / SCHEDULER_FILE, weights_only=True),
        "rng": torch.load(rng_file, weights_only=True),
    }


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states, in a form `torch.load(weights_only=True)` reads."""
    numpy_state = np.random.get_state()
    state = {
        "python": list(random.getstate()),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                  int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_folder(folder: Path) -> None:
    """Flush the files' data before the rename makes them visible (a power loss after the
    rename must not expose empty files)."""
    for item in folder.rglob("*"):
        if item.is_file():
            with item.open("rb") as handle:
                os.fsync(handle.fileno())

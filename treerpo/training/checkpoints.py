"""Checkpoints: Hugging Face model folders plus everything a resumed run needs, written atomically.

`output_dir/checkpoint-STEP/` holds

- the policy as `save_pretrained` writes it (safetensors) and the tokenizer, so any checkpoint
  loads with `AutoModelForCausalLM.from_pretrained` (or `treerpo eval gsm8k --model ...`). The
  weights are saved in `--save-dtype` (auto: the base model's dtype, from its config.json, so a
  bf16 model's checkpoints are bf16, as HF Trainer saves a model loaded in bf16), cast from the
  float32 master weights, and config.json names that dtype;
- `optimizer.pt`, `scheduler.pt`: the AdamW (float32 moments) and learning-rate scheduler states
  (under FSDP the whole optimizer state keyed by parameter name, gathered from the shards);
- `rng_state_RANK.pth`: python, numpy and torch (CPU and CUDA) generator states of each process;
- `trainer_state.json`: HF's `TrainerState` schema (global_step, max_steps, epoch,
  num_train_epochs, log_history, ...), so tools that read HF checkpoints read it
  (`TrainerState.load_from_json`);
- `treerpo_state.json`: what treerpo needs beyond that to resume: the data order position, the
  trees of the batch in progress, the number of processes;
- `train_config.json`: the whole `TrainConfig` the run was started with.

Resuming loads the saved weights into float32 master weights: from a float32 checkpoint the run
continues bit-identically; from a bf16/fp16 one it continues from the rounded weights (the
optimizer moments are exact), so `--save-dtype float32` is the choice for exact resumes.

A checkpoint is first written to a hidden temporary folder in `output_dir` and then renamed (one
atomic `rename` on POSIX): a crash midway leaves at most a `.tmp-checkpoint-*` folder that no
reader looks at, never a half `checkpoint-STEP`. Rotation (`save_total_limit`) deletes the oldest
complete checkpoints after the new one is in place. The next start removes the temporary folders
a killed run left (`remove_stale_temporaries`: at real scale each is a whole checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from treerpo.config import TrainConfig
from treerpo.errors import BadInputError

if TYPE_CHECKING:
    from treerpo.training.distributed import ParallelPlan

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_FILE = "trainer_state.json"
TREERPO_STATE_FILE = "treerpo_state.json"
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


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a `checkpoint-STEP` folder (one `list_checkpoints` returned)."""
    match = _CHECKPOINT_NAME.match(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not named {CHECKPOINT_PREFIX}STEP")
    return int(match.group(1))


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
    optimizer_state: dict[str, Any],
    scheduler,
    trainer_state: dict[str, Any],
    treerpo_state: dict[str, Any],
    config_json: dict[str, Any],
    rng_states: dict[int, dict[str, Any]],
    save_total_limit: int | None,
    save_dtype: torch.dtype,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `checkpoint-STEP` atomically (module docstring), then rotate old checkpoints.

    `trainer_state` is HF's schema (`hf_trainer_state`), `treerpo_state` treerpo's own resume
    fields; `rng_states` maps each process rank to its `capture_rng_state()`; `model_state`,
    when given, is the whole state dict to save instead of `model`'s own (FSDP's gathered one).
    """

    def write(folder: Path) -> None:
        save_model_folder(folder=folder, model=model, tokenizer=tokenizer, dtype=save_dtype,
                          state_dict=model_state)
        torch.save(optimizer_state, folder / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), folder / SCHEDULER_FILE)
        for rank, state in rng_states.items():
            torch.save(state, folder / f"rng_state_{rank}.pth")
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        (folder / TREERPO_STATE_FILE).write_text(json.dumps(treerpo_state, indent=1))
        (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=1))

    path = write_atomically(output_dir=output_dir, name=f"{CHECKPOINT_PREFIX}{step}", write=write)
    if save_total_limit is not None:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old)
    return path


@dataclass
class Checkpointing:
    """What checkpoints carry beyond the model and optimizer: the dtype the weights are saved
    in and the logged metrics so far (HF's `log_history`, continued across resumes)."""

    save_dtype: torch.dtype
    log_history: list[dict[str, Any]]


def save_training_checkpoint(
    *, accelerator, output_dir: Path, step: int, model, tokenizer, optimizer, scheduler,
    config: TrainConfig, total_steps: int, batch_ids: list[int], batches_per_epoch: int,
    checkpointing: Checkpointing, plan: ParallelPlan,
) -> Path:
    """`checkpoint-STEP` of a training run: every process's RNG state gathered (and under FSDP
    the model's and optimizer's shards), the main process writes (`save_checkpoint`), all wait
    for it. `model` is what the forwards run through (`distributed.wrap_policy`)."""
    from accelerate.utils import gather_object

    from treerpo.training.distributed import (
        full_model_state,
        full_optimizer_state,
        policy_module,
    )

    rng_states = gather_object([(accelerator.process_index, capture_rng_state())])
    model_state = full_model_state(model, plan=plan)  # collectives on every process (FSDP)
    optimizer_state = full_optimizer_state(model, optimizer, plan=plan)
    path = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        opt = config.optimization
        steps_per_epoch = batches_per_epoch * opt.num_iterations
        path = save_checkpoint(
            output_dir=output_dir, step=step, model=policy_module(model), tokenizer=tokenizer,
            optimizer_state=optimizer_state, scheduler=scheduler, model_state=model_state,
            trainer_state=hf_trainer_state(
                global_step=step, max_steps=total_steps, epoch=step / steps_per_epoch,
                num_train_epochs=math.ceil(total_steps / steps_per_epoch),
                log_history=checkpointing.log_history, logging_steps=config.logging_steps,
                save_steps=config.save_steps,
                train_batch_size=opt.per_device_train_batch_size),
            treerpo_state={"batch_index": (step - 1) // opt.num_iterations,
                           "batch_tree_ids": batch_ids,
                           "num_processes": accelerator.num_processes,
                           "parallelism": plan.mode},
            config_json=config.model_dump(mode="json"), rng_states=dict(rng_states),
            save_total_limit=config.save_total_limit, save_dtype=checkpointing.save_dtype)
    accelerator.wait_for_everyone()
    return path


def save_model_folder(*, folder: Path, model, tokenizer, dtype: torch.dtype,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The model as safetensors in `dtype` (cast from the master weights, which stay as they
    are) with config.json naming that dtype, and its tokenizer. `state_dict`, when given,
    replaces the model's own (FSDP: the whole weights gathered from the shards)."""
    source = model.state_dict() if state_dict is None else state_dict
    if any(t.is_floating_point() and t.dtype != dtype for t in source.values()):
        # One cast per storage: tied weights (embeddings and LM head) stay one shared tensor,
        # which save_pretrained writes once, as it does for the model itself.
        cast: dict[tuple[int, torch.Size], torch.Tensor] = {}
        state_dict = {}
        for name, tensor in source.items():
            if tensor.is_floating_point():
                key = (tensor.data_ptr(), tensor.shape)
                if key not in cast:
                    cast[key] = tensor.detach().to(dtype)
                tensor = cast[key]
            state_dict[name] = tensor
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    _set_config_dtype(folder / "config.json", dtype)
    tokenizer.save_pretrained(folder)


def _set_config_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """save_pretrained names the parameters' dtype; the file's tensors are in `dtype`, and
    `from_pretrained(dtype="auto")` should load them so."""
    config = json.loads(config_file.read_text())
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    if "torch_dtype" in config:  # transformers < 4.56 spelling
        config["torch_dtype"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


_SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_save_dtype(save_dtype: str, *, base_model: str, trust_remote_code: bool) -> torch.dtype:
    """`auto` = the dtype the base model's config.json names (float32 when it names none)."""
    if save_dtype != "auto":
        return _SAVE_DTYPES[save_dtype]
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise BadInputError(f"cannot read the config of {base_model}: {error}") from error
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = _SAVE_DTYPES.get(named.removeprefix("torch."))
    return named if named in _SAVE_DTYPES.values() else torch.float32


def hf_trainer_state(
    *,
    global_step: int,
    max_steps: int,
    epoch: float,
    num_train_epochs: int,
    log_history: list[dict[str, Any]],
    logging_steps: int,
    save_steps: int,
    train_batch_size: int,
    eval_steps: int | None = None,
) -> dict[str, Any]:
    """`trainer_state.json` in the schema of transformers' `TrainerState` (every field, so
    `TrainerState.load_from_json` and tools that read HF checkpoints accept it)."""
    return {
        "best_global_step": None,
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": epoch,
        "eval_steps": eval_steps,  # None: no evaluation during training
        "global_step": global_step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": log_history,
        "logging_steps": logging_steps,
        "max_steps": max_steps,
        "num_input_tokens_seen": 0,
        "num_train_epochs": num_train_epochs,
        "save_steps": save_steps,
        "stateful_callbacks": {},
        "total_flos": 0.0,
        "train_batch_size": train_batch_size,
        "trial_name": None,
        "trial_params": None,
    }


def save_final_model(*, output_dir: Path, model, tokenizer, config_json: dict[str, Any],
                     save_dtype: torch.dtype,
                     state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The trained model in `output_dir` itself. Each file is renamed into place from a complete
    temporary folder, so a crash leaves the previous file or the new one, never a torn file."""

    def write(folder: Path) -> None:
        save_model_folder(folder=folder, model=model, tokenizer=tokenizer, dtype=save_dtype,
                          state_dict=state_dict)
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
        "trainer_state": read_trainer_state(checkpoint),
        "optimizer": torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True),
        "scheduler": torch.load(checkpoint / SCHEDULER_FILE, weights_only=True),
        "rng": torch.load(rng_file, weights_only=True),
    }


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """HF's trainer state with treerpo's resume fields merged in. Checkpoints written before
    `treerpo_state.json` existed kept those fields (and `total_steps`) in trainer_state.json."""
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    own = checkpoint / TREERPO_STATE_FILE
    if own.is_file():
        state.update(json.loads(own.read_text()))
    state.setdefault("max_steps", state.get("total_steps"))
    state.setdefault("log_history", [])
    return state


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

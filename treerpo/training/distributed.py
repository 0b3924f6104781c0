"""Data-parallel training across processes: DDP or FSDP2 around the policy, with collectives
that line up although every process holds a different shard of the step's trees.

A TreeRPO step is one optimizer step over the step's trees. Each process runs one forward and
backward per tree of its shard (a tree with `--max-packed-tokens` may take several forwards
before its backward), so processes run different numbers of passes. Wrappers that communicate
inside the passes (DDP's all-reduce in backward; FSDP's all-gathers in forward and backward and
reduce-scatters in backward) need every process to issue the same collectives in the same order,
so `update_schedule` pads every process to the same sequence of units:

    unit i = F_i forwards, then one backward,   F_i = the most forwards of unit i on any process

A process without a real unit i, or with fewer forwards, runs zero-weight forwards of a one-token
input: their gradient is exactly zero, so the step's gradient is unchanged. DDP averages
gradients over processes and FSDP2 reduce-scatters their average, while the step's loss is a sum
of per-tree shares (weights over the whole step, see `trainer.PolicyUpdater`), so every backward is
scaled by the number of processes: the result is exactly the gradient of the step's loss, the one
a single process with the whole batch computes. DDP synchronises only on the last unit (the
others run under `no_sync`, accumulating locally); FSDP2 reduce-scatters every unit into the
sharded gradients (never holding a whole unsharded gradient).

Modes (`resolve_parallelism`):

- "single": one process, no wrapper;
- "ddp": several processes (`torchrun`, or `accelerate launch` with a multi-GPU/CPU config):
  torch's `DistributedDataParallel`;
- "fsdp": `--fsdp full_shard|shard_grad_op` or `accelerate launch` with an FSDP config: torch's
  FSDP2 `fully_shard` on every decoder layer (`model._no_split_modules`) and on the whole model;
  `full_shard` reshards parameters after each forward (ZeRO-3-like), `shard_grad_op` keeps them
  until the backward (ZeRO-2-like). Works on CPU (gloo) and GPU (NCCL).

treerpo wraps the model itself, with torch's wrappers, rather than through
`Accelerator.prepare`: accelerate still sets up the processes, but its prepare would also apply
its own mixed precision (`--mixed_precision`) to the forward, and the dtype of the forward is
`--torch-dtype`'s to decide (master weights stay float32). DeepSpeed is refused: its engine owns
gradient accumulation and the optimizer step and expects a fixed number of backward passes per
step, which a tree step does not have; FSDP `full_shard` / `shard_grad_op` cover ZeRO-3 / ZeRO-2.

Checkpoints under FSDP hold the full (unsharded) model and optimizer state, gathered to the main
process with `torch.distributed.checkpoint.state_dict` (the optimizer keyed by parameter name), so
a checkpoint is an ordinary model folder; resuming re-shards it. Resume needs the same mode and
number of processes (the data order depends on the latter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from treerpo.config import parse_fsdp
from treerpo.errors import BadInputError

Parallelism = Literal["single", "ddp", "fsdp"]
@dataclass(frozen=True)
class ParallelPlan:
    """How this process's policy is wrapped (module docstring)."""

    mode: Parallelism
    num_processes: int
    reshard_after_forward: bool = True  # fsdp only

    @property
    def wrapped(self) -> bool:
        return self.mode != "single"


def resolve_parallelism(*, accelerator, fsdp: str) -> ParallelPlan:
    """The plan for this launch: `--fsdp`, or accelerate's launch configuration."""
    from accelerate.utils import DistributedType

    processes = accelerator.num_processes
    distributed_type = accelerator.distributed_type
    if distributed_type == DistributedType.DEEPSPEED:
        raise BadInputError(
            "DeepSpeed is not supported: its engine expects a fixed number of backward passes per "
            "step and a tree step has not; use FSDP (--fsdp full_shard for ZeRO-3-like, "
            "shard_grad_op for ZeRO-2-like, or examples/accelerate/fsdp.yaml)")
    words = parse_fsdp(fsdp)
    if distributed_type == DistributedType.FSDP and not words:  # accelerate's FSDP config
        plugin = accelerator.state.fsdp_plugin
        reshard = getattr(plugin, "reshard_after_forward", True)
        words = ("full_shard",) if reshard in (True, "FULL_SHARD") or str(reshard).endswith(
            "FULL_SHARD") else ("shard_grad_op",)
    if words:
        return ParallelPlan(mode="fsdp", num_processes=processes,
                            reshard_after_forward="full_shard" in words)
    return ParallelPlan(mode="ddp" if processes > 1 else "single", num_processes=processes)


def wrap_policy(model, *, plan: ParallelPlan, device: torch.device):
    """The module to run forwards and backwards through (the model itself when single; a DDP
    wrapper; or the model, sharded in place by FSDP2)."""
    if plan.mode == "single":
        return model
    if plan.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return _ForwardThrough(
            DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                    else None),
            model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (plan.num_processes,))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh, reshard_after_forward=plan.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=plan.reshard_after_forward)
    return model


class _ForwardThrough:
    """Calls go through the DDP wrapper (its gradient hooks); attributes such as `config`,
    `device` and `dtype` come from the model inside, as the packed forward reads them."""

    def __init__(self, wrapper, module) -> None:
        self._wrapper = wrapper
        self._module = module

    def __call__(self, *args, **kwargs):
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def no_sync(self):
        return self._wrapper.no_sync()


@dataclass(frozen=True)
class UnitSchedule:
    """The padded sequence of units this process runs in one step (module docstring)."""

    forwards: tuple[int, ...]  # F_i: forwards of unit i on every process
    loss_scale: float  # multiplies every real loss (the processes' average becomes a sum)


def update_schedule(*, plan: ParallelPlan, local_forwards: list[int],
                    device: torch.device) -> UnitSchedule:
    """Agree with the other processes on the units of this step. `local_forwards[i]` is the
    number of forwards this process's real unit i takes (a collective: every process calls it)."""
    if not plan.wrapped:
        return UnitSchedule(forwards=tuple(local_forwards), loss_scale=1.0)
    count = torch.tensor([len(local_forwards)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    padded = torch.zeros(int(count.item()), dtype=torch.int64, device=device)
    padded[:len(local_forwards)] = torch.tensor(local_forwards, dtype=torch.int64)
    torch.distributed.all_reduce(padded, op=torch.distributed.ReduceOp.MAX)
    return UnitSchedule(forwards=tuple(int(f) for f in padded.tolist()),
                        loss_scale=float(plan.num_processes))


def synchronising(model, *, plan: ParallelPlan, last_unit: bool):
    """DDP: defer the all-reduce to the last unit. FSDP2 reduce-scatters every unit."""
    if plan.mode == "ddp" and not last_unit:
        return model.no_sync()
    return contextlib.nullcontext()


def zero_weight_forward(model, *, token_id: int = 0) -> torch.Tensor:
    """A one-token forward whose output times 0 joins the unit's loss: the same collectives as a
    real forward, an exactly zero gradient."""
    device = next(iter(policy_module(model).parameters())).device
    output = model(input_ids=torch.tensor([[token_id]], device=device), use_cache=False)
    return output.logits.float().sum() * 0.0


def gradient_norm(norm) -> float:
    """`clip_grad_norm_`'s total norm as a float (a DTensor under FSDP2)."""
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else norm)


def full_named_parameters(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every parameter; under FSDP2 each shard set is all-gathered (a
    collective: every process must iterate in step)."""
    for name, parameter in policy_module(model).named_parameters():
        full_tensor = getattr(parameter, "full_tensor", None)
        yield name, (full_tensor() if full_tensor is not None else parameter).detach()


def full_model_state(model, *, plan: ParallelPlan) -> dict[str, torch.Tensor] | None:
    """The whole state dict for saving (FSDP: gathered to the main process, None elsewhere;
    otherwise None, meaning "the model's own")."""
    if plan.mode != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    module = policy_module(model)
    state = get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied copies (lm_head = embeddings) are saved once, as `save_pretrained` does with its own
    # state dict: {tied name: source name} in transformers 5.
    tied = getattr(module, "all_tied_weights_keys", None) or {}
    for name, source in (tied.items() if isinstance(tied, dict) else ()):
        if source in state:
            state.pop(name, None)
    return state


def full_optimizer_state(model, optimizer, *, plan: ParallelPlan) -> dict[str, Any]:
    """The optimizer state to save: FSDP gathers it to the main process, keyed by name."""
    if plan.mode != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(
        policy_module(model), optimizer,
        options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict[str, Any], *, plan: ParallelPlan) -> None:
    """Restore what `full_optimizer_state` saved (FSDP: every process reads the full state and
    keeps its shard)."""
    if plan.mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(policy_module(model), optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def policy_module(model):
    """The policy inside what `wrap_policy` returned (the module whose weights are saved)."""
    return model._module if isinstance(model, _ForwardThrough) else model

"""Run a user's reward plug-in (`--reward-fn`) in worker processes, each call under a timeout.

A plug-in is arbitrary code: it may call `sys.exit`, `os._exit`, crash the interpreter or never
return. Run in treerpo's own process, the first would end treerpo with the plug-in's exit code and
no message, and the last would hang `score` forever. So plug-ins are called in spawned worker
processes that treerpo watches:

- each worker imports the plug-in by its spec and answers one leaf at a time over a pipe;
- a call that has not answered within `timeout_s` seconds stops the run: the workers are killed
  and a `RunFailure` names the plug-in and `--reward-timeout`;
- a worker that exits (sys.exit, os._exit) or dies (a signal) is a `RunFailure` naming the
  plug-in and how the worker ended; an exception or a bad return value is the `RunFailure` the
  plug-in's `CheckedRewardFn` raises (its message travels back over the pipe);
- a plug-in that cannot be imported is a `BadInputError` (the caller resolves it in-process first,
  before any store work, so this is a second line of defence).

Rewards come back in task order; nothing is written until every leaf has its reward (the caller
writes all scores in one transaction), so any failure leaves the store unchanged.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from treerpo.errors import BadInputError, RunFailure, TreerpoError

DEFAULT_REWARD_TIMEOUT_S = 10.0
# A worker's first answer also covers interpreter start and the plug-in's import.
_STARTUP_GRACE_S = 60.0


def _worker_main(connection: Connection, reward_fn_spec: str) -> None:
    """Worker loop: receive (position, completion, reference, problem) tuples; send ("ok",
    position, reward) or ("failed", position, exit code, message) back. The parent kills the
    worker when it is done."""
    from treerpo.scoring.rewards import resolve_reward_fn

    try:
        reward_fn = resolve_reward_fn(reward_fn_spec)
    except TreerpoError as error:
        connection.send(("failed", -1, error.exit_code, str(error)))
        return
    connection.send(("ready", -1, None))
    while True:
        position, completion, reference, problem = connection.recv()
        try:
            reward = reward_fn(completion=completion, reference=reference, problem=problem)
        except TreerpoError as error:
            connection.send(("failed", position, error.exit_code, str(error)))
            return
        except SystemExit as error:  # sys.exit inside the plug-in
            connection.send(("failed", position, 1, f"reward function {reward_fn_spec} called "
                                                    f"sys.exit({error.code!r})"))
            return
        except BaseException as error:  # noqa: BLE001 - reported, with the plug-in's name
            connection.send(("failed", position, 1, f"reward function {reward_fn_spec} raised "
                                                    f"{type(error).__name__}: {error}"))
            return
        connection.send(("ok", position, reward))


class _Worker:
    def __init__(self, context: Any, reward_fn_spec: str) -> None:
        self.connection, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child_end, reward_fn_spec),
                                       daemon=True)
        self.process.start()
        child_end.close()
        self.busy_position: int | None = None
        self.deadline = time.monotonic() + _STARTUP_GRACE_S
        self.ready = False

    def send(self, position: int, task: Any, *, timeout_s: float) -> None:
        self.connection.send((position, task.completion, task.reference, task.problem))
        self.busy_position = position
        self.deadline = time.monotonic() + timeout_s

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def _ended(worker: _Worker, spec: str) -> RunFailure:
    worker.process.join(timeout=5)
    code = worker.process.exitcode
    how = (f"was killed by signal {-code}" if code is not None and code < 0
           else f"exited with code {code}")
    return RunFailure(f"reward function {spec}: its worker process {how} while scoring "
                      "(os._exit or a crash inside the plug-in)")


def score_isolated(
    tasks: Sequence[Any],
    *,
    reward_fn_spec: str,
    workers: int,
    timeout_s: float = DEFAULT_REWARD_TIMEOUT_S,
    on_done: Callable[[int], None] | None = None,
) -> list[float]:
    """Rewards of `tasks` (each with `completion`, `reference`, `problem`), in order, computed by
    `reward_fn_spec` in `workers` spawned processes, each call within `timeout_s` seconds.
    `on_done(n)` is called as n more leaves finish."""
    if not tasks:
        return []
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise BadInputError(f"--reward-timeout must be a positive number of seconds, "
                            f"not {timeout_s}")
    context = multiprocessing.get_context("spawn")
    pool = [_Worker(context, reward_fn_spec) for _ in range(max(1, min(workers, len(tasks))))]
    rewards: list[float | None] = [None] * len(tasks)
    next_position = 0
    remaining = len(tasks)
    try:
        while remaining:
            now = time.monotonic()
            overdue = [worker for worker in pool if worker.deadline <= now
                       and (not worker.ready or worker.busy_position is not None)]
            if overdue:
                what = "to start" if not overdue[0].ready else "on one leaf"
                raise RunFailure(
                    f"reward function {reward_fn_spec} took longer than "
                    f"{timeout_s if overdue[0].ready else _STARTUP_GRACE_S:g} s {what} "
                    "(--reward-timeout)")
            waiting = [worker for worker in pool
                       if not worker.ready or worker.busy_position is not None]
            deadline = min(worker.deadline for worker in waiting)
            readable = wait([worker.connection for worker in waiting],
                            timeout=max(0.0, deadline - now))
            for worker in waiting:
                if worker.connection not in readable:
                    continue
                try:
                    message = worker.connection.recv()
                except (EOFError, OSError):
                    raise _ended(worker, reward_fn_spec) from None
                kind, position = message[0], message[1]
                if kind == "failed":
                    _, _, exit_code, text = message
                    raise (BadInputError(text) if exit_code == 2 else RunFailure(text))
                if kind == "ok":
                    rewards[position] = message[2]
                    remaining -= 1
                    if on_done is not None:
                        on_done(1)
                worker.ready = True
                worker.busy_position = None
                if next_position < len(tasks):
                    worker.send(next_position, tasks[next_position], timeout_s=timeout_s)
                    next_position += 1
    finally:
        for worker in pool:
            worker.stop()
    return [float(reward) for reward in rewards]  # type: ignore[arg-type]

"""`treerpo bench workers`: trees per second with 1 and 2 `generate` processes on one store.

Each round starts N `treerpo generate` processes at once on a fresh SQLite store, all with the
same command (the shipped tiny arithmetic policy on the built-in `arith` problems, one problem
per batch so that the workers can split the run), and times them from launch until the last one
exits: trees per second counts the run's trees over that wall time, start-up included, as a user
would see it. Each worker reports the seconds it spent in the store (writing its trees, claiming
and releasing batches), summed over workers and shown as a share of the workers' run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "policies" / "arith-tiny"


@dataclass
class WorkersRound:
    workers: int
    trees: int
    wall_seconds: float
    store_seconds: float  # summed over workers
    worker_seconds: float  # summed over workers (their run_generate time)
    trees_per_worker: dict[str, int]

    @property
    def trees_per_second(self) -> float:
        return self.trees / self.wall_seconds

    @property
    def store_share(self) -> float:
        return self.store_seconds / self.worker_seconds if self.worker_seconds else 0.0


def run_workers_round(*, workers: int, problems: int, max_new_tokens: int,
                      threads_per_worker: int = 1) -> WorkersRound:
    """One round: `workers` generate processes sharing one run of `problems` arith problems."""
    with tempfile.TemporaryDirectory(prefix="treerpo-bench-workers-") as scratch:
        db_url = f"sqlite:///{Path(scratch) / 'store.db'}"
        command = [sys.executable, "-m", "treerpo.cli", "generate", "--model",
                   str(SHIPPED_POLICY), "--dataset", "arith", "--limit", str(problems),
                   "--batch-size", "1", "--run", "bench-workers", "--db", db_url,
                   "--engine", "hf", "--max-new-tokens", str(max_new_tokens), "--json"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": str(threads_per_worker)}
        started = time.perf_counter()
        processes = [subprocess.Popen([*command, "--worker-name", f"w{index}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for index in range(workers)]
        outputs = finish_processes(processes, ["generate worker"] * workers)
        wall = time.perf_counter() - started
        reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout in outputs]
    return WorkersRound(
        workers=workers, trees=sum(report["trees"] for report in reports), wall_seconds=wall,
        store_seconds=sum(report["store_seconds"] for report in reports),
        worker_seconds=sum(report["seconds"] for report in reports),
        # The last worker to finish saw every tree of the run.
        trees_per_worker=max((report["trees_per_worker"] for report in reports),
                             key=lambda counts: sum(counts.values())))


def finish_processes(processes: list[subprocess.Popen], names: list[str]) -> list[str]:
    """Wait for every process; their stdouts. The first that failed stops the others and
    raises, naming it with the end of its stderr."""
    outputs = []
    for process, name in zip(processes, names, strict=True):
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            for other in processes:
                if other.poll() is None:
                    other.kill()
            raise RuntimeError(f"the {name} process failed: {stderr.strip()[-500:]}")
        outputs.append(stdout)
    return outputs

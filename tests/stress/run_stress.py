"""Stress the tree store: concurrent treerpo processes on one store, kill -9 at random moments.

    python tests/stress/run_stress.py [--iterations 20] [--seed 0]      (make stress)

Each iteration starts, at once, on one store: two `generate` processes on the same run, one
`generate` on another run of an overlapping slice of the same dataset, a `score`, a `trees` and an
`inspect`. One or two of the writers are killed with SIGKILL at a random moment (during start-up,
growth, or a write). When the rest have finished, the store's invariants are checked
(`invariants.check_store`: one complete tree per problem and run, node/leaf/token counts match,
no orphan nodes, scored trees fully scored, `PRAGMA integrity_check` ok). After the last
iteration every run is completed without kills and must then hold exactly one tree per problem of
its slice (no race lost a tree). A process that was not killed and exits non-zero is a process
failure.

The store is SQLite, and also PostgreSQL when TREERPO_TEST_POSTGRES_URL names a server (a fresh
database is created and dropped). The work per iteration is small (a tiny random model, six
problems per run, short trees) so that 20 iterations fit a few minutes on two cores.

Prints one row per iteration and a summary table; exits 1 on any violation or process failure.
Not collected by pytest (`make test`): its file name does not match `test_*.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from invariants import check_store, trees_per_problem  # noqa: E402

RUNS = 3  # runs stress-0..2 share the store; run k covers dataset rows 2k .. 2k+5
ROWS_PER_RUN = 6
PROCESS_TIMEOUT_S = 600.0
GROWTH = ["--max-new-tokens", "24", "--min-segment-len", "4", "--max-depth", "3",
          "--root-children", "2", "--entropy-threshold", "0.5", "--coverage-min-chars", "10",
          "--batch-size", "2", "--engine", "hf"]


@dataclass
class Totals:
    backend: str
    iterations: int = 0
    processes: int = 0
    kills: int = 0
    violations: int = 0
    failures: int = 0
    seconds: float = 0.0
    failure_lines: list[str] = field(default_factory=list)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "treerpo.cli", *args]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               TREERPO_DEBUG="0")
    return env


def _generate(model: Path, dataset: Path, url: str, run: int) -> list[str]:
    return _cli("generate", "--model", str(model), "--dataset", str(dataset), "--run",
                f"stress-{run}", "--offset", str(2 * run), "--limit", str(ROWS_PER_RUN),
                "--db", url, "--json", *GROWTH)


def _listed_trees(url: str) -> list[dict] | None:
    """The store's trees as `trees --json` lists them; None while no store exists yet."""
    result = subprocess.run(_cli("trees", "--db", url, "--json"), cwd=ROOT,
                            env=_environment(), capture_output=True, text=True)
    if result.returncode == 2 and ("no store at" in result.stderr
                                   or "no treerpo store at" in result.stderr):
        return None
    if result.returncode != 0:
        raise RuntimeError(f"trees failed between iterations: {result.stderr.strip()}")
    return json.loads(result.stdout)


def run_iteration(*, index: int, url: str, model: Path, dataset: Path, rng: np.random.Generator,
                  totals: Totals) -> None:
    run = index % RUNS
    other = (run + 1) % RUNS
    commands = {
        "generate-a": _generate(model, dataset, url, run),
        "generate-b": _generate(model, dataset, url, run),
        "generate-c": _generate(model, dataset, url, other),
        "score": _cli("score", "--db", url, "--json"),
    }
    listed = _listed_trees(url)
    if listed is not None:  # the readers, once the first iteration has created the store
        commands["trees"] = _cli("trees", "--db", url, "--json")
        if listed:
            tree_id = listed[int(rng.integers(len(listed)))]["tree_id"]
            commands["inspect"] = _cli("inspect", str(tree_id), "--db", url, "--json")
    writers = ["generate-a", "generate-b", "generate-c", "score"]
    victims = list(rng.choice(writers, size=int(rng.integers(1, 3)), replace=False))
    kill_at = {name: float(rng.uniform(1.0, 25.0)) for name in victims}

    started = time.monotonic()
    processes = {name: subprocess.Popen(command, cwd=ROOT, env=_environment(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, command in commands.items()}
    killed: set[str] = set()
    while any(process.poll() is None for process in processes.values()):
        elapsed = time.monotonic() - started
        for name, at in kill_at.items():
            if name not in killed and elapsed >= at and processes[name].poll() is None:
                processes[name].send_signal(signal.SIGKILL)
                killed.add(name)
        if elapsed > PROCESS_TIMEOUT_S:
            for name, process in processes.items():
                if process.poll() is None:
                    process.kill()
                    totals.failure_lines.append(f"iteration {index} {name}: hung, killed")
            break
        time.sleep(0.05)
    failures = 0
    for name, process in processes.items():
        _, stderr = process.communicate()
        if name in killed:
            continue
        if process.returncode != 0:
            failures += 1
            last = (stderr.strip().splitlines() or ["(no message)"])[-1]
            totals.failure_lines.append(f"iteration {index} {name}: rc {process.returncode}: "
                                        f"{last[:300]}")
    violations = check_store(url)
    totals.iterations += 1
    totals.processes += len(processes)
    totals.kills += len(killed)
    totals.failures += failures
    totals.violations += len(violations)
    totals.failure_lines += [f"iteration {index} invariant: {line}" for line in violations]
    print(f"{totals.backend:10} iteration {index:3d}  processes {len(processes)}  "
          f"killed {','.join(sorted(killed)) or '-':28}  violations {len(violations)}  "
          f"failures {failures}  {time.monotonic() - started:5.1f} s", flush=True)


def finish_runs(*, url: str, model: Path, dataset: Path, totals: Totals) -> None:
    """Complete every run without kills: each must then have one tree per problem of its slice."""
    for run in range(RUNS):
        result = subprocess.run(_generate(model, dataset, url, run), cwd=ROOT,
                                env=_environment(), capture_output=True, text=True)
        totals.processes += 1
        if result.returncode != 0:
            totals.failures += 1
            totals.failure_lines.append(f"final generate stress-{run}: rc {result.returncode}: "
                                        f"{result.stderr.strip()[-300:]}")
        counts = trees_per_problem(url, run=f"stress-{run}")
        if len(counts) != ROWS_PER_RUN or set(counts.values()) != {1}:
            totals.violations += 1
            totals.failure_lines.append(f"final: run stress-{run} has trees per problem {counts}")
    result = subprocess.run(_cli("score", "--db", url, "--json"), cwd=ROOT, env=_environment(),
                            capture_output=True, text=True)
    totals.processes += 1
    if result.returncode != 0:
        totals.failures += 1
        totals.failure_lines.append(f"final score: {result.stderr.strip()[-300:]}")
    violations = check_store(url)
    totals.violations += len(violations)
    totals.failure_lines += [f"final invariant: {line}" for line in violations]


def _write_dataset(path: Path) -> None:
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in zip(range(3, 40, 3), range(5, 60, 4), strict=False)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _postgres_database(server_url: str) -> tuple[str, callable]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"treerpo_stress_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres-url", default=os.environ.get("TREERPO_TEST_POSTGRES_URL"))
    args = parser.parse_args()

    from treerpo.tiny_model import save_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="treerpo-stress-"))
    model = save_tiny_model(workdir / "model", seed=0)
    dataset = workdir / "problems.jsonl"
    _write_dataset(dataset)
    backends = [("sqlite", f"sqlite:///{workdir / 'stress.db'}", None)]
    if args.postgres_url:
        url, drop = _postgres_database(args.postgres_url)
        backends.append(("postgresql", url, drop))
    rng = np.random.default_rng(args.seed)
    all_totals = []
    for backend, url, drop in backends:
        totals = Totals(backend=backend)
        started = time.monotonic()
        try:
            for index in range(args.iterations):
                run_iteration(index=index, url=url, model=model, dataset=dataset, rng=rng,
                              totals=totals)
            finish_runs(url=url, model=model, dataset=dataset, totals=totals)
        finally:
            if drop is not None:
                drop()
        totals.seconds = time.monotonic() - started
        all_totals.append(totals)

    print()
    print(f"{'store':10} {'iterations':>10} {'processes':>9} {'kills':>5} "
          f"{'invariant violations':>20} {'process failures':>16} {'seconds':>8}")
    for totals in all_totals:
        print(f"{totals.backend:10} {totals.iterations:>10} {totals.processes:>9} "
              f"{totals.kills:>5} {totals.violations:>20} {totals.failures:>16} "
              f"{totals.seconds:>8.0f}")
    for totals in all_totals:
        for line in totals.failure_lines:
            print(f"{totals.backend}: {line}")
    return 1 if any(t.violations or t.failures for t in all_totals) else 0


if __name__ == "__main__":
    sys.exit(main())

"""`treerpo bench follow`: chained training against the asynchronous pipeline, same steps.

Both arms train the shipped tiny arithmetic policy on the built-in `arith` problems for the same
optimizer steps and trees per step, with the same tree, sampling and optimizer settings (the
arith task's, `treerpo.bench.tasks`, as far as the CLI spells them), each on a fresh SQLite store:

- `chained`: one `treerpo train --dataset arith` process, growth then update every step, with
  every core (`OMP_NUM_THREADS` = the machine's cores);
- `follow`: one `treerpo train --follow` process and `--generators` `treerpo generate
  --follow-policy` processes, the cores split between them, growth overlapping the updates.

Wall time runs from launch until every process has exited (start-up included, as a user sees
it). Also printed: trees grown and trained (the follow arm's extra trees went stale), the mean
staleness of the trained trees, and the mean on-policy reward of the last quarter of the steps
(both arms learn; the asynchronous one from trees up to --max-staleness steps old).
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

from treerpo.bench.workers_bench import SHIPPED_POLICY, finish_processes


@dataclass
class FollowArm:
    arm: str
    wall_seconds: float
    steps: int
    trees_grown: int
    trees_trained: int
    stale_skipped: int
    staleness_mean: float | None
    late_reward: float  # mean on-policy reward over the last quarter of the steps

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_seconds


def _tree_flags(max_new_tokens: int) -> list[str]:
    from treerpo.bench.tasks import task_settings

    task = task_settings("arith")
    tree, sampling = task.tree, task.sampling
    delimiters = [flag for delimiter in tree.split_delimiters
                  for flag in ("--split-delimiter", delimiter.encode("unicode_escape").decode())]
    return [*delimiters, "--max-new-tokens", str(max_new_tokens), "--min-segment-len",
            str(tree.min_segment_len), "--max-depth", str(tree.max_depth),
            "--entropy-threshold", str(tree.entropy_threshold), "--entropy-topk",
            str(tree.entropy_topk), "--coverage-min-chars", str(tree.coverage_min_chars),
            "--coverage-children-max", str(tree.coverage_children_max),
            "--temperature", str(sampling.temperature), "--top-p", str(sampling.top_p),
            "--top-k", str(sampling.top_k or 0), "--repetition-penalty",
            str(sampling.repetition_penalty)]


def _train_flags(*, steps: int, trees_per_step: int, seed: int) -> list[str]:
    from treerpo.bench.tasks import task_settings

    return ["--model", str(SHIPPED_POLICY), "--max-steps", str(steps),
            "--per-device-train-batch-size", str(trees_per_step), "--learning-rate",
            str(task_settings("arith").learning_rate), "--lr-scheduler-type", "constant",
            "--logging-steps", "1", "--seed", str(seed), "--engine", "hf", "--json"]


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def _late_reward(rows: list[dict]) -> float:
    late = rows[-max(len(rows) // 4, 1):]
    return sum(row["on_policy_reward"] for row in late) / len(late)


def run_chained_arm(*, steps: int, trees_per_step: int, max_new_tokens: int, seed: int,
                    cores: int) -> FollowArm:
    with tempfile.TemporaryDirectory(prefix="treerpo-bench-follow-") as scratch:
        output_dir = Path(scratch) / "out"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(cores)}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "treerpo.cli", "train", "--dataset", "arith",
             *_train_flags(steps=steps, trees_per_step=trees_per_step, seed=seed),
             *_tree_flags(max_new_tokens), "--output-dir", str(output_dir),
             "--save-steps", str(steps + 1), "--db", f"sqlite:///{Path(scratch) / 's.db'}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finish_processes([process], ["chained train"])
        wall = time.perf_counter() - started
        rows = _metrics(output_dir)
    trees = sum(row["num_trees"] for row in rows)
    return FollowArm(arm="chained", wall_seconds=wall, steps=len(rows), trees_grown=trees,
                     trees_trained=trees, stale_skipped=0, staleness_mean=0.0,
                     late_reward=_late_reward(rows))


def run_follow_arm(*, steps: int, trees_per_step: int, max_new_tokens: int, seed: int,
                   cores: int, generators: int, max_staleness: int) -> FollowArm:
    with tempfile.TemporaryDirectory(prefix="treerpo-bench-follow-") as scratch:
        output_dir = Path(scratch) / "out"
        db = f"sqlite:///{Path(scratch) / 's.db'}"
        threads = max(cores // (generators + 1), 1)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        trainer = subprocess.Popen(
            [sys.executable, "-m", "treerpo.cli", "train", "--follow", "--run", "live",
             "--max-staleness", str(max_staleness), "--follow-timeout", "600",
             *_train_flags(steps=steps, trees_per_step=trees_per_step, seed=seed),
             "--output-dir", str(output_dir), "--save-total-limit", "2", "--db", db],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The trainer first (it writes follow.json, which bounds how far the workers run ahead).
        while not (output_dir / "follow.json").exists():
            if trainer.poll() is not None:
                finish_processes([trainer], ["follow train"])
            time.sleep(0.1)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "treerpo.cli", "generate", "--model", str(SHIPPED_POLICY),
             "--dataset", "arith", "--run", "live", "--db", db, "--follow-policy",
             str(output_dir), "--until-steps", str(steps), "--batch-size",
             str(max(trees_per_step // generators, 1)), "--engine", "hf", "--seed",
             str(seed), "--worker-name", f"g{index}", *_tree_flags(max_new_tokens),
             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for index in range(generators)]
        outputs = finish_processes([trainer, *workers],
                                   ["follow train"] + ["generate"] * generators)
        wall = time.perf_counter() - started
        rows = _metrics(output_dir)
    summary = json.loads(outputs[0].strip().splitlines()[-1])
    grown = sum(json.loads(output.strip().splitlines()[-1])["trees"] for output in outputs[1:])
    staleness = [row["staleness_mean"] for row in rows if row.get("staleness_mean") is not None]
    return FollowArm(
        arm=f"follow {generators}g K={max_staleness}",
        wall_seconds=wall, steps=len(rows), trees_grown=grown,
        trees_trained=summary["trees_trained"], stale_skipped=summary["stale_trees_skipped"],
        staleness_mean=sum(staleness) / len(staleness) if staleness else None,
        late_reward=_late_reward(rows))

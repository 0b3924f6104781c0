"""GPU check of the asynchronous pipeline: `train --follow` and one `generate --follow-policy`
worker on one GPU, a few steps, one table.

Run on a machine with a CUDA GPU (treerpo installed; with `treerpo[vllm]` the worker grows with
vLLM at --gpu-memory-utilization 0.3 beside the trainer, else with the HF engine):

    python scripts/gpu_check_follow.py                     # the shipped tiny policy on arith
    python scripts/gpu_check_follow.py --model Qwen/Qwen2.5-0.5B-Instruct --dataset openai/gsm8k \\
        --dataset-config main --max-new-tokens 400

The trainer starts first (it writes follow.json and waits for the run), then the worker, which
stops once the trainer has published its last step. Printed: each step's staleness (max), wait
seconds and PPO ratio (~1 on steps whose trees have staleness 0: the engine's stored logprobs and
the trainer's forward agree), then both processes' summaries. Exit 1 when a process fails, a
trained tree is staler than --max-staleness or the worker loaded no checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script: its folder is on the path.
from gpu_check_train import cuda_missing, policy_and_data, policy_parser
from rich.console import Console
from rich.table import Table


def main() -> int:
    parser = policy_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--trees-per-step", type=int, default=8)
    parser.add_argument("--max-staleness", type=int, default=1)
    arguments = parser.parse_args()
    if cuda_missing():
        return 2
    model, data = policy_and_data(arguments)
    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    work = Path(tempfile.mkdtemp(prefix="treerpo-gpu-follow-"))
    db = f"sqlite:///{work / 'store.db'}"
    out = work / "out"
    command = [sys.executable, "-m", "treerpo.cli"]
    trainer = subprocess.Popen(
        [*command, "train", "--model", model, "--run", "live", "--follow",
         "--max-steps", str(arguments.steps), "--max-staleness", str(arguments.max_staleness),
         "--per-device-train-batch-size", str(arguments.trees_per_step),
         "--output-dir", str(out), "--db", db, "--torch-dtype", arguments.torch_dtype,
         "--logging-steps", "1", "--follow-timeout", "900", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "follow.json").exists():
        if trainer.poll() is not None:
            print(trainer.communicate()[1][-3000:], file=sys.stderr)
            return 1
        time.sleep(0.5)
    worker = subprocess.Popen(
        [*command, "generate", "--model", model, *data, "--run", "live", "--db", db,
         "--follow-policy", str(out), "--until-steps", str(arguments.steps),
         "--engine", engine, "--torch-dtype", arguments.torch_dtype,
         "--batch-size", str(arguments.trees_per_step),
         *(["--gpu-memory-utilization", "0.3"] if engine == "vllm" else []), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    while trainer.poll() is None and worker.poll() in (None, 0):
        time.sleep(1.0)
    if worker.returncode not in (None, 0) and trainer.poll() is None:
        trainer.terminate()  # the worker failed: the trainer would wait for trees for ever
    trained_out, trained_err = trainer.communicate()
    worker_out, worker_err = worker.communicate()
    if trainer.returncode or worker.returncode:
        print(f"trainer exit {trainer.returncode}: {trained_err[-2000:]}\n"
              f"worker exit {worker.returncode}: {worker_err[-2000:]}", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    table = Table(title=f"train --follow + generate --follow-policy ({engine}), "
                        f"--max-staleness {arguments.max_staleness}")
    for column in ("step", "staleness max", "stale skipped", "wait s", "update s",
                   "ratio mean", "reward"):
        table.add_column(column, justify="right")
    failed = False
    for row in rows:
        failed |= (row["staleness_max"] or 0) > arguments.max_staleness
        table.add_row(str(row["step"]), str(row["staleness_max"]),
                      str(row["stale_trees_skipped"]), f"{row['wait_seconds']:.1f}",
                      f"{row['update_seconds']:.2f}", f"{row['ratio_mean']:.4f}",
                      f"{row['on_policy_reward']:.3f}")
    console = Console()
    console.print(table)
    worker_summary = json.loads(worker_out)
    console.print(f"trainer: {trained_out.strip()}")
    shown = ("trees", "epochs", "policy_step", "policy_reloads", "policy_wait_seconds",
             "seconds")
    console.print(f"worker: {json.dumps({key: worker_summary[key] for key in shown})}")
    if worker_summary["policy_reloads"] < 1:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

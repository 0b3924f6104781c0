"""GPU check of chained training: a few steps per engine setting, one table.

Run on a machine with CUDA GPUs (treerpo installed, with `treerpo[vllm]` for the vLLM rows):

    python scripts/gpu_check_train.py                       # the shipped tiny policy on arith
    python scripts/gpu_check_train.py --model Qwen/Qwen2.5-0.5B-Instruct --dataset openai/gsm8k \\
        --dataset-config main --max-new-tokens 400

Each row is one `treerpo train --dataset ...` run of `--steps` chained steps (grow, score,
update), launched as its own process so that peak memory is that run's alone:

- hf: the Hugging Face engine sharing the policy's weights;
- vllm: vLLM colocated at `--gpu-memory-utilization` 0.3 with sleep mode and TP=1 (skipped when
  vLLM is not importable);
- 2 processes (torchrun, when two GPUs are present): DDP with the HF engine, and FSDP2
  full_shard with vLLM (chained training under FSDP grows trees with vLLM only).

Columns: seconds per step (growth + scoring + update, from the run's metrics), the update's peak
GPU memory, and the mean PPO ratio exp(logp_trainer - logp_engine) of the first step, which must
be ~1: the engine's stored logprobs and the trainer's forward agree before any update (bf16 noise
puts it within a few 1e-3 of 1; a wrong transform or stale weights put it far off).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table


def shipped_policy_flags() -> list[str]:
    """Tree flags that fit the shipped arith-tiny policy (a 512-position context; the arith
    task's budget and segment lengths, treerpo/bench/tasks.py) for a run without --model."""
    from treerpo.bench.tasks import task_settings

    tree = task_settings("arith").tree
    return ["--max-new-tokens", str(tree.max_new_tokens), "--min-segment-len",
            str(tree.min_segment_len), "--max-depth", str(tree.max_depth),
            "--coverage-min-chars", str(tree.coverage_min_chars)]


def policy_parser(description: str) -> argparse.ArgumentParser:
    """The policy, data and budget arguments of both GPU check scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None,
                        help="policy (default: the shipped arith-tiny policy)")
    parser.add_argument("--dataset", default="arith")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--torch-dtype", default="bfloat16")
    return parser


def policy_and_data(arguments: argparse.Namespace) -> tuple[str, list[str]]:
    """The policy to run and its data and budget flags (without --model: the shipped policy,
    with tree flags that fit it)."""
    model = arguments.model or str(Path(__file__).resolve().parents[1] / "treerpo" / "policies"
                                   / "arith-tiny")
    flags = ["--dataset", arguments.dataset]
    if arguments.dataset_config:
        flags += ["--dataset-config", arguments.dataset_config]
    if arguments.max_new_tokens:
        flags += ["--max-new-tokens", str(arguments.max_new_tokens)]
    elif arguments.model is None:
        flags += shipped_policy_flags()
    return model, flags


def cuda_missing() -> bool:
    """True (and says so) without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return False
    print("no CUDA GPU: this check needs one (the CPU paths are covered by `make test`)",
          file=sys.stderr)
    return True


def main() -> int:
    parser = policy_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    arguments = parser.parse_args()
    if cuda_missing():
        return 2
    import torch

    model, data = policy_and_data(arguments)
    common = ["train", "--model", model, *data, "--max-steps",
              str(arguments.steps), "--per-device-train-batch-size", str(arguments.batch_size),
              "--logging-steps", "1", "--save-steps", "1000000", "--torch-dtype",
              arguments.torch_dtype, "--json"]

    runs: list[tuple[str, list[str], list[str]]] = [("hf", [], ["--engine", "hf"])]
    if importlib.util.find_spec("vllm") is not None:
        runs.append(("vllm (sleep, TP=1, 0.3)", [],
                     ["--engine", "vllm", "--gpu-memory-utilization", "0.3",
                      "--vllm-enable-sleep-mode", "--vllm-tensor-parallel-size", "1"]))
    else:
        print("vLLM is not installed: its row is skipped (pip install 'treerpo[vllm]')")
    if torch.cuda.device_count() >= 2:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        two = [torchrun, "--standalone", "--nproc-per-node", "2"]
        runs.append(("hf, 2 processes, DDP", two, ["--engine", "hf"]))
        if importlib.util.find_spec("vllm") is not None:  # chained FSDP grows with vLLM only
            runs.append(("vllm, 2 processes, FSDP full_shard", two,
                         ["--engine", "vllm", "--gpu-memory-utilization", "0.3",
                          "--vllm-enable-sleep-mode", "--fsdp", "full_shard"]))
    else:
        print("one GPU: the two-process row is skipped")

    table = Table(title="treerpo chained training on " + torch.cuda.get_device_name(0))
    for header in ("setting", "s / step", "peak update MiB", "ratio at step 1", "status"):
        table.add_column(header)
    with tempfile.TemporaryDirectory() as scratch:
        for index, (label, launcher, engine_flags) in enumerate(runs):
            output_dir = Path(scratch) / f"run{index}"
            command = [*(launcher or [sys.executable]), "-m", "treerpo.cli", *common,
                       *engine_flags, "--output-dir", str(output_dir),
                       "--db", f"sqlite:///{Path(scratch) / f'run{index}.db'}"]
            finished = subprocess.run(command, capture_output=True, text=True,
                                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if finished.returncode != 0:
                table.add_row(label, "-", "-", "-",
                              "failed: " + (finished.stderr.strip().splitlines() or ["?"])[-1])
                continue
            steps = [json.loads(line) for line in
                     (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
            step_seconds = [step["step_seconds"] for step in steps]
            peak = max((step.get("peak_memory_mb") or 0.0) for step in steps)
            table.add_row(label, f"{sum(step_seconds) / len(step_seconds):.2f}", f"{peak:.0f}",
                          f"{steps[0]['ratio_mean']:.4f}", "ok")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where training metrics go: `output_dir/metrics.jsonl` always, TensorBoard or W&B on request.

`--report-to tensorboard|wandb` needs the package installed; without it the run is refused before
any model loads (exit 2), rather than training blind.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from treerpo.errors import BadInputError

METRICS_FILE = "metrics.jsonl"
_REPORT_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class MetricsSink:
    """Appends one JSON line per logged step; forwards the numbers to an optional tracker."""

    def __init__(self, *, path: Path | None, tracker=None) -> None:
        self.path = path
        self.tracker = tracker

    def write(self, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.tracker is not None:
            self.tracker.log(metrics)

    def forget_after(self, step: int) -> None:
        """Drop the rows of steps after `step` (a fresh start or a resume redoes them)."""
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def _tracker_name(metric: str) -> str:
    """`eval_accuracy` → `eval/accuracy`, `loss` → `train/loss` (HF Trainer's grouping)."""
    if metric.startswith("eval_"):
        return f"eval/{metric.removeprefix('eval_')}"
    return f"train/{metric}"


class _TensorBoard:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, Any]) -> None:
        for name, value in metrics.items():
            if name != "step" and isinstance(value, int | float):
                self.writer.add_scalar(_tracker_name(name), value, metrics["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, *, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project="treerpo", name=run_name, config=config)

    def log(self, metrics: dict[str, Any]) -> None:
        self.run.log({_tracker_name(k): v for k, v in metrics.items() if v is not None},
                     step=metrics["step"])

    def close(self) -> None:
        self.run.finish()


def check_report_to(report_to: str) -> None:
    """Refuse a tracker whose package is not installed (BadInputError)."""
    package = _REPORT_PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise BadInputError(f"--report-to {report_to} needs the {package} package: "
                            f"pip install {package} (or use --report-to none)")


def open_metrics_sink(
    *, output_dir: Path, report_to: str, run_name: str, config, enabled: bool
) -> MetricsSink:
    """The sink of the main process (`enabled`); other processes get one that drops everything."""
    check_report_to(report_to)
    if not enabled:
        return MetricsSink(path=None)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracker = None
    if report_to == "tensorboard":
        tracker = _TensorBoard(output_dir / "runs" / run_name)
    elif report_to == "wandb":
        tracker = _WandB(run_name=run_name, config=config.model_dump(mode="json"))
    return MetricsSink(path=output_dir / METRICS_FILE, tracker=tracker)

"""Startup: `import treerpo.cli` loads no torch or transformers, and `train --help` is grouped
into panels that read at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PANELS = ("Data", "Rewards", "Tree growth", "Sampling", "Optimisation", "Engine",
          "Logging, checkpoints and store", "TRL spellings")


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_importing_the_cli_loads_no_torch_or_transformers():
    result = _python("-c", "import sys, treerpo.cli; "
                           "heavy = [m for m in ('torch', 'transformers', 'accelerate', "
                           "'math_verify') if m in sys.modules]; "
                           "assert not heavy, heavy")
    assert result.returncode == 0, result.stderr


def test_train_help_has_panels_and_fits_80_columns():
    result = _python("-m", "treerpo.cli", "train", "--help",
                     env={"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not [line for line in lines if "…" in line]  # nothing cut
    titles = [line.strip("╭─╮ ") for line in lines if line.startswith("╭─")]
    for panel in PANELS:
        assert panel in titles
    # The TRL spellings are mentioned, each option is listed once.
    assert "--model_name_or_path" in result.stdout
    assert result.stdout.count("--max-new-tokens") == 1

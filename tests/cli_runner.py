"""Run the CLI in-process, the way a user's shell would, capturing stdout, stderr and exit code."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

from treerpo.cli import main


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def error_lines(stderr: str) -> list[str]:
    """stderr's lines after the `store: URL` line a command that writes opens with: a failure
    should leave exactly one."""
    lines = stderr.strip().splitlines()
    return lines[1:] if lines and lines[0].startswith("store: ") else lines


def run_cli(*args: str) -> CliResult:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        exit_code = main([str(arg) for arg in args])
    return CliResult(exit_code=exit_code, stdout=stdout.getvalue(), stderr=stderr.getvalue())

"""Whole runs as child processes, for the scripts that compare them (bench, resume_check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_command(*flags: str) -> list[str]:
    """`python -m jaxmnist.train FLAGS` with this interpreter."""
    return [sys.executable, "-m", "jaxmnist.train", *flags]


def run_or_exit(command: list[str], what: str, keep_output: Path | None = None) -> subprocess.CompletedProcess:
    """Run command from the repository root, quietly. If it fails, exit with its own reason in one
    line: jaxmnist's commands give it as the last line of stderr."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode == 0:
        return result
    said = result.stderr if result.stderr.strip() else result.stdout
    reason = (said.strip().splitlines() or [f"exit status {result.returncode}, no output"])[-1]
    if keep_output is not None:
        keep_output.parent.mkdir(parents=True, exist_ok=True)
        keep_output.write_text(result.stdout + result.stderr)
        reason += f" (all it printed: {keep_output})"
    sys.exit(f"{what} failed: {reason}")

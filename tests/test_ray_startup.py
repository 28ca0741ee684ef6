"""`rsilab run --executor ray` on one machine says what it waits for while Ray starts
(issue 24): each start-up step as it begins, and how long it took. A real local Ray, started
by the command itself (one CPU: `--workers 1` of the toy task's one thread)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "ray", reason="Ray is not installed (the optional extra: pip install 'rsilab[ray]')"
)


def test_ray_start_up_is_told_step_by_step(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(tmp_path / "ws"), "--task", "toy",
         "--executor", "ray", "--workers", "1", "--max-experiments", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    order = [
        next(i for i, s in enumerate(lines) if text in s)
        for text in (
            "ray: starting a local Ray",
            "ray: up after",
            "ray: starting the log channel",
            "ray: ready after",
            "executor: ray, 1 slot(s)",
            "baseline run 1/",
        )
    ]
    assert order == sorted(order), out.stdout

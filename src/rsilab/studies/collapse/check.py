"""`rsilab collapse --check`. Owns: the smoke test of the collapse pipeline for one task.

Runs a short replace/accumulate comparison (1 seed, generations 0..2, a 2 s training budget,
a small evaluation slice, 2 KiB corpora; a `--set` given by the user wins) and verifies
what a real study relies on: every cell trained, was scored by the evaluator on real,
hash-locked validation data and sampled; replace trained on synthetic bytes only;
accumulate on real + S_1 + S_2 in that order; runs on generated data are flagged; every
metric is finite. It says whether the pipeline works, not whether collapse happens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.notify import Notify
from rsilab.studies.collapse.study import (
    SHARED,
    Sampler,
    Study,
    Trainer,
    finished,
    open_study,
)

CHECK_OVERRIDES: list[tuple[str, Any]] = [("budget", 2), ("eval.bytes", 8192)]
CHECK_SIZE = 2048
CHECK_GENERATIONS = 2


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    problems: list[str]
    summary: str  # one line: replace vs accumulate at the last generation


def run_check(
    out: Path,
    *,
    task_name: str | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    preset: str | None = None,
    trainer: Trainer | None = None,
    sampler: Sampler | None = None,
    notify: Notify = print,
) -> CheckResult:
    study = open_study(
        out,
        task_name=task_name,
        overrides=[*CHECK_OVERRIDES, *overrides],
        policies="replace,accumulate",
        seeds=1,
        generations=CHECK_GENERATIONS,
        size=CHECK_SIZE,
        temperature=1.0,
        preset=preset,
        trainer=trainer,
        sampler=sampler,
        notify=notify,
    )
    rows = study.run()
    problems = verify(study, rows)
    done = finished(rows)
    last = [
        (label, done.get(c))
        for label in ("replace", "accumulate")
        for c in study.cells()
        if c.policy == label and c.generation == CHECK_GENERATIONS
    ]
    summary = ", ".join(
        f"{label} g{CHECK_GENERATIONS} val_bpb {r['val_bpb']:.4f}" for label, r in last if r
    )
    return CheckResult(not problems, problems, summary)


def verify(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the study's cells (empty when the pipeline works)."""
    problems: list[str] = []
    done = finished(rows)
    for cell in study.cells():
        row = done.get(cell)
        if row is None:
            tries = [
                r
                for r in rows
                if (r["policy"], r["seed"], r["generation"])
                == (cell.policy, cell.seed, cell.generation)
            ]
            why = (
                f"{tries[-1]['status']}: {tries[-1]['run'].get('reason', '')}"
                if tries
                else "not run"
            )
            problems.append(f"{cell}: {why}")
            continue
        if not math.isfinite(row["val_bpb"] or math.nan):
            problems.append(f"{cell}: no finite val_bpb")
        bad = [k for k, v in row["metrics"].items() if not math.isfinite(v)]
        if bad or not row["metrics"]:
            problems.append(f"{cell}: sample metrics missing or not finite ({', '.join(bad)})")
        data = row["run"].get("evaluation", {}).get("data", {})
        val = data.get("val", {})
        if val.get("kind") != "real" or not val.get("locked"):
            problems.append(
                f"{cell}: the run's validation data is not recorded as real and hash-locked"
            )
        train = row["data"].get("train", {})
        g = cell.generation
        if g > 0 and data.get("generated_train_data") is not True:
            problems.append(
                f"{cell}: the run on generated data is not flagged generated_train_data"
            )
        parts = [(p["kind"], p.get("generation")) for p in train.get("parts", [])]
        if cell.policy == SHARED and train.get("kind") != "real":
            problems.append(f"{cell}: generation 0 trained on {train.get('kind')} data, not real")
        if cell.policy == "replace" and (
            train.get("real_bytes") != 0 or train.get("kind") != "generated"
        ):
            problems.append(
                f"{cell}: replace trained on {train.get('real_bytes')} real bytes (expected none)"
            )
        expected = [("real", None), *(("generated", j) for j in range(1, g + 1))]
        if cell.policy == "accumulate" and parts != expected:
            problems.append(f"{cell}: accumulate trained on parts {parts}, expected {expected}")
    return problems

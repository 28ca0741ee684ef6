"""`rsilab prepare`, `rsilab train`, `rsilab doctor`. Owns: their options and output."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from rsilab.cli.app import (
    friendly,
    isolation_for,
    main,
    make_bench,
    parse_overrides,
    preset_option,
    require_sandbox_option,
    set_option,
)
from rsilab.config import resolve_task_dir
from rsilab.inert import inert, inert_lines

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    pass


@main.command()
@click.option(
    "--data",
    "source",
    default="shakespeare",
    show_default=True,
    help="'shakespeare', a text file or folder, or hf:NAME[:split].",
)
@click.option("--force", is_flag=True, help="Rebuild even when a verified copy is cached.")
@friendly
def prepare(source: str, force: bool) -> None:
    """Fetch, verify and split a dataset into the cache (RSILAB_HOME)."""
    from rsilab.data import prepare as do_prepare

    t = time.perf_counter()
    d = do_prepare(source, force=force)
    m = d.manifest
    click.echo(
        f"prepared {d.dataset_id} in {time.perf_counter() - t:.1f} s: "
        f"train {m['files']['train.bin']['size']:,} bytes, val {m['files']['val.bin']['size']:,} bytes"
    )
    click.echo(f"  {d.root}")


@main.command()
@click.option(
    "--task",
    "task_name",
    default=None,
    help="Bundled task name or task folder (default: . or gpt).",
)
@click.option("--seed", default=0, show_default=True, help="Harness seed.")
@preset_option
@set_option
@require_sandbox_option
@friendly
def train(
    task_name: str | None,
    seed: int,
    preset: str | None,
    sets: tuple[str, ...],
    require_sandbox: bool,
) -> None:
    """Train and evaluate a task's current code once, and print the summary."""
    import shutil

    from rsilab import paths
    from rsilab.config import load_task
    from rsilab.run import sandbox

    task_dir = resolve_task_dir(task_name)
    task = load_task(task_dir, parse_overrides(sets))
    isolation, level = isolation_for(require_sandbox, task)
    with make_bench(task, "local", None, None, preset=preset, isolation=isolation) as bench:
        run_dir = paths.stamped_dir(paths.home() / "runs", f"{task.name}-")
        work = run_dir / "work"
        shutil.copytree(
            task_dir, work, ignore=shutil.ignore_patterns("__pycache__", ".rsilab", ".git")
        )
        click.echo(
            f"training {task.name} for {task.budget:g} s (seed {seed}); log: {run_dir / 'train.log'}"
        )
        click.echo(f"sandbox: {sandbox.describe(level)}")
        r = bench.run(work, run_dir, seed, label="training")
    click.echo("---")
    click.echo(f"status:            {r.status}")
    if r.metric is not None:
        sealed = "sealed evaluator" if r.evaluation.get("sealed") else "in-process, unsealed"
        click.echo(f"{task.metric.name + ':':<18} {r.metric:.6f}  ({sealed})")
    for key in (
        "training_seconds",
        "num_steps",
        "num_params_M",
        "tokens_per_second",
        "mfu_percent",
        "peak_memory_gb",
    ):
        if key in r.summary:
            click.echo(f"{key + ':':<18} {r.summary[key]:g}")
    click.echo(f"{'train_wall_s:':<18} {r.train_seconds:.1f}")
    click.echo(f"{'eval_wall_s:':<18} {r.eval_seconds:.1f}")
    click.echo(f"{'isolation:':<18} {r.isolation}")
    click.echo(f"{'log:':<18} {r.log_path}")
    if not r.ok:
        click.echo(f"reason:            {inert(r.reason)}")
        if r.log_tail:
            click.echo("--- last lines of the log ---")
            click.echo(inert_lines(r.log_tail))
        sys.exit(1)


@main.command()
@click.option(
    "--task", "task_name", default=None, help="Task whose settings to check (default: . or gpt)."
)
@click.option("--no-ping", is_flag=True, help="Do not contact the LLM.")
@set_option
@friendly
def doctor(task_name: str | None, no_ping: bool, sets: tuple[str, ...]) -> None:
    """Say what is configured and reachable: torch/device, git, sandbox, data, LLM, agent CLIs."""
    from rsilab.config import load_task
    from rsilab.doctor import checks

    task = load_task(resolve_task_dir(task_name), parse_overrides(sets))
    for c in checks(task, ping=not no_ping):
        click.echo(f"{'ok ' if c.ok else '-- '} {c.name:<13} {c.detail}")

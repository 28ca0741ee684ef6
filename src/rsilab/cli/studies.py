"""`rsilab collapse`, `rsilab score`, `rsilab meta`. Owns: their options and output; the
studies themselves are rsilab.studies."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rsilab.cli.app import (
    executor_options,
    friendly,
    main,
    make_bench,
    parse_overrides,
    preset_option,
    set_option,
)
from rsilab.config import resolve_task_dir
from rsilab.inert import say

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    pass


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), required=False)
@click.option(
    "--task",
    "task_name",
    default=None,
    help="Bundled task name or task folder (default: the study's, else gpt).",
)
@click.option(
    "--generations",
    type=int,
    default=None,
    help="Synthetic generations: trains generations 0..N (default 4).",
)
@click.option(
    "--policies",
    default=None,
    help="Comma list of replace, accumulate, mix:p (default replace,accumulate).",
)
@click.option("--seeds", type=int, default=None, help="Seeds per policy (default 3).")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default 1.0).")
@click.option(
    "--size",
    default=None,
    help="Bytes of the real corpus and of each synthetic one: 16k, 20000 or "
    "full (default 16k on cpu, 1m on gpu: sampling a fixed-shape model is slow).",
)
@preset_option
@click.option(
    "--check",
    is_flag=True,
    help="Smoke test: a short replace/accumulate comparison (1 seed, 2 generations).",
)
@set_option
@friendly
def collapse(
    directory: Path | None,
    task_name: str | None,
    generations: int | None,
    policies: str | None,
    seeds: int | None,
    temperature: float | None,
    size: str | None,
    preset: str | None,
    check: bool,
    sets: tuple[str, ...],
) -> None:
    """Model collapse: train each generation on samples of the previous one, under data policies.

    Resumes like `rsilab run`: run it again on DIRECTORY (default ./collapse) to finish."""
    import tempfile

    from rsilab.studies.collapse import open_study, write_report
    from rsilab.studies.collapse.study import finished, parse_size

    if check:
        from rsilab.studies.collapse.check import run_check

        out = directory or Path(tempfile.mkdtemp(prefix="rsilab-collapse-check-"))
        t = time.perf_counter()
        got = run_check(
            out,
            task_name=task_name,
            overrides=parse_overrides(sets),
            preset=preset,
            notify=say,
        )
        for problem in got.problems:
            click.echo(f"  problem: {problem}")
        verdict = "ok: the pipeline works" if got.ok else f"FAILED ({len(got.problems)} problems)"
        click.echo(
            f"collapse check: {verdict} in {time.perf_counter() - t:.0f} s; {got.summary}; files: {out}"
        )
        sys.exit(0 if got.ok else 1)
    study = open_study(
        directory or Path("collapse"),
        task_name=task_name,
        overrides=parse_overrides(sets),
        policies=policies,
        seeds=seeds,
        generations=generations,
        temperature=temperature,
        size=parse_size(size),
        preset=preset,
        notify=say,
    )
    rows = study.run()
    click.echo(write_report(study, rows))
    click.echo(
        f"files: {study.out}/collapse.png, collapse_cells.csv, collapse_summary.csv, collapse.json"
    )
    done = finished(rows)
    missing = [c for c in study.cells() if c not in done]
    if missing:
        click.echo(
            f"{len(missing)} cells unfinished (a failure ends its chain); run the same command to retry",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--references",
    default="all",
    show_default=True,
    help="Human reference solutions to score against: all, or NAME,NAME (the task's reference/ folder).",
)
@click.option(
    "--seeds",
    type=int,
    default=3,
    show_default=True,
    help="Runs of each contender (the same fresh seeds).",
)
@click.option("--commit", default=None, help="Score this commit instead of the incumbent.")
@click.option(
    "--compare",
    "compare_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A human-steered workspace of the same task and budget (for supremacy); repeatable.",
)
@click.option(
    "--reference-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of reference solutions (default: the workspace's reference/, else the bundled task's).",
)
@click.option(
    "--preset",
    type=click.Choice(["cpu", "gpu"]),
    default=None,
    help="Knob preset (default: the workspace's).",
)
@set_option
@executor_options
@friendly
def score(
    directory: Path,
    references: str,
    seeds: int,
    commit: str | None,
    compare_dirs: tuple[Path, ...],
    reference_dir: Path | None,
    preset: str | None,
    sets: tuple[str, ...],
    executor_name: str,
    address: str | None,
) -> None:
    """Score the incumbent against the baseline (0) and human reference solutions (1), with milestones."""
    from rsilab import harness
    from rsilab.record.ledger import Ledger
    from rsilab.studies.score import SCORE_FILE, format_table, score_workspace
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:  # the research's own settings: the same budget
        sets = sets or tuple(ledger.get_setting("overrides", []))
        preset = (
            preset or (ledger.get_setting("comparable") or {}).get("preset") or harness.preset()
        )
    task = ws.load_task(parse_overrides(sets))
    names = (
        None
        if references.strip() == "all"
        else [n.strip() for n in references.split(",") if n.strip()]
    )
    with make_bench(task, executor_name, address, None, preset=preset) as bench:
        report = score_workspace(
            ws,
            bench,
            references=names,
            seeds=seeds,
            commit=commit,
            compare_dirs=list(compare_dirs),
            reference_folder=reference_dir,
            notify=say,
        )
    click.echo(format_table(report))
    click.echo(f"wrote {ws.root / SCORE_FILE}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--task",
    "task_name",
    default="gpt",
    show_default=True,
    help="Bundled task name or task folder.",
)
@click.option(
    "--generations", type=int, default=2, show_default=True, help="Generations of strategies."
)
@click.option(
    "--strategies",
    type=int,
    default=2,
    show_default=True,
    help="Strategies per generation: the champion and K-1 variants.",
)
@click.option(
    "--session-experiments",
    type=int,
    default=None,
    help="Size of a research session: N experiments.",
)
@click.option(
    "--session-minutes",
    type=float,
    default=None,
    help="Size of a research session: M wall-clock minutes.",
)
@click.option("--proposer", default="tuner", show_default=True, help="tuner, random, llm or agent.")
@click.option(
    "--confirm-seeds",
    type=int,
    default=3,
    show_default=True,
    help="Fresh runs confirming each session's incumbent (and the baseline).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the strategy search.")
@preset_option
@set_option
@executor_options
@friendly
def meta(
    directory: Path,
    task_name: str,
    generations: int,
    strategies: int,
    session_experiments: int | None,
    session_minutes: float | None,
    proposer: str,
    confirm_seeds: int,
    seed: int,
    preset: str | None,
    sets: tuple[str, ...],
    executor_name: str,
    address: str | None,
) -> None:
    """Improve the research strategy by research: sessions under competing strategies, by velocity."""
    from rsilab import harness
    from rsilab.config import load_task
    from rsilab.studies.strategy import META_FILE, StrategySearch, format_table

    task_dir = resolve_task_dir(task_name)
    with make_bench(
        load_task(task_dir, parse_overrides(sets)), executor_name, address, None
    ) as bench:
        m = StrategySearch(
            directory,
            task_dir=task_dir,
            overrides=list(sets),
            preset=preset or harness.preset(),
            proposer=proposer,
            session_experiments=session_experiments,
            session_minutes=session_minutes,
            confirm_seeds=confirm_seeds,
            seed=seed,
            train_data=bench.train_data,
            val_data=bench.val_data,
            executor=bench.executor,
            notify=say,
        )
        state = m.run(generations, strategies)
    click.echo(format_table(state))
    click.echo(f"wrote {directory / META_FILE}")

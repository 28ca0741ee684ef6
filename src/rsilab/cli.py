"""The `rsilab` command line. Owns: argv, logging setup, and turning errors into messages.

Thin on purpose: each command parses its options, calls the library, prints. A user
mistake (`RsilabError`) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from rsilab import __version__
from rsilab.config import TaskSpec, parse_override, resolve_task_dir
from rsilab.errors import ConfigError, RsilabError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_PROPOSER = "tuner"


def _friendly(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsilabError as e:
            click.echo(f"rsilab: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("rsilab: interrupted; the ledger and git are consistent, `rsilab run` resumes", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _overrides(values: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [parse_override(v) for v in values]


set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override an rsilab.toml key, e.g. --set budget=30 --set judge.alpha=0.1.")


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """rsilab: AI agents (or an offline tuner) do ML research on a real training script.

    Start with `rsilab run --dir lab` (bundled `gpt` task, offline tuner, CPU is fine).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _task_data(task: TaskSpec) -> tuple[Path | None, Path | None]:
    """Train and validation paths for a task, preparing the data on first use."""
    if task.data == "none":
        return None, None
    from rsilab.data import prepare

    prepared = prepare(task.data)
    return prepared.train_path, prepared.val_path


@main.command()
@click.option("--data", "source", default="shakespeare", show_default=True,
              help="'shakespeare', a text file or folder, or hf:NAME[:split].")
@click.option("--force", is_flag=True, help="Rebuild even when a verified copy is cached.")
@_friendly
def prepare(source: str, force: bool) -> None:
    """Fetch, verify and split a dataset into the cache (RSILAB_HOME)."""
    from rsilab.data import prepare as do_prepare

    t = time.perf_counter()
    d = do_prepare(source, force=force)
    m = d.manifest
    click.echo(f"prepared {d.dataset_id} in {time.perf_counter() - t:.1f} s: "
               f"train {m['files']['train.bin']['size']:,} bytes, val {m['files']['val.bin']['size']:,} bytes")
    click.echo(f"  {d.root}")


@main.command()
@click.option("--task", "task_name", default=None, help="Bundled task name or task folder (default: . or gpt).")
@click.option("--seed", default=0, show_default=True, help="Harness seed.")
@click.option("--preset", type=click.Choice(["cpu", "gpu"]), default=None, help="Knob preset (default: by device).")
@set_option
@_friendly
def train(task_name: str | None, seed: int, preset: str | None, sets: tuple[str, ...]) -> None:
    """Train and evaluate a task's current code once, and print the summary."""
    import shutil

    from rsilab import paths, runner
    from rsilab.config import load_task

    task_dir = resolve_task_dir(task_name)
    task = load_task(task_dir, _overrides(sets))
    train_data, val_data = _task_data(task)
    run_dir = paths.home() / "runs" / f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    work = run_dir / "work"
    shutil.copytree(task_dir, work, ignore=shutil.ignore_patterns("__pycache__", ".rsilab", ".git"))
    click.echo(f"training {task.name} for {task.budget:g} s (seed {seed}); log: {run_dir / 'train.log'}")
    r = runner.run(task, work, run_dir, seed=seed, train_data=train_data, val_data=val_data, preset=preset)
    click.echo("---")
    click.echo(f"status:            {r.status}")
    if r.metric is not None:
        sealed = "sealed evaluator" if r.evaluation.get("sealed") else "in-process, unsealed"
        click.echo(f"{task.metric.name + ':':<18} {r.metric:.6f}  ({sealed})")
    for key in ("training_seconds", "num_steps", "num_params_M", "tokens_per_second", "mfu_percent", "peak_memory_gb"):
        if key in r.summary:
            click.echo(f"{key + ':':<18} {r.summary[key]:g}")
    click.echo(f"{'train_wall_s:':<18} {r.train_seconds:.1f}")
    click.echo(f"{'eval_wall_s:':<18} {r.eval_seconds:.1f}")
    click.echo(f"{'log:':<18} {r.log_path}")
    if not r.ok:
        click.echo(f"reason:            {r.reason}")
        if r.log_tail:
            click.echo("--- last lines of the log ---")
            click.echo(r.log_tail)
        sys.exit(1)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--task", "task_name", default="gpt", show_default=True, help="Bundled task name or task folder.")
@click.option("--tag", default=None, help="Research branch rsilab/<tag> (default: today's date).")
@click.option("--resume", is_flag=True, help="Adopt an existing branch of that tag.")
@_friendly
def init(directory: Path, task_name: str, tag: str | None, resume: bool) -> None:
    """Create a workspace: copy a task into DIRECTORY (a git repo) and open a research branch."""
    from rsilab.workspace import init_workspace

    ws = init_workspace(directory, resolve_task_dir(task_name), tag or _default_tag(), resume=resume)
    click.echo(f"workspace {ws.root} on branch {ws.branch} (incumbent {ws.incumbent_commit()[:7]})")
    click.echo(f"next: rsilab run {ws.root}")


def _default_tag() -> str:
    return time.strftime("%b%d").lower()


# Settings that make results comparable; a workspace refuses to mix runs made under others.
_COMPARABLE = ("budget", "evaluator", "data", "seed", "threads", "eval.bytes", "metric.name", "metric.direction")


def _check_comparable(ledger: Any, task: TaskSpec, preset: str) -> None:
    current = {"preset": preset}
    for key in _COMPARABLE:
        obj: Any = task
        for part in key.split("."):
            obj = getattr(obj, part)
        current[key] = obj
    recorded = ledger.get_meta("comparable")
    if recorded is None:
        ledger.set_meta("comparable", current)
        ledger.set_meta("metric", task.metric.name)
        return
    for key, value in current.items():
        if key in recorded and recorded[key] != value:
            raise ConfigError(f"{key} = {value!r} differs from this workspace's {recorded[key]!r}: results would "
                              "not be comparable; start a new workspace (or --tag) for other settings")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--task", "task_name", default="gpt", show_default=True,
              help="Task to copy in when DIRECTORY is not a workspace yet.")
@click.option("--tag", default=None, help="Research tag when creating the workspace.")
@click.option("--proposer", default=None,
              help="tuner, random, llm, agent or queue; X+tuner lets the tuner re-tune after X's kept changes. "
                   "Default: rsilab.toml's, else llm when an LLM is configured in the environment, else tuner.")
@click.option("--max-experiments", type=int, default=None, help="Stop after N new experiments.")
@click.option("--hours", type=float, default=None, help="Stop after this many hours.")
@click.option("--max-cost", type=float, default=None, help="Stop when proposals have cost this many USD.")
@click.option("--max-tokens", type=int, default=None, help="Stop when proposals have used this many tokens.")
@click.option("--preset", type=click.Choice(["cpu", "gpu"]), default=None, help="Knob preset (default: by device).")
@set_option
@_friendly
def run(directory: Path, task_name: str, tag: str | None, proposer: str | None, max_experiments: int | None,
        hours: float | None, max_cost: float | None, max_tokens: int | None, preset: str | None,
        sets: tuple[str, ...]) -> None:
    """Do research in a workspace until a stop rule (creates it on first use; resumes after a stop)."""
    from rsilab import harness
    from rsilab.ledger import Ledger
    from rsilab.orchestrator import Limits, Supervisor
    from rsilab.proposers import create
    from rsilab.report.live import LiveView
    from rsilab.workspace import STATE_DIR, init_workspace, open_workspace

    if not (directory / STATE_DIR / "workspace.json").is_file():
        ws = init_workspace(directory, resolve_task_dir(task_name), tag or _default_tag())
        click.echo(f"created workspace {ws.root} on branch {ws.branch}")
    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        # --set overrides stick to the workspace, so a plain `rsilab run DIR` resumes alike.
        recorded = ledger.get_meta("overrides", [])
        if not sets and recorded:
            sets = tuple(recorded)
            click.echo(f"using this workspace's overrides: {' '.join(sets)}")
        task = ws.load_task(_overrides(sets))
        preset = preset or harness.preset()
        _check_comparable(ledger, task, preset)
        if list(sets) != recorded:
            ledger.set_meta("overrides", list(sets))
            ledger.add_event("config", f"overrides: {' '.join(sets) or '(none)'}", source="cli")
    train_data, val_data = _task_data(task)
    name, follow = _choose_proposer(proposer, task)
    # Queued human ideas always go first; then the chosen proposer.
    proposers = [create("queue", queue_dir=ws.queue_dir)]
    if name != "queue":
        proposers.append(create(name, **_proposer_options(name, task)))
    follower = create("tuner", **_proposer_options("tuner", task)) if follow else None
    click.echo(f"proposer: {name}" + (" (+ tuner after its kept changes)" if follow else ""))
    with Ledger(ws.ledger_path) as ledger:
        try:
            with LiveView(task.metric.name, str(ws.root)) as view:
                sup = Supervisor(ws, task, ledger, proposers, train_data=train_data, val_data=val_data,
                                 preset=preset, limits=Limits(max_experiments, hours, max_cost, max_tokens),
                                 notify=view, follower=follower)
                reason = sup.run()
        finally:  # also on Ctrl-C: results.tsv always matches the ledger
            ledger.export_tsv(ws.root / "results.tsv", task.metric.name)
        click.echo(f"stopped: {reason}")
        _print_status(ledger, task.metric.name, ws.root)


def _choose_proposer(given: str | None, task: TaskSpec) -> tuple[str, bool]:
    """(proposer name, whether the tuner follows it) from --proposer, rsilab.toml or the env."""
    from rsilab.proposers.llmclient import configured

    choice = given or task.proposer or ("llm" if configured() else DEFAULT_PROPOSER)
    name, plus, follower = choice.partition("+")
    if plus and follower != "tuner":
        raise ConfigError(f"--proposer {choice!r}: only the tuner can follow (X+tuner)")
    return name, bool(plus) and name != "tuner"


def _proposer_options(name: str, task: TaskSpec) -> dict[str, Any]:
    if name in ("tuner", "random"):
        return {"seed": task.tuner.seed, "max_knobs": task.tuner.max_knobs, "exclude": task.tuner.exclude}
    if name == "llm":
        return {"spec": task.llm}
    if name == "agent":
        a = task.agent
        return {"cli": a.cli, "command": a.command, "model": a.model, "timeout": a.timeout}
    return {}


def _print_status(ledger: Any, metric: str, root: Path, recent: int = 10) -> None:
    exps = ledger.experiments()
    if not exps:
        click.echo("no experiments yet")
        return
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status] = counts.get(e.status, 0) + 1
    base, inc = exps[0], ledger.incumbent()
    click.echo(f"{len(exps)} experiments: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if inc is not None and base.metric is not None:
        vals = ledger.incumbent_values()
        best = sum(vals) / len(vals) if vals else inc.metric
        click.echo(f"baseline {metric} {base.metric:.4f} -> incumbent #{inc.id} {best:.4f} "
                   f"({inc.commit[:7]}: {inc.description})")
    costs = ledger.costs()
    if "compute" in costs:
        click.echo(f"compute: {costs['compute'] / 3600:.2f} h")
    click.echo(f"results: {root / 'results.tsv'}")
    click.echo("recent:")
    for e in exps[-recent:]:
        value = f"{e.metric:.4f}" if e.metric is not None else "   -  "
        click.echo(f"  #{e.id:<4} {e.status:<11} {value}  {e.description}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@_friendly
def status(directory: Path) -> None:
    """Summary and recent experiments of a workspace (safe while `rsilab run` works)."""
    from rsilab.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        _print_status(ledger, ledger.get_meta("metric", "val_bpb"), ws.root)


@main.command()
@click.option("--task", "task_name", default=None, help="Task whose settings to check (default: . or gpt).")
@click.option("--no-ping", is_flag=True, help="Do not contact the LLM.")
@set_option
@_friendly
def doctor(task_name: str | None, no_ping: bool, sets: tuple[str, ...]) -> None:
    """Say what is configured and reachable: torch/device, git, sandbox, data, LLM, agent CLIs."""
    from rsilab.config import load_task
    from rsilab.doctor import checks

    task = load_task(resolve_task_dir(task_name), _overrides(sets))
    for c in checks(task, ping=not no_ping):
        click.echo(f"{'ok ' if c.ok else '-- '} {c.name:<13} {c.detail}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@_friendly
def stop(directory: Path) -> None:
    """Ask a running `rsilab run` to stop after its current experiment."""
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    ws.stop_file.touch()
    click.echo(f"asked to stop: {ws.stop_file}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--from-tsv", "tsv", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Plot an autoresearch-format results.tsv instead of a workspace.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: the workspace).")
@_friendly
def report(directory: Path, tsv: Path | None, out: Path | None) -> None:
    """Write progress.png (and, for a workspace, results.tsv and results.json)."""
    from rsilab.report.progress import plot_progress, points_from_ledger, read_results_tsv

    if tsv is not None:
        if not tsv.is_file():
            raise ConfigError(f"{tsv}: no such file")
        metric, points = read_results_tsv(tsv)
        target = (out or tsv.parent) / "progress.png"
        plot_progress(points, target, metric=metric, title=f"rsilab · {tsv.name}")
        click.echo(f"wrote {target} ({len(points)} experiments)")
        return
    from rsilab.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    folder = out or ws.root
    folder.mkdir(parents=True, exist_ok=True)
    with Ledger(ws.ledger_path) as ledger:
        metric, points = points_from_ledger(ledger)
        direction = ledger.get_meta("comparable", {}).get("metric.direction", "min")
        plot_progress(points, folder / "progress.png", metric=metric, direction=direction,
                      title=f"rsilab · {ws.branch}")
        ledger.export_tsv(folder / "results.tsv", metric)
        ledger.export_json(folder / "results.json")
        ledger.export_csv(folder / "results.csv")
    click.echo(f"wrote {folder / 'progress.png'}, results.tsv, results.json, results.csv ({len(points)} experiments)")


if __name__ == "__main__":
    main()

"""The `rsilab` command line. Owns: argv, logging setup, and turning errors into messages.

Thin on purpose: each command parses its options, calls the library, prints. A user
mistake (`RsilabError`) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rsilab import __version__
from rsilab.config import TaskSpec, parse_override, resolve_task_dir
from rsilab.errors import ConfigError, RsilabError

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    from rsilab.loop.limits import Limits

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsilabError as e:
            click.echo(f"rsilab: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "rsilab: interrupted; the ledger and git are consistent, `rsilab run` resumes",
                err=True,
            )
            sys.exit(130)
        except OSError as e:  # a full disk is the user's to fix, not a bug: one line too
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            where = f" writing {e.filename}" if e.filename else ""
            click.echo(
                f"rsilab: out of disk space{where} ({e.strerror}); free some, then `rsilab run` "
                "resumes where it stopped",
                err=True,
            )
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _overrides(values: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [parse_override(v) for v in values]


set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an rsilab.toml key, e.g. --set budget=30 --set judge.alpha=0.1.",
)
preset_option = click.option(
    "--preset",
    type=click.Choice(["cpu", "gpu"]),
    default=None,
    help="Knob preset (default: by device).",
)
require_sandbox_option = click.option(
    "--require-sandbox",
    is_flag=True,
    help="Refuse to run unless bubblewrap isolates the runs (no network, no validation data or ledger in sight).",
)


def executor_options(fn: F) -> F:
    """--executor and --address: where the runs of a command execute."""
    fn = click.option(
        "--address",
        default=None,
        help="With --executor ray: the cluster's address (default: a local Ray).",
    )(fn)
    return click.option(
        "--executor",
        "executor_name",
        default="local",
        show_default=True,
        help="Where runs execute: local or ray.",
    )(fn)


def _isolation(require_sandbox: bool, task: TaskSpec | None = None) -> tuple[str, str]:
    """(setting for the runner, the level it gives here); refuses early under --require-sandbox."""
    from rsilab.run import sandbox

    setting = "require" if require_sandbox else (task.sandbox if task is not None else "auto")
    return setting, sandbox.resolve(setting)


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """rsilab: AI agents (or an offline tuner) do ML research on a real training script.

    Start with `rsilab run lab --max-experiments 4` (creates the workspace `lab` from the
    bundled `gpt` task; offline tuner; CPU is fine).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _task_data(task: TaskSpec) -> tuple[Path | None, Path | None]:
    """Train and validation paths for a task, preparing the data on first use."""
    if task.data == "none":
        return None, None
    from rsilab.data import prepare

    prepared = prepare(task.data)
    return prepared.train_path, prepared.val_path


@main.command()
@click.option(
    "--data",
    "source",
    default="shakespeare",
    show_default=True,
    help="'shakespeare', a text file or folder, or hf:NAME[:split].",
)
@click.option("--force", is_flag=True, help="Rebuild even when a verified copy is cached.")
@_friendly
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
@_friendly
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
    task = load_task(task_dir, _overrides(sets))
    isolation, level = _isolation(require_sandbox, task)
    with _bench(task, "local", None, None, preset=preset, isolation=isolation) as bench:
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
        click.echo(f"reason:            {r.reason}")
        if r.log_tail:
            click.echo("--- last lines of the log ---")
            click.echo(r.log_tail)
        sys.exit(1)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--task",
    "task_name",
    default="gpt",
    show_default=True,
    help="Bundled task name or task folder.",
)
@click.option("--tag", default=None, help="Research branch rsilab/<tag> (default: today's date).")
@click.option("--resume", is_flag=True, help="Adopt an existing branch of that tag.")
@_friendly
def init(directory: Path, task_name: str, tag: str | None, resume: bool) -> None:
    """Create a workspace: copy a task into DIRECTORY (a git repo) and open a research branch."""
    from rsilab.workspace import init_workspace

    ws = init_workspace(
        directory, resolve_task_dir(task_name), tag or _default_tag(), resume=resume
    )
    click.echo(f"workspace {ws.root} on branch {ws.branch} (incumbent {ws.incumbent_commit()[:7]})")
    click.echo(f"next: rsilab run {ws.root}")


def _default_tag() -> str:
    return time.strftime("%b%d").lower()


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--task",
    "task_name",
    default="gpt",
    show_default=True,
    help="Task to copy in when DIRECTORY is not a workspace yet.",
)
@click.option("--tag", default=None, help="Research tag when creating the workspace.")
@click.option(
    "--proposer",
    default=None,
    help="tuner, random, llm, agent or queue; X+tuner lets the tuner re-tune after X's kept changes; "
    "several with shares of the slots: NAME[@MODEL][:SHARE],... e.g. llm@m1:2,llm@m2:1,tuner:1. "
    "Default: rsilab.toml's, else llm when an LLM is configured in the environment, else tuner.",
)
@click.option("--max-experiments", type=int, default=None, help="Stop after N new experiments.")
@click.option("--hours", type=float, default=None, help="Stop after this many hours.")
@click.option(
    "--max-cost", type=float, default=None, help="Stop when proposals have cost this many USD."
)
@click.option(
    "--max-tokens", type=int, default=None, help="Stop when proposals have used this many tokens."
)
@preset_option
@click.option(
    "--ladder",
    default=None,
    metavar="S1,S2,...",
    help="Fidelity ladder: research at S1 seconds; a kept change must also win at each longer budget.",
)
@click.option(
    "--workers",
    default=None,
    metavar="K|auto",
    help="Experiments at once. Default: 1 locally, every slot of the cluster with ray; "
    "auto: one per GPU, else cores // the task's threads.",
)
@executor_options
@set_option
@require_sandbox_option
@_friendly
def run(
    directory: Path,
    task_name: str,
    tag: str | None,
    proposer: str | None,
    max_experiments: int | None,
    hours: float | None,
    max_cost: float | None,
    max_tokens: int | None,
    preset: str | None,
    ladder: str | None,
    workers: str | None,
    executor_name: str,
    address: str | None,
    sets: tuple[str, ...],
    require_sandbox: bool,
) -> None:
    """Do research in a workspace until a stop rule (creates it on first use; resumes after a stop)."""
    from rsilab.loop.limits import Limits

    _research(
        directory,
        task_name,
        tag,
        proposer,
        Limits(max_experiments, hours, max_cost, max_tokens),
        preset,
        ladder,
        workers,
        executor_name,
        address,
        sets,
        require_sandbox,
    )


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--task",
    "task_name",
    default="gpt",
    show_default=True,
    help="Task to copy in when DIRECTORY is not a workspace yet.",
)
@click.option("--tag", default=None, help="Research tag when creating the workspace.")
@preset_option
@set_option
@require_sandbox_option
@_friendly
def baseline(
    directory: Path,
    task_name: str,
    tag: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    require_sandbox: bool,
) -> None:
    """Measure the baseline under judge.noise_runs seeds and say what a change must gain to be kept.

    Creates the workspace on first use, like `rsilab run`, and stops after the baseline (a
    workspace that has one is only reported). `rsilab run` then goes on from it.
    """
    from rsilab.loop.limits import Limits
    from rsilab.proposers import choice as proposer_choice
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    task = _research(
        directory,
        task_name,
        tag,
        proposer_choice.DEFAULT,
        Limits(max_experiments=0),
        preset,
        None,
        None,
        "local",
        None,
        sets,
        require_sandbox,
        baseline_only=True,
    )
    with Ledger(open_workspace(directory).ledger_path) as ledger:
        _print_noise_floor(ledger, task)


def _research(
    directory: Path,
    task_name: str,
    tag: str | None,
    proposer: str | None,
    limits: Limits,
    preset: str | None,
    ladder: str | None,
    workers: str | None,
    executor_name: str,
    address: str | None,
    sets: tuple[str, ...],
    require_sandbox: bool,
    baseline_only: bool = False,
) -> TaskSpec:
    """`rsilab run` (and, with `baseline_only`, `rsilab baseline`): open or create the
    workspace, record the overrides, run the supervisor until a stop rule; returns the task."""
    from rsilab import harness
    from rsilab.loop.supervisor import Supervisor
    from rsilab.proposers import choice as proposer_choice
    from rsilab.proposers import create
    from rsilab.record.ledger import Ledger
    from rsilab.report.live import LiveView
    from rsilab.run import sandbox
    from rsilab.workspace import STATE_DIR, init_workspace, open_workspace

    if require_sandbox:  # before anything is created or run
        _isolation(True)
    if not (directory / STATE_DIR / "workspace.json").is_file():
        _check_before_creating(
            directory, task_name, proposer, sets, ladder, workers, executor_name, address
        )
        ws = init_workspace(directory, resolve_task_dir(task_name), tag or _default_tag())
        click.echo(f"created workspace {ws.root} on branch {ws.branch}")
    ws = open_workspace(directory)
    preset = preset or harness.preset()
    with Ledger(ws.ledger_path) as ledger:
        task, in_force = ws.research_task(ledger, sets, preset)
    if in_force and not sets:
        click.echo(f"using this workspace's overrides: {' '.join(in_force)}")
    gate = _ladder(ladder, task) if ladder else None
    isolation, level = _isolation(require_sandbox, task)
    train_data, val_data = _task_data(task)
    choices, follow = proposer_choice.choose(proposer, task)
    # Queued human ideas always go first; then the chosen proposers, with their shares.
    proposers = [create("queue", queue_dir=ws.queue_dir)]
    proposers += [_make_proposer(c, task) for c in choices if c.name != "queue"]
    shares = {c.label: c.share for c in choices}
    follower = create("tuner", task=task) if follow else None
    shown = ", ".join(
        c.label + (f" (share {c.share})" if len(choices) > 1 else "") for c in choices
    )
    if not baseline_only:
        click.echo(f"proposer: {shown}" + (" (+ tuner after its kept changes)" if follow else ""))
    bench = _bench(task, executor_name, address, workers, preset=preset, isolation=isolation)
    click.echo(f"executor: {bench.describe()}")
    with Ledger(ws.ledger_path) as ledger:
        try:
            with (
                bench,
                LiveView(task.metric.name, str(ws.root), isolation=sandbox.describe(level)) as view,
            ):
                sup = Supervisor(
                    ws,
                    ledger,
                    bench,
                    proposers,
                    limits=limits,
                    view=view,
                    follower=follower,
                    shares=shares,
                )
                sup.ladder = gate
                reason = sup.run()
        finally:  # also on Ctrl-C: results.tsv always matches the ledger
            ledger.export_tsv(ws.root / "results.tsv", task.metric.name)
        if not baseline_only:
            click.echo(f"stopped: {reason}")
            _print_status(ledger, task.metric.name, ws.root)
    return task


def _print_noise_floor(ledger: Any, task: TaskSpec) -> None:
    """The incumbent's values (the baseline's, at first) and what the judge asks of a
    change against them."""
    from rsilab.loop.judge import keep_threshold

    inc = ledger.incumbent()
    values = ledger.incumbent_values()
    if inc is None or not values:
        click.echo("no baseline: its runs did not finish (see `rsilab status`)")
        return
    name, spec = task.metric.name, task.judge
    who = (
        "baseline"
        if inc.id == ledger.experiments()[0].id
        else f"incumbent #{inc.id} ({inc.description})"
    )
    if len(values) < 2:
        click.echo(
            f"{who} {name} {values[0]:.4f} (1 run: no noise estimate; judge.noise_runs="
            f"{spec.noise_runs}); a candidate is compared value to value"
        )
        return
    sd = statistics.stdev(values)
    shown = " ".join(f"{v:.4f}" for v in values)
    click.echo(
        f"{who} {name} {statistics.fmean(values):.4f}, sd {sd:.4f} over {len(values)} seeds ({shown})"
    )
    first = keep_threshold(values, task.metric_obj, spec, 1, min_runs=spec.knob_min_runs)
    last = keep_threshold(values, task.metric_obj, spec, spec.max_runs, min_runs=spec.knob_min_runs)
    if last is None:
        click.echo(
            f"{who} did not move across seeds: any gain > judge.min_effect ({spec.min_effect:g}) is kept"
        )
        return

    def gain(g: float) -> str:
        return f"{g:.4f} ({g / sd:.1f} sd)"

    # The first look of a knob-only change (judge.knob_min_runs); the last look of any change.
    click.echo(
        f"to be kept (judge.alpha {spec.alpha:g}), a change must beat it by "
        + (f"{gain(first)} on its first run (knob values only), or " if first is not None else "")
        + f"{gain(last)} on average over {spec.max_runs} runs (judge.max_runs); the bar falls "
        "as the session pools its repeated runs into the noise estimate"
    )


def _check_before_creating(
    directory: Path,
    task_name: str,
    proposer: str | None,
    sets: tuple[str, ...],
    ladder: str | None,
    workers: str | None,
    executor_name: str,
    address: str | None,
) -> None:
    """A mistake in the options of a first `rsilab run` must not leave a workspace behind:
    what can be checked is checked before anything is created (and again afterwards)."""
    from rsilab.config import CONFIG_NAME, load_task
    from rsilab.proposers import choice as proposer_choice

    adopted = (directory / ".git").exists() and (directory / CONFIG_NAME).is_file()
    task = load_task(directory if adopted else resolve_task_dir(task_name), _overrides(sets))
    if ladder:
        _ladder(ladder, task)
    choices, _ = proposer_choice.choose(proposer, task)
    for choice in choices:
        if choice.name != "queue":
            _make_proposer(choice, task)
    _workers(workers, executor_name)
    if address and executor_name != "ray":
        raise ConfigError("--address is for --executor ray")


def _ladder(rungs: str, task: TaskSpec) -> Any:
    from rsilab.loop.ladder import Ladder, parse_ladder

    gate = Ladder(parse_ladder(rungs))
    gate.check_task(task)
    return gate


def _make_proposer(choice: Any, task: TaskSpec) -> Any:
    """A proposer for one --proposer item; `NAME@MODEL` picks the model and names it so."""
    from rsilab.proposers import create

    if choice.model and choice.name not in ("llm", "agent"):
        raise ConfigError(f"--proposer {choice.label}: @MODEL is for llm and agent")
    proposer = create(choice.name, task=task, **({"model": choice.model} if choice.model else {}))
    proposer.name = choice.label  # the ledger's proposer column tells the models apart
    return proposer


def _workers(text: str | None, executor: str) -> int | None:
    """--workers: a number; `auto` (None: as many as the resources allow); default 1 locally."""
    if text is None:
        return 1 if executor == "local" else None
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--workers {text!r}: give a number >= 1 or auto")
    return int(text)


def _bench(
    task: TaskSpec,
    executor_name: str,
    address: str | None,
    workers: str | None,
    *,
    preset: str | None = None,
    isolation: str | None = None,
) -> Any:
    """The Bench every run of a command goes through: the task's data (prepared on first
    use), the preset and sandbox, on the executor --executor/--address/--workers name."""
    from rsilab.run.bench import Bench
    from rsilab.run.executors import create as create_executor

    if address and executor_name != "ray":
        raise ConfigError("--address is for --executor ray")
    count = _workers(workers, executor_name)
    train_data, val_data = _task_data(task)
    executor = create_executor(
        executor_name, task=task, workers=count, **({"address": address} if address else {})
    )
    return Bench(
        task,
        train_data=train_data,
        val_data=val_data,
        preset=preset,
        isolation=isolation,
        executor=executor,
        owns_executor=True,
    )


def _print_status(ledger: Any, metric: str, root: Path, recent: int = 10) -> None:
    exps = ledger.experiments()
    if not exps:
        click.echo("no experiments yet")
        return
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status] = counts.get(e.status, 0) + 1
    base, inc = exps[0], ledger.incumbent()
    click.echo(
        f"{len(exps)} experiments: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    by: dict[str, list[int]] = {}  # proposer -> [experiments, kept]
    for e in exps[1:]:
        row = by.setdefault(e.proposer, [0, 0])
        row[0] += 1
        row[1] += e.status == "keep"
    if len(by) > 1:
        click.echo(
            "by proposer: " + ", ".join(f"{p} {n} ({k} kept)" for p, (n, k) in sorted(by.items()))
        )
    if inc is not None and base.metric is not None:
        vals = ledger.incumbent_values()
        best = sum(vals) / len(vals) if vals else inc.metric
        click.echo(
            f"baseline {metric} {base.metric:.4f} -> incumbent #{inc.id} {best:.4f} "
            f"({inc.commit[:7]}: {inc.description})"
        )
    end = max(e.decided_at or e.started_at for e in exps)
    hours = (end - base.started_at) / 3600
    per_hour = (len(exps) - 1) / hours if hours > 0 else 0.0
    rate = f", {per_hour:.{0 if per_hour >= 10 else 1}f} experiments/h" if per_hour else ""
    day, first, last = "%Y-%m-%d %H:%M", time.localtime(base.started_at), time.localtime(end)
    same_day = first[:3] == last[:3]
    click.echo(
        f"time: {time.strftime(day, first)} -> {time.strftime('%H:%M' if same_day else day, last)} "
        f"({f'{hours:.1f} h' if hours >= 1 else f'{hours * 60:.0f} min'}{rate})"
    )
    costs = ledger.costs()
    if "compute" in costs:
        click.echo(f"compute: {costs['compute'] / 3600:.2f} h")
    click.echo(f"results: {root / 'results.tsv'}")
    from rsilab.loop.progress import running

    flying = running(ledger)
    if flying:
        click.echo(f"in flight ({len(flying)}, as the ledger says):")
    for r in flying:
        since = time.strftime("%H:%M:%S", time.localtime(r.since))
        click.echo(
            f"  {r.node or '-':<18} #{r.experiment_id:<4} {r.label} since {since} "
            f"({time.time() - r.since:.0f} s) [{r.proposer}] {r.description}"
        )
    click.echo("recent:")
    for e in exps[-recent:]:
        value = f"{e.metric:.4f}" if e.metric is not None else "   -  "
        click.echo(f"  #{e.id:<4} {e.status:<11} {value}  {e.description}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@_friendly
def status(directory: Path) -> None:
    """Summary and recent experiments of a workspace (safe while `rsilab run` works)."""
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        _print_status(ledger, ledger.get_setting("metric", "val_bpb"), ws.root)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--live", is_flag=True, help="A supervisor is running: its current experiment is expected."
)
@_friendly
def audit(directory: Path, live: bool) -> None:
    """Re-verify the ledger against git and the run folders; one line per inconsistency (exit 1 if any)."""
    from rsilab.record.audit import audit as do_audit
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        found = do_audit(ws, ledger, live=live)
    for problem in found.problems:
        click.echo(problem)
    summary = f"{found.experiments} experiments ({found.kept} kept), {found.runs} runs"
    if found.problems:
        click.echo(f"audit: {len(found.problems)} inconsistencies in {summary}", err=True)
        sys.exit(1)
    click.echo(f"audit: ok: {summary} agree with git and their run folders")


@main.command()
@click.option(
    "--task", "task_name", default=None, help="Task whose settings to check (default: . or gpt)."
)
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
@click.option(
    "--now",
    is_flag=True,
    help="Cancel the runs in flight (recorded as interrupted) instead of finishing them.",
)
@_friendly
def stop(directory: Path, now: bool) -> None:
    """Ask a running `rsilab run` to stop after the experiments in flight (or --now)."""
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    ws.stop_file.write_text("now\n" if now else "")
    click.echo(f"asked to stop{' now' if now else ''}: {ws.stop_file}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--from-tsv",
    "tsv",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Plot an autoresearch-format results.tsv instead of a workspace.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: the workspace).",
)
@click.option(
    "--html",
    "html",
    is_flag=True,
    help="Also write report.html: one self-contained page (works offline).",
)
@_friendly
def report(directory: Path, tsv: Path | None, out: Path | None, html: bool) -> None:
    """Write progress.png (and, for a workspace, results.tsv and results.json)."""
    from rsilab.report.progress import plot_progress, points_from_ledger, read_results_tsv

    if tsv is not None and html:
        raise ConfigError("--html needs a workspace's ledger, not a results.tsv")
    if tsv is not None:
        if not tsv.is_file():
            raise ConfigError(f"{tsv}: no such file")
        metric, points = read_results_tsv(tsv)
        target = (out or tsv.parent) / "progress.png"
        plot_progress(points, target, metric=metric, title=f"rsilab · {tsv.name}")
        click.echo(f"wrote {target} ({len(points)} experiments)")
        return
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    folder = out or ws.root
    folder.mkdir(parents=True, exist_ok=True)
    with Ledger(ws.ledger_path) as ledger:
        metric, points = points_from_ledger(ledger)
        direction = ledger.get_setting("comparable", {}).get("metric.direction", "min")
        plot_progress(
            points,
            folder / "progress.png",
            metric=metric,
            direction=direction,
            title=f"rsilab · {ws.branch}",
        )
        ledger.export_tsv(folder / "results.tsv", metric)
        ledger.export_json(folder / "results.json")
        ledger.export_csv(folder / "results.csv")
        if html:
            from rsilab.report.html import write_report

            write_report(ledger, folder / "report.html", title=f"rsilab · {ws.branch}")
    click.echo(
        f"wrote {folder / 'progress.png'}, results.tsv, results.json, results.csv"
        f"{', report.html' if html else ''} ({len(points)} experiments)"
    )


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--token",
    default=None,
    envvar="RSILAB_TOKEN",
    help="Required on every request (?token= or cookie); needed to bind beyond 127.0.0.1.",
)
@_friendly
def serve(directory: Path, host: str, port: int, token: str | None) -> None:
    """Live dashboard of a workspace, with controls (pause, stop, queue, veto, note)."""
    from rsilab.report.dashboard import check_binding
    from rsilab.report.dashboard import serve as run_server
    from rsilab.workspace import open_workspace

    check_binding(host, token)  # before anything else: a one-line refusal
    run_server(open_workspace(directory), host=host, port=port, token=token, announce=click.echo)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--mlflow", "to_mlflow", is_flag=True, help="Export to MLflow (extra: rsilab[mlflow])."
)
@click.option(
    "--wandb", "to_wandb", is_flag=True, help="Export to Weights & Biases (extra: rsilab[wandb])."
)
@click.option(
    "--uri", default=None, help="MLflow tracking URI (default: a file store in DIR/mlruns)."
)
@click.option(
    "--project", default=None, help="W&B project / MLflow experiment name (default: rsilab-<tag>)."
)
@click.option(
    "--online", is_flag=True, help="W&B: sync to the server (default: offline files in DIR/wandb)."
)
@_friendly
def export(
    directory: Path,
    to_mlflow: bool,
    to_wandb: bool,
    uri: str | None,
    project: str | None,
    online: bool,
) -> None:
    """Export every experiment as a tracking run: metrics, knobs as params, the diff."""
    from rsilab.record import export as exporter
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    if not (to_mlflow or to_wandb):
        raise ConfigError("choose --mlflow and/or --wandb")
    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        if to_mlflow:
            done = exporter.to_mlflow(ledger, ws, uri=uri, experiment=project)
            click.echo(f"mlflow: {done.runs} runs in experiment {done.name!r} at {done.where}")
        if to_wandb:
            done = exporter.to_wandb(ledger, ws, project=project, offline=not online)
            click.echo(f"wandb: {done.runs} runs in project {done.name!r} ({done.where})")


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
@_friendly
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
            out, task_name=task_name, overrides=_overrides(sets), preset=preset, notify=click.echo
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
        overrides=_overrides(sets),
        policies=policies,
        seeds=seeds,
        generations=generations,
        temperature=temperature,
        size=parse_size(size),
        preset=preset,
        notify=click.echo,
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
@_friendly
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
    task = ws.load_task(_overrides(sets))
    names = (
        None
        if references.strip() == "all"
        else [n.strip() for n in references.split(",") if n.strip()]
    )
    with _bench(task, executor_name, address, None, preset=preset) as bench:
        report = score_workspace(
            ws,
            bench,
            references=names,
            seeds=seeds,
            commit=commit,
            compare_dirs=list(compare_dirs),
            reference_folder=reference_dir,
            notify=click.echo,
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
@_friendly
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
    with _bench(load_task(task_dir, _overrides(sets)), executor_name, address, None) as bench:
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
            notify=click.echo,
        )
        state = m.run(generations, strategies)
    click.echo(format_table(state))
    click.echo(f"wrote {directory / META_FILE}")


if __name__ == "__main__":
    main()

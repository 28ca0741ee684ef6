"""`rsilab init`, `run`, `baseline`, `status`, `audit`, `stop`. Owns: their options and what
they print; the loop itself is rsilab.loop, the workspace policy rsilab.workspace."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rsilab.cli.app import (
    blame_set,
    echo,
    executor_options,
    friendly,
    isolation_for,
    main,
    make_bench,
    parse_overrides,
    parse_workers,
    preset_option,
    require_sandbox_option,
    set_option,
    task_data,
)
from rsilab.config import TaskSpec, resolve_task_dir
from rsilab.errors import ConfigError
from rsilab.inert import inert, say

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    from rsilab.loop.limits import Limits
    from rsilab.workspace import Workspace


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
@click.option(
    "--adopt",
    is_flag=True,
    help="Propose an rsilab.toml and program.md for the code in DIRECTORY and stop, for review.",
)
@click.option("--train", "train_cmd", default=None, help="Adopting: the training command.")
@click.option("--metric", default=None, help="Adopting: the metric's name (with --pattern).")
@click.option("--pattern", default=None, help="Adopting: a regex whose group is the metric.")
@click.option("--direction", type=click.Choice(["min", "max"]), default=None, help="Adopting.")
@friendly
def init(
    directory: Path,
    task_name: str,
    tag: str | None,
    resume: bool,
    adopt: bool,
    train_cmd: str | None,
    metric: str | None,
    pattern: str | None,
    direction: str | None,
) -> None:
    """Create a workspace: copy a task into DIRECTORY (a git repo) and open a research branch.

    On a git repo without an rsilab.toml (or with --adopt), propose one first: detect the
    train command, the editable and frozen files, the metric line and the settings to tune,
    write a commented rsilab.toml and a program.md, and commit them (--adopt: only write them).
    On a terminal, what cannot be detected is asked for.
    """
    from rsilab.adopt import adopt_repo, wants_adopting
    from rsilab.workspace import init_workspace

    if wants_adopting(directory, adopt):
        found = dict(train=train_cmd, metric=metric, pattern=pattern, direction=direction)
        # On a terminal, what cannot be detected is asked; elsewhere it is a one-line refusal.
        ask = (lambda q: str(click.prompt(q))) if sys.stdin.isatty() else None
        if not adopt_repo(directory, click.echo, adopt=adopt, ask=ask, **found):
            return

    ws = init_workspace(directory, resolve_task_dir(task_name), _tag(tag), resume=resume)
    ws.queue_dir.mkdir(parents=True, exist_ok=True)  # the README says to drop files there
    click.echo(f"workspace {ws.root} on branch {ws.branch} (incumbent {ws.incumbent_commit()[:7]})")
    click.echo(f"next: rsilab run {ws.root}")


def _default_tag() -> str:
    return time.strftime("%b%d").lower()


def _tag(tag: str | None) -> str:
    """--tag as given (checked by the workspace), today's date when it is not given; an
    empty one is a mistake, not a request for the date."""
    if tag is None:
        return _default_tag()
    if not tag.strip():
        raise ConfigError(
            "--tag '': give a name (letters, digits, '-', '_' or '.'), or leave --tag out for today's date"
        )
    return tag


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
@click.option(
    "--max-experiments",
    type=click.IntRange(min=0),
    default=None,
    help="Stop after N new experiments (the baseline, measured first, is not one of them).",
)
@click.option(
    "--hours",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many hours.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop when proposals have cost this many USD.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=0),
    default=None,
    help="Stop when proposals have used this many tokens.",
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
@friendly
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
@friendly
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
    from rsilab.loop import lock
    from rsilab.workspace import STATE_DIR, init_workspace, open_workspace

    if require_sandbox:  # before anything is created or run
        isolation_for(True)
    if tag is not None:  # also when the workspace exists (then the tag is not used)
        from rsilab.workspace import check_tag

        check_tag(_tag(tag))
    created = directory / STATE_DIR / "workspace.json"
    if not created.is_file():
        _check_before_creating(
            directory, task_name, proposer, sets, ladder, workers, executor_name, address
        )
        with lock.creating(directory):  # another `rsilab run` may be creating it right now
            if not created.is_file():
                ws = init_workspace(directory, resolve_task_dir(task_name), _tag(tag))
                echo(f"created workspace {ws.root} on branch {ws.branch}")
    ws = open_workspace(directory)
    # One supervisor per workspace, from before this one records anything (its overrides)
    # to its exit; a second `rsilab run` is refused in one line (exit 2).
    with lock.hold(ws.state, ws.root):
        return _research_locked(
            ws,
            proposer,
            limits,
            preset,
            ladder,
            workers,
            executor_name,
            address,
            sets,
            require_sandbox,
            baseline_only,
        )


def _research_locked(
    ws: Workspace,
    proposer: str | None,
    limits: Limits,
    preset: str | None,
    ladder: str | None,
    workers: str | None,
    executor_name: str,
    address: str | None,
    sets: tuple[str, ...],
    require_sandbox: bool,
    baseline_only: bool,
) -> TaskSpec:
    """The rest of `_research`, with this process holding the workspace's supervisor lock."""
    from rsilab import harness
    from rsilab.loop.supervisor import Supervisor
    from rsilab.proposers import choice as proposer_choice
    from rsilab.proposers import create
    from rsilab.record.ledger import Ledger
    from rsilab.report.live import LiveView
    from rsilab.run import sandbox

    preset = preset or harness.preset()
    _clear_stale_stops(ws)
    with Ledger(ws.ledger_path) as ledger:
        try:
            task, in_force = ws.research_task(ledger, sets, preset)
        except ConfigError as e:  # blamed on the --set (given now or recorded) that causes it
            merged = [*ledger.get_setting("overrides", []), *sets]
            raise blame_set(e, ws.load_task, merged) from None
    if in_force and list(in_force) != list(sets):
        echo(f"using this workspace's overrides: {' '.join(in_force)}")
    gate = _ladder(ladder, task) if ladder else None
    isolation, level = isolation_for(require_sandbox, task)
    train_data, val_data = task_data(task)
    choices, follow = proposer_choice.choose(proposer, task)
    if not baseline_only:
        _check_search_space(ws, task, preset, [c.name for c in choices], follow)
    # Queued human ideas always go first; then the chosen proposers, with their shares.
    proposers = [create("queue", queue_dir=ws.queue_dir)]
    proposers += [_make_proposer(c, task) for c in choices if c.name != "queue"]
    shares = {c.label: c.share for c in choices}
    follower = create("tuner", task=task) if follow else None
    shown = ", ".join(
        c.label + (f" (share {c.share})" if len(choices) > 1 else "") for c in choices
    )
    if not baseline_only:
        echo(f"proposer: {shown}" + (" (+ tuner after its kept changes)" if follow else ""))
    bench = make_bench(task, executor_name, address, workers, preset=preset, isolation=isolation)
    echo(f"executor: {bench.describe()}")
    ws.queue_dir.mkdir(parents=True, exist_ok=True)  # the README says to drop files there
    with Ledger(ws.ledger_path) as ledger:
        # What the dashboard's idea form offers first (free text only for llm / agent).
        ledger.set_setting("proposers", [c.label for c in choices])
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
                sup.run()  # its last line, shown by the view: stopped: <why>
        finally:  # also on Ctrl-C: results.tsv always matches the ledger
            ledger.export_tsv(ws.root / "results.tsv", task.metric.name)
        if not baseline_only:  # the live view has shown "stopped: <reason>"
            _print_status(ledger, task.metric.name, ws.root)
            echo(
                f"next: `rsilab report {ws.root} --html` (progress.png, report.html), "
                f"`rsilab serve {ws.root}` (dashboard), `rsilab run {ws.root}` to go on"
            )
    return task


def _clear_stale_stops(ws: Workspace) -> None:
    """A stop asked for while no supervisor ran (a STOP file, a dashboard stop) stops
    nothing: cleared here, as this supervisor starts, with a line that says so."""
    from rsilab.loop.controls import clear_stale_stops
    from rsilab.record.ledger import Ledger

    if ws.stop_file.exists():
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(ws.stop_file.stat().st_mtime))
        ws.stop_file.unlink(missing_ok=True)
        echo(f"cleared a stop request from {since}, made while no `rsilab run` was running")
    with Ledger(ws.ledger_path) as ledger:
        for a in clear_stale_stops(ledger):
            echo(f"cleared a stop request made while no `rsilab run` was running: {inert(a)}")


def _check_search_space(
    ws: Workspace, task: TaskSpec, preset: str, names: list[str], follow: bool
) -> None:
    """Say at the start, not after the baseline, when the offline tuner has nothing to tune:
    refused (one line) when only tuner or random would propose, a warning beside others."""
    from rsilab.space import check_declared, nothing_to_tune

    offline = {"tuner", "random"}
    if not follow and not offline & set(names):
        return
    files = ws.editable_files(task, ws.incumbent_commit())
    check_declared(task, files)
    why = nothing_to_tune(task, files, preset)
    if why is None:
        return
    if set(names) <= offline | {"queue"}:
        raise ConfigError(why)
    echo(f"warning: the tuner has {why}")


def _print_noise_floor(ledger: Any, task: TaskSpec) -> None:
    """The incumbent's values (the baseline's, at first) and what the judge asks of a
    change against them."""
    from rsilab.loop.judge import Noise, keep_threshold, noise_sigma

    inc = ledger.incumbent()
    values = ledger.incumbent_values()
    saved = ledger.get_setting("noise_prior") or {}  # the session's prior (loop/evidence.py)
    prior = Noise(float(saved["var"]), int(saved["df"])) if saved else None
    if inc is None or not values:
        click.echo("no baseline: its runs did not finish (see `rsilab status`)")
        return
    name, spec = task.metric.name, task.judge
    who = (
        "baseline"
        if inc.id == ledger.experiments()[0].id
        else f"incumbent #{inc.id} ({inert(inc.description)})"
    )
    if len(values) < 2 and prior is None:
        click.echo(
            f"{who} {name} {values[0]:.4f} (1 run: no noise estimate; judge.noise_runs="
            f"{spec.noise_runs}); a candidate is compared value to value"
        )
        return
    sd = noise_sigma(values, prior) or 0.0
    shown = " ".join(f"{v:.4f}" for v in values)
    known = (
        f"; with the noise prior of earlier sessions ({prior.df} df), sd {sd:.4f}" if prior else ""
    )
    spread = f"sd {statistics.stdev(values):.4f} " if len(values) >= 2 else ""
    click.echo(
        f"{who} {name} {statistics.fmean(values):.4f}, {spread}over {len(values)} seed"
        f"{'s' if len(values) != 1 else ''} ({shown}){known}"
    )
    first = keep_threshold(
        values, task.metric_obj, spec, 1, min_runs=spec.knob_min_runs, prior=prior
    )
    last = keep_threshold(
        values, task.metric_obj, spec, spec.max_runs, min_runs=spec.knob_min_runs, prior=prior
    )
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
    root = directory if adopted else resolve_task_dir(task_name)
    try:
        task = load_task(root, parse_overrides(sets))
    except ConfigError as e:
        raise blame_set(e, lambda given: load_task(root, given), sets) from None
    if ladder:
        _ladder(ladder, task)
    choices, _ = proposer_choice.choose(proposer, task)
    for choice in choices:
        if choice.name != "queue":
            _make_proposer(choice, task)
    parse_workers(workers, executor_name)
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


def _runs_mean(n: int) -> str:
    """How many runs a shown value is the mean of."""
    return "its one run" if n == 1 else f"the mean of {n} runs"


def _print_status(ledger: Any, metric: str, root: Path, recent: int = 10) -> None:
    exps = ledger.experiments()
    if not exps:
        click.echo("no experiments yet")
        return
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status] = counts.get(e.status, 0) + 1
    base, inc = exps[0], ledger.incumbent()
    counts[base.status] -= 1  # the baseline is told apart: --max-experiments N makes N more
    click.echo(
        f"baseline ({base.status}) and {len(exps) - 1} experiment{'' if len(exps) == 2 else 's'}"
        + (": " if len(exps) > 1 else "")
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n)
    )
    by: dict[str, list[int]] = {}  # proposer -> [experiments, kept]
    for e in exps[1:]:
        row = by.setdefault(e.proposer, [0, 0])
        row[0] += 1
        row[1] += e.status == "keep"
    if len(by) > 1:
        click.echo(
            "by proposer: "
            + ", ".join(f"{inert(p)} {n} ({k} kept)" for p, (n, k) in sorted(by.items()))
        )
    if inc is not None and base.metric is not None:
        from rsilab.results import Metric

        comparable = ledger.get_setting("comparable", {}) or {}
        maximize = comparable.get("metric.direction") == "max"
        vals = ledger.incumbent_values()
        best = sum(vals) / len(vals) if vals else inc.metric
        if inc.id == base.id:  # no gain to tell: the baseline against itself
            click.echo(
                f"incumbent: the baseline, {metric} {best:.4f}, the mean of {len(vals)} runs"
            )
        else:
            click.echo(  # as the dashboard says it: the mean of its ok runs, re-checks included
                f"baseline {metric} {base.metric:.4f} -> incumbent #{inc.id} {best:.4f} "
                f"(gain {Metric(metric, 'max' if maximize else 'min').gain(best, base.metric):+.4f}), "
                f"{_runs_mean(len(vals))} ({inc.commit[:7]}: {inert(inc.description)})"
            )
    from rsilab.record.claims import claim_lines, claims
    from rsilab.results import Metric

    direction = (ledger.get_setting("comparable") or {}).get("metric.direction", "min")
    kept = claim_lines(claims(ledger, Metric(metric, direction)), recent)
    if kept:  # what each keep was said to gain, and what the runs made since say
        click.echo("kept changes (gain claimed at the keep; confirmed by later runs only):")
        for line in kept:
            click.echo(f"  {inert(line)}")
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
            f"  {inert(r.node or '-'):<18} #{r.experiment_id:<4} {inert(r.label)} since {since} "
            f"({time.time() - r.since:.0f} s) [{inert(r.proposer)}] {inert(r.description)}"
        )
    _print_controls(ledger)
    click.echo("recent:")
    for e in exps[-recent:]:
        value = f"{e.metric:.4f}" if e.metric is not None else "   -  "
        click.echo(f"  #{e.id:<4} {e.status:<11} {value}  {inert(e.description)}")


def _print_controls(ledger: Any, shown: int = 3) -> None:
    """What people did and what the queue refused: a pause in force, a stop not yet read,
    the latest notes, vetoes and rejected queue files (as the dashboard shows them)."""
    from rsilab.loop import controls

    acts = controls.actions(ledger)
    level = next((a for a in reversed(acts) if a.action in ("pause", "resume")), None)
    if level is not None and level.action == "pause":
        click.echo(f"paused: {inert(level)}; resume from the dashboard (`rsilab serve`)")
    cursor = int(ledger.get_setting(controls.CURSOR_KEY, 0) or 0)
    if any(controls.live_stop(ledger, a) for a in acts if a.id > cursor):
        click.echo("stop requested: the supervisor stops after the experiments in flight")
    notes = [a for a in acts if a.action == "note"][-shown:]
    for a in notes:
        click.echo(f"note: {inert(a.payload.get('text', ''))} ({inert(a.source)})")
    for kind in ("veto", "rejected"):
        for ev in ledger.events_after(0, kind)[-shown:]:
            when = time.strftime("%m-%d %H:%M", time.localtime(ev.created_at))
            click.echo(f"{kind}: {inert(ev.message)} ({when})")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@friendly
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
@click.option(
    "--deep",
    is_flag=True,
    help="Also re-evaluate every kept artifact with fresh evaluator secrets, and check kept "
    "diffs (no links, no binaries) and run-reported figures against the runner's.",
)
@friendly
def audit(directory: Path, live: bool, deep: bool) -> None:
    """Re-verify the ledger against git and the run folders; one line per inconsistency (exit 1 if any)."""
    from rsilab.record.audit import audit as do_audit
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    with Ledger(ws.ledger_path) as ledger:
        found = do_audit(ws, ledger, live=live)
        problems = list(found.problems)
        summary = f"{found.experiments} experiments ({found.kept} kept), {found.runs} runs"
        if deep:
            from rsilab.record.deep import deep_audit

            task = ws.load_task(parse_overrides(tuple(ledger.get_setting("overrides", []))))
            _, val_data = task_data(task)
            report = deep_audit(ws, ledger, task, val_data=val_data, notify=say)
            problems += report.problems
            for skipped in report.skipped:
                click.echo(inert(f"deep audit: {skipped}"))
            summary += f", {report.reevaluated} kept runs re-evaluated with fresh secrets"
    for problem in problems:
        click.echo(inert(problem))  # it may quote a description or a file name
    if problems:
        click.echo(f"audit: {len(problems)} inconsistencies in {summary}", err=True)
        sys.exit(1)
    click.echo(f"audit: ok: {summary} agree with git and their run folders")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--now",
    is_flag=True,
    help="Cancel the runs in flight (recorded as interrupted) instead of finishing them.",
)
@friendly
def stop(directory: Path, now: bool) -> None:
    """Ask a running `rsilab run` to stop after the experiments in flight (or --now)."""
    from rsilab.loop import lock
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    if not lock.held(ws.state):  # a stop file left now would stop the next run at once
        click.echo(f"no `rsilab run` is running on {ws.root}: nothing to stop")
        return
    ws.stop_file.write_text("now\n" if now else "")
    click.echo(f"asked to stop{' now' if now else ''}: {ws.stop_file}")

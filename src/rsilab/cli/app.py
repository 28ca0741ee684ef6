"""The `rsilab` command group and what its commands share. Owns: argv parsing helpers, logging
setup (`-v`), the Bench a command runs on, and turning errors into one-line messages.

A user mistake (`RsilabError`) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rsilab import __version__
from rsilab.config import TaskSpec, parse_override
from rsilab.errors import ConfigError, RsilabError
from rsilab.inert import InertFormatter, inert

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    from rsilab.run.bench import Bench


F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Decorate a command so a user mistake, Ctrl-C or a full disk ends it with one line."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsilabError as e:
            click.echo(f"rsilab: {inert(e)}", err=True)  # it may quote a file name
            sys.exit(e.exit_code)
        except BrokenPipeError:  # `rsilab ... | head`: the reader has what it wanted
            from rsilab.report.live import silence_stdout

            silence_stdout()
            sys.exit(0)
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


def echo(line: str) -> None:
    """click.echo for what `rsilab run` says before and during its loop: a reader that went
    away (`rsilab run | head`) silences it instead of stopping the research."""
    try:
        click.echo(line)
    except BrokenPipeError:
        from rsilab.report.live import silence_stdout

        silence_stdout()


def parse_overrides(values: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [parse_override(v) for v in values]


def blame_set(err: ConfigError, load: Callable[[list[tuple[str, Any]]], object],
              sets: Sequence[str]) -> ConfigError:  # fmt: skip
    """The error of loading a task under the overrides `sets`, blamed on the one `--set` that
    causes it (the first whose addition makes `load` fail) when the file alone loads: a bad
    value given on the command line is not the bundled file's fault."""
    if not sets or str(err).startswith("--set"):
        return err
    try:
        load([])
    except ConfigError:
        return err  # the file itself is wrong
    parsed = parse_overrides(tuple(sets))
    for i, text in enumerate(sets):
        try:
            load(parsed[: i + 1])
        except ConfigError as e:
            what = str(e).partition(": ")[2] or str(e)  # without the file's name
            return ConfigError(f"--set {text}: {what}")
    return err


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


def isolation_for(require_sandbox: bool, task: TaskSpec | None = None) -> tuple[str, str]:
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
    handler = logging.StreamHandler()  # stderr, as basicConfig's; messages shown inert
    handler.setFormatter(InertFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])


def task_data(task: TaskSpec) -> tuple[Path | None, Path | None]:
    """Train and validation paths for a task, preparing the data on first use."""
    if task.data == "none":
        return None, None
    from rsilab.data import prepare

    prepared = prepare(task.data, notify=lambda line: echo(f"{time.strftime('%H:%M:%S')} {line}"))
    return prepared.train_path, prepared.val_path


def parse_workers(text: str | None, executor: str) -> int | None:
    """--workers: a number; `auto` (None: as many as the resources allow); default 1 locally."""
    if text is None:
        return 1 if executor == "local" else None
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--workers {text!r}: give a number >= 1 or auto")
    return int(text)


def make_bench(
    task: TaskSpec,
    executor_name: str,
    address: str | None,
    workers: str | None,
    *,
    preset: str | None = None,
    isolation: str | None = None,
) -> Bench:
    """The Bench every run of a command goes through: the task's data (prepared on first
    use), the preset and sandbox, on the executor --executor/--address/--workers name."""
    from rsilab.run.bench import Bench
    from rsilab.run.executors import create as create_executor

    if address and executor_name != "ray":
        raise ConfigError("--address is for --executor ray")
    count = parse_workers(workers, executor_name)
    train_data, val_data = task_data(task)
    options: dict[str, Any] = {"address": address} if address else {}
    if executor_name == "ray":  # its start-up takes seconds: say what it waits for
        options["notify"] = lambda line: echo(f"{time.strftime('%H:%M:%S')} {line}")
    executor = create_executor(executor_name, task=task, workers=count, **options)
    return Bench(
        task,
        train_data=train_data,
        val_data=val_data,
        preset=preset,
        isolation=isolation,
        executor=executor,
        owns_executor=True,
    )

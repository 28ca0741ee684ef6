"""`rsilab report`, `rsilab serve`, `rsilab export`. Owns: their options and output."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from rsilab.cli.app import (
    friendly,
    main,
)
from rsilab.errors import ConfigError


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
    help="Also write report.html: one self-contained page (works offline), for a workspace "
    "or a results.tsv.",
)
@friendly
def report(directory: Path, tsv: Path | None, out: Path | None, html: bool) -> None:
    """Write progress.png (and, for a workspace, results.tsv and results.json)."""
    from rsilab.report.progress import plot_progress, points_from_ledger, read_results_tsv

    if tsv is not None:
        if not tsv.is_file():
            raise ConfigError(f"{tsv}: no such file")
        metric, points = read_results_tsv(tsv)
        folder = _out_folder(out or tsv.parent)
        with _writing(folder):
            _report_tsv(tsv, folder, metric, points, html)
        return
    from rsilab.record.ledger import Ledger
    from rsilab.workspace import open_workspace

    ws = open_workspace(directory)
    folder = _out_folder(out or ws.root)
    with Ledger(ws.ledger_path) as ledger, _writing(folder):
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


def _out_folder(folder: Path) -> Path:
    """The folder a report is written into, made if missing; a one-line error for a file
    or a place that cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder}: a file, not a folder (give a folder to write into)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {folder}: cannot make that folder: {e.strerror}") from None
    return folder


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """A write refused in `folder` (permissions, a read-only disk) is one line, not a traceback."""
    try:
        yield
    except PermissionError as e:
        raise ConfigError(
            f"--out {folder}: cannot write {e.filename or 'there'}: {e.strerror}"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            raise
        raise ConfigError(
            f"--out {folder}: cannot write {e.filename or 'there'}: {e.strerror}"
        ) from None


def _report_tsv(tsv: Path, folder: Path, metric: str, points: list[Any], html: bool) -> None:
    """`report --from-tsv`: the chart, a summary like a workspace's, and report.html."""
    from rsilab.inert import inert
    from rsilab.report.progress import plot_progress, tsv_direction, tsv_ledger

    direction = tsv_direction(points)
    plot_progress(points, folder / "progress.png", metric=metric, direction=direction,
                  title=f"rsilab · {tsv.name}")  # fmt: skip
    written = [str(folder / "progress.png")]
    if html:
        import tempfile

        from rsilab.report.html import write_report

        with tempfile.TemporaryDirectory(prefix="rsilab-tsv-") as tmp:
            ledger = tsv_ledger(points, Path(tmp) / "ledger.db", metric=metric, direction=direction)
            with ledger:
                write_report(ledger, folder / "report.html", title=f"rsilab · {tsv.name}")
        written.append("report.html")
    click.echo(f"wrote {', '.join(written)} ({len(points)} experiments)")
    counts: dict[str, int] = {}
    for p in points:
        counts[p.status] = counts.get(p.status, 0) + 1
    click.echo(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no rows")
    kept = [p for p in points if p.status == "keep" and p.metric is not None]
    if kept:
        first = kept[0]
        best = (min if direction == "min" else max)(kept, key=lambda p: p.metric or 0.0)
        better = "lower" if direction == "min" else "higher"
        click.echo(
            f"{metric}: first kept {first.metric:.6f} -> best {best.metric:.6f} "
            f"(row {best.index}: {inert(best.description)}; {better} is better, as its kept rows go)"
        )


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--token",
    default=None,
    envvar="RSILAB_TOKEN",
    help="The secret every request must carry (the printed URL has it; then a cookie); "
    "default: a new one per serve. Must be given to bind beyond 127.0.0.1.",
)
@friendly
def serve(directory: Path, host: str, port: int, token: str | None) -> None:
    """Live dashboard of a workspace, with controls (pause, stop, queue, veto, note)."""
    from rsilab.report.dashboard import check_binding
    from rsilab.report.dashboard import serve as run_server
    from rsilab.workspace import open_workspace

    check_binding(host, token)  # before anything else: a one-line refusal
    _wait_for_workspace(directory)
    run_server(open_workspace(directory), host=host, port=port, token=token, announce=click.echo)


def _wait_for_workspace(directory: Path, interval: float = 0.5) -> None:
    """`rsilab serve DIR` started beside a first `rsilab run DIR`: wait (saying so) until the
    run has made the workspace, instead of refusing a folder that is about to be one."""
    import time

    from rsilab.workspace import STATE_DIR

    marker = directory / STATE_DIR / "workspace.json"  # written last when a workspace is made
    if marker.is_file():
        return
    click.echo(
        f"waiting for {directory} to become an rsilab workspace (`rsilab run {directory}` "
        "makes it); Ctrl-C to give up",
        err=True,
    )
    while not marker.is_file():
        time.sleep(interval)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option(
    "--mlflow", "to_mlflow", is_flag=True, help="Export to MLflow (extra: rsilab[mlflow])."
)
@click.option(
    "--wandb", "to_wandb", is_flag=True, help="Export to Weights & Biases (extra: rsilab[wandb])."
)
@click.option(
    "--uri",
    default=None,
    help="MLflow tracking URI (default: a SQLite store in DIR/.rsilab/mlflow/mlflow.db, "
    "artifacts beside it).",
)
@click.option(
    "--project", default=None, help="W&B project / MLflow experiment name (default: rsilab-<tag>)."
)
@click.option(
    "--online", is_flag=True, help="W&B: sync to the server (default: offline files in DIR/wandb)."
)
@friendly
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
            new = done.runs - done.updated
            click.echo(
                f"mlflow: {done.runs} runs written ({new} new, {done.updated} updated), "
                f"{done.skipped} already there unchanged, in experiment {done.name!r} at {done.where}"
            )
        if to_wandb:
            done = exporter.to_wandb(ledger, ws, project=project, offline=not online)
            click.echo(f"wandb: {done.runs} runs in project {done.name!r} ({done.where})")

"""`rsilab report`, `rsilab serve`, `rsilab export`. Owns: their options and output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rsilab.cli.app import (
    friendly,
    main,
)
from rsilab.errors import ConfigError

if TYPE_CHECKING:  # imported lazily at run time: `rsilab --help` stays fast
    pass


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
@friendly
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
            click.echo(f"mlflow: {done.runs} runs in experiment {done.name!r} at {done.where}")
        if to_wandb:
            done = exporter.to_wandb(ledger, ws, project=project, offline=not online)
            click.echo(f"wandb: {done.runs} runs in project {done.name!r} ({done.where})")

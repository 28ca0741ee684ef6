"""The live terminal view of `rsilab run`. Owns: turning supervisor progress into a screen.

On a terminal it is a rich panel (current experiment and how long it has run, best so far
against the baseline, kept / discarded / failed counts, experiments per hour, the last
decision). Elsewhere (a log file, CI, `nohup`) it prints one timestamped line per message,
so an overnight log stays readable.

Every message and label here comes from runs and proposers (descriptions, reasons), so it
is shown inert (rsilab.inert: no escape codes, one line each) and, in the panel, as rich
`Text`, never as markup: a description `[/red]` is shown, not parsed.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

from rsilab.inert import inert
from rsilab.loop.supervisor import Progress

if TYPE_CHECKING:
    from rich.live import Live
    from rich.panel import Panel


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def silence_stdout() -> None:
    """Point this process's stdout at /dev/null (its reader closed the pipe): later prints,
    and the flush at exit, then go nowhere instead of raising BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class LiveView:
    """The supervisor's `View` (a progress line and the loop state); use as a context manager."""

    def __init__(
        self, metric: str, workspace: str, *, rich_ui: bool | None = None, isolation: str = ""
    ) -> None:
        self.metric = metric
        self.workspace = workspace
        # The sandbox of the runs (rsilab.run.sandbox.describe): one level per supervisor, since
        # the CLI resolves it once before the first run and every run uses that level.
        self.isolation = isolation
        self.rich_ui = sys.stdout.isatty() if rich_ui is None else rich_ui
        self.lines: list[str] = []
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.rich_ui:
            from rich.live import Live

            self._live = Live(self._render(Progress()), refresh_per_second=2, transient=False)
            self._live.__enter__()
        elif self.isolation:
            self._print(f"{time.strftime('%H:%M:%S')} sandbox: {self.isolation}")
        return self

    def _print(self, line: str) -> None:
        """One line to stdout. A reader that went away (`rsilab run | head`) must not stop the
        research: from then on stdout goes to /dev/null, and the loop carries on to its stop
        rule, leaving the ledger and git as tidy as ever."""
        try:
            print(line, flush=True)
        except BrokenPipeError:
            silence_stdout()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(et, ev, tb)
            self._live = None

    def __call__(self, message: str, progress: Progress) -> None:
        stamp = time.strftime("%H:%M:%S")
        shown = inert(message)
        if shown:  # an empty message only asks for a re-render (the workers changed)
            self.lines = (self.lines + [f"{stamp} {shown}"])[-8:]
        if self._live is not None:
            self._live.update(self._render(progress))
        elif shown:
            self._print(f"{stamp} {shown}")

    def _render(self, p: Progress) -> Panel:
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        def text(s: str) -> Text:  # plain text: brackets are shown, never parsed as markup
            return Text(s)

        hours = max(time.time() - p.started, 1.0) / 3600
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        now = time.time()
        running = [
            f"{inert(w.node):<16} {inert(w.label)} ({now - w.since:.0f} s)" for w in p.workers
        ]
        if not running and p.current:
            running = [f"{inert(p.current)} ({now - p.current_since:.0f} s)"]
        grid.add_row(
            f"workers ({len(p.workers)})" if p.workers else "now", text("\n".join(running) or "-")
        )
        if p.proposing:
            grid.add_row("proposing", text(", ".join(inert(n) for n in p.proposing)))
        gain = f" (baseline {_fmt(p.baseline)})" if p.baseline is not None else ""
        grid.add_row(f"best {self.metric}", _fmt(p.best) + gain)
        grid.add_row(
            "experiments",
            f"{p.experiments}: {p.kept} kept, {p.discarded} discarded, "
            f"{p.failed} failed; {p.experiments / hours:.1f}/hour",
        )
        grid.add_row("last", text(inert(p.last) or "-"))
        if self.isolation:
            grid.add_row("sandbox", text(inert(self.isolation)))
        grid.add_row("log", text("\n".join(self.lines[-6:])))
        title = text(f"rsilab run · {inert(self.workspace)}")
        return Panel(grid, title=title, subtitle="Ctrl-C stops cleanly")

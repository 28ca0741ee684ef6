"""Progress for people. Owns: `Notify`, the one shape in which long operations report what
they do, and `silent`, the null one.

Every long operation (the research loop's proposers, the fidelity ladder, `rsilab score`,
`rsilab meta`, `rsilab collapse`) takes a `notify: Notify` and calls it with one line per
step, as it happens; the CLI passes `click.echo`, a library caller its own function (or a
list's `append`), and nobody branches on whether anyone listens: the default is `silent`.
The supervisor's live view (rsilab.report.live) gets the same lines together with the
loop's state, as a `View` (rsilab.loop.supervisor).

Diagnostics are not progress: they go to the standard `logging` module under the
`rsilab.*` loggers, shown with `rsilab -v`.
"""

from __future__ import annotations

from collections.abc import Callable

Notify = Callable[[str], None]


def silent(message: str) -> None:
    """The null Notify: drops every line."""

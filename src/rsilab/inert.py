"""Untrusted text made inert for a terminal. Owns: `inert`, the one way to show text that a
run, a proposer or a file name controls (descriptions, reasons, log tails, notify lines).

Such text may hold ANSI/OSC escape sequences (they retitle the terminal, clear the screen,
move the cursor), other control characters, newlines (they forge output lines) and rich
markup (`[bold]`, `[/red]`: the live view would interpret it, or fail with a MarkupError).
`inert` shows each as visible, harmless characters on one line; rich output should pass the
result as a `rich.text.Text` (or through `rich.markup.escape`), never as markup.

Not covered: HTML (report.html and the dashboard escape with `html.escape`).
"""

from __future__ import annotations

import copy
import logging
import re

NEWLINE = "⏎"  # a newline in untrusted text, shown: it can never start a forged line
# ESC and the C1 introducers start escape sequences; any C0/C1 control, DEL and the Unicode
# line/paragraph separators and bidi overrides can reorder or break a line: all are shown
# as \xNN / \uNNNN escapes, so the text is readable and nothing acts on the terminal.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: object) -> str:
    """`text` (any object, as str) as one line that does nothing to a terminal: newlines
    become NEWLINE (CRLF and CR too), every other control character an escape like \\x1b.
    Printable text, including brackets, is unchanged (escape rich markup separately)."""
    s = str(text).replace("\r\n", "\n").replace("\r", "\n").replace("\n", NEWLINE)
    return _UNSAFE.sub(_shown, s)


def inert_lines(text: object, prefix: str = "  | ") -> str:
    """Multi-line untrusted text (a log tail) with each line `inert` and behind `prefix`,
    so no line of it can pass for a line of rsilab's own output."""
    return "\n".join(prefix + inert(line) for line in str(text).splitlines())


def say(message: object) -> None:
    """A `Notify` (rsilab.notify) for the command line: `message` inert, on stdout."""
    import click

    click.echo(inert(message))


class InertFormatter(logging.Formatter):
    """A logging formatter for the terminal: the message (which may quote a description, a
    reason or a log line) on one inert line; a traceback's lines each inert."""

    def format(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)  # other handlers see the record as it was
        record.msg, record.args = inert(record.getMessage()), None
        return "\n".join(inert(line) for line in super().format(record).splitlines())


def inert_markup(text: object) -> str:
    """`inert(text)` for a place where rich renders markup: brackets escaped too."""
    from rich.markup import escape

    return escape(inert(text))

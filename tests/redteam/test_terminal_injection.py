"""Red team: terminal and log injection (issue 20, class 7), through the real loop.

A proposer's description is untrusted text: escape codes that retitle the terminal or
clear it, a newline that forges a "#9 keep" line, and rich markup that would make the live
panel fail with a MarkupError. Three carry it through one real loop: an LLM-like proposer's
description, a queued TOML's `description` (with a `<script>` for the HTML report), and a
queued file's name (the description when it has none). Each is run (a poor model or a
small knob change) and judged; the plain live view, the rich panel and `rsilab status`
must show all of it as inert text, and report.html must show it escaped.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from redteam_lab import Attack, ScriptedProposer, row
from rich.console import Console

from rsilab.cli import main
from rsilab.inert import inert
from rsilab.loop.supervisor import Supervisor
from rsilab.paths import bundled_tasks_dir
from rsilab.proposers.queue import QueueProposer
from rsilab.record.ledger import Ledger
from rsilab.report.html import render_report, snapshot
from rsilab.report.live import LiveView
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace, init_workspace

TOY = (bundled_tasks_dir() / "toy" / "train.py").read_text()
EVIL = "try [/red] and [bold]x \x1b]0;pwned\x07\x1b[2J\n#9 keep 0.0001 forged\r\x1b[1A\x9b2J"
QUEUED = "<script>alert(1)</script> [bold]q\x1b[2J\n#9 keep 0.0002 forged"
NAMED = "n\x1b]0;pwned\x07\n#9 keep 0.0003 forged"  # a queue file name (no description)
# EVIL as a TOML basic string (a queued idea's description)
EVIL_TOML = "".join(
    f"\\u{ord(c):04x}" if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c for c in EVIL
)
RAW = ("\x1b", "\x07", "\x9b", "\r")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, str]]:
    root = tmp_path_factory.mktemp("redteam-terminal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSILAB_HOME", str(root / "rsilab-home"))
        (root / "rsilab-home").mkdir()
        init_workspace(root / "ws", bundled_tasks_dir() / "toy", "rt")
        ws = Workspace(root / "ws", "rt")
        ledger = Ledger(ws.ledger_path)
        task = ws.load_task([("budget", 2), ("overhead", 4)])
        poor = TOY.replace("STEPS = 300 ", "STEPS = 1   ")
        proposer = ScriptedProposer(
            [Attack(EVIL, {"train.py": poor}, ("discard",), "")], ws, ledger
        )
        ws.queue_dir.mkdir(parents=True, exist_ok=True)
        escaped = QUEUED.replace("\x1b", "\\u001b").replace("\n", "\\n")  # TOML escapes
        (ws.queue_dir / "a.toml").write_text(f'description = "{escaped}"\n[knobs]\nLR = 0.02\n')
        (ws.queue_dir / f"b{NAMED}.toml").write_text("[knobs]\nLR = 0.005\n")
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as stdout:
            stdout.setattr("sys.stdout", out)
            view = LiveView("val_loss", str(ws.root), rich_ui=False)
            with view:
                sup = Supervisor(
                    ws, ledger, Bench(task), [QueueProposer(ws.queue_dir), proposer], view=view
                )
                sup.run()
            # the rich panel of the same state, rendered as a terminal would get it; rich's own
            # styling (SGR: ESC [ ... m) is taken out, so what is left came from the text
            panel = io.StringIO()
            Console(file=panel, force_terminal=True, width=200).print(view._render(sup.progress))
        yield ws, out.getvalue() + re.sub(r"\x1b\[[0-9;]*m", "", panel.getvalue())


def _forged(text: str) -> bool:
    return any(line.lstrip().startswith("#9 keep") for line in text.splitlines())


def test_descriptions_are_inert_in_the_live_view(lab: tuple[Workspace, str]) -> None:
    ws, shown = lab
    described = {e.description for e in Ledger(ws.ledger_path).experiments()}
    assert {EVIL, QUEUED} <= described  # recorded as given ...
    assert any(NAMED in d for d in described)
    raw = [c for c in RAW if c in shown]
    caught = not raw and not _forged(shown) and inert(EVIL) in shown
    row("terminal injection: live view", "inert text", f"raw {raw!r}" if raw else "inert", caught)
    assert (
        inert(EVIL) in shown and inert(QUEUED) in shown and inert(NAMED) in shown
    )  # ... shown inert
    assert "[/red]" in shown  # shown, not parsed as markup (and no MarkupError)
    assert not raw and not _forged(shown), shown


def test_descriptions_are_inert_in_rsilab_status(lab: tuple[Workspace, str]) -> None:
    ws, _ = lab
    result = CliRunner().invoke(main, ["status", str(ws.root)])
    assert result.exit_code == 0, result.output
    caught = not any(c in result.output for c in RAW) and not _forged(result.output)
    row("terminal injection: rsilab status", "inert text", "inert" if caught else "RAW", caught)
    assert inert(EVIL) in result.output and inert(NAMED) in result.output
    assert not any(c in result.output for c in RAW) and not _forged(result.output)


def test_descriptions_are_escaped_in_report_html(lab: tuple[Workspace, str]) -> None:
    ws, _ = lab
    page = render_report(snapshot(Ledger(ws.ledger_path)))
    caught = "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    row("terminal injection: report.html", "escaped", "escaped" if caught else "RAW", caught)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page


def test_inert_is_one_line_and_printable() -> None:
    for text in (EVIL, "a\r\nb", "\u202eevil", "\x00\x7f", Path("x\ny")):
        shown = inert(text)
        assert "\n" not in shown and shown.isprintable(), repr(shown)


def test_log_lines_are_inert() -> None:
    import logging

    from rsilab.inert import InertFormatter

    record = logging.LogRecord("rsilab.x", logging.INFO, __file__, 1, "decided %s", (EVIL,), None)
    shown = InertFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert shown == f"INFO rsilab.x: decided {inert(EVIL)}"
    assert record.getMessage() == f"decided {EVIL}"  # the record itself is left as it was


def test_rsilab_run_prints_a_queued_injection_inert(lab: tuple[Workspace, str]) -> None:
    ws, _ = lab
    (ws.queue_dir / f"c{NAMED}.toml").write_text(
        f'description = "{EVIL_TOML}"\n[knobs]\nLR = 0.03\n'
    )
    result = CliRunner().invoke(
        main,
        ["run", str(ws.root), "--proposer", "queue", "--max-experiments", "1"]
        + ["--set", "budget=2", "--set", "overhead=4"],
    )
    assert result.exit_code == 0 and result.exception is None, result.output  # no traceback
    assert inert(EVIL) in result.output  # the queued description, run and shown
    raw = [c for c in RAW if c in result.output]
    caught = not raw and not _forged(result.output)
    row("terminal injection: rsilab run", "inert text", f"raw {raw!r}" if raw else "inert", caught)
    assert not raw and not _forged(result.output), result.output

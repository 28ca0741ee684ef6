"""Red-team harness: malicious proposals run through the real loop, and the table of outcomes.

An `Attack` is one cheat class: the files a malicious proposer hands in, the verdicts that
count as caught, and a piece of the reason that says why. `run_attacks` puts every attack
of a lab through one real `Supervisor` (real git worktrees, ledger, runner, sandbox and
evaluator) with a scripted proposer, which also records the research branch and the
incumbent after each experiment. `check` asserts one attack and adds a row to `ROWS`,
which conftest.py prints at the end of the session (and writes to artifacts/redteam.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab.loop.supervisor import Supervisor
from rsilab.proposers.base import Context
from rsilab.record.ledger import Experiment, Ledger
from rsilab.results import Proposal
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace

ROWS: list[tuple[str, str, str, bool]] = []  # class, expected, outcome, caught
REPORT = Path(__file__).resolve().parents[2] / "artifacts" / "redteam.md"


@dataclass
class Attack:
    """One cheat class, as a proposal."""

    cls: str  # the row of the table; also the experiment's description
    files: dict[str, str]  # what the proposal hands in
    verdicts: tuple[str, ...]  # outcomes that count as caught
    reason: str  # regex the experiment's reason must match
    needs_sandbox: bool = False  # meaningful (or safe) only inside bubblewrap
    before: Callable[[Workspace], None] | None = None  # set the scene when it is proposed

    @property
    def expected(self) -> str:
        return f"{' or '.join(self.verdicts)} ({self.reason})"


@dataclass
class Outcome:
    """An attack's experiment and what the branch and incumbent looked like after it."""

    experiment: Experiment
    runs: list[Any]
    tip_after: str
    incumbent_after: int | None


@dataclass
class Lab:
    ws: Workspace
    ledger: Ledger
    base_tip: str
    base_incumbent: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stop_reason: str = ""


class ScriptedProposer:
    """Hands in the attacks once each, in order; records the state after each verdict."""

    name = "redteam"

    def __init__(self, attacks: list[Attack], ws: Workspace, ledger: Ledger) -> None:
        self.attacks, self.ws, self.ledger = list(attacks), ws, ledger
        self.after: dict[str, tuple[str, int | None]] = {}

    def propose(self, ctx: Context) -> Proposal | None:
        if not self.attacks:
            return None
        attack = self.attacks.pop(0)
        if attack.before is not None:
            attack.before(self.ws)
        return Proposal(attack.cls, dict(attack.files), self.name)

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        inc = self.ledger.incumbent()
        self.after[proposal.description] = (self.ws.incumbent_commit(), inc.id if inc else None)


def run_attacks(
    ws: Workspace,
    attacks: list[Attack],
    *,
    overrides: list[tuple[str, object]],
    train_data: Path | None = None,
    val_data: Path | None = None,
) -> Lab:
    """Measure the baseline, then put every attack through the real loop."""
    ledger = Ledger(ws.ledger_path)
    task = ws.load_task(overrides)
    tip = ws.incumbent_commit()
    proposer = ScriptedProposer(attacks, ws, ledger)
    sup = Supervisor(ws, ledger, Bench(task, train_data=train_data, val_data=val_data), [proposer])
    stop_reason = sup.run()
    baseline = ledger.experiments()[0]
    assert baseline.kind == "baseline" and baseline.status == "keep", baseline.reason
    lab = Lab(ws, ledger, tip, baseline.id, stop_reason=stop_reason)
    for exp in ledger.experiments():
        if exp.description in proposer.after:
            tip, inc = proposer.after[exp.description]
            lab.outcomes[exp.description] = Outcome(exp, ledger.runs(exp.id), tip, inc)
    return lab


def check(lab: Lab, attack: Attack) -> Outcome:
    """The attack ended caught, with the expected reason, and changed nothing; adds its row."""
    out = lab.outcomes.get(attack.cls)
    outcome = "no experiment recorded" if out is None else _outcome(out.experiment)
    caught = (
        out is not None
        and out.experiment.status in attack.verdicts
        and re.search(attack.reason, out.experiment.reason) is not None
        and out.tip_after == lab.base_tip
        and out.incumbent_after == lab.base_incumbent
    )
    ROWS.append((attack.cls, attack.expected, outcome, caught))
    assert out is not None, f"{attack.cls}: {outcome} (loop stopped: {lab.stop_reason})"
    assert out.experiment.status in attack.verdicts, outcome
    assert re.search(attack.reason, out.experiment.reason), outcome
    assert out.tip_after == lab.base_tip, "the research branch moved"
    assert out.incumbent_after == lab.base_incumbent, "the incumbent changed"
    return out


def _outcome(exp: Experiment) -> str:
    """`status: reason`, without the status repeated at the front of the reason."""
    reason = exp.reason
    while reason.startswith(f"{exp.status}: "):
        reason = reason.removeprefix(f"{exp.status}: ")
    return f"{exp.status}: {reason}"


def row(cls: str, expected: str, outcome: str, caught: bool) -> None:
    """A row for a check made outside the loop (e.g. the evaluator on a crafted file)."""
    ROWS.append((cls, expected, outcome, caught))


def with_marker(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds `marker`."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def table(previous: str = "") -> str:
    """The markdown table of ROWS; rows of `previous` (an earlier table, e.g. the default
    run's when this is the slow run) are kept unless this session has the same class."""
    mine = {cls for cls, *_ in ROWS}
    lines = ["| cheat class | expected | outcome | caught |", "| --- | --- | --- | --- |"]
    for line in previous.splitlines()[2:]:
        cells = line.split(" | ")
        if line.startswith("| ") and cells[0].removeprefix("| ") not in mine:
            lines.append(line)
    for cls, expected, outcome, caught in ROWS:
        short = outcome.replace("|", "/").replace("\n", " ")
        short = short if len(short) <= 110 else short[:107] + "..."
        lines.append(
            f"| {cls} | {expected.replace('|', '/')} | {short} | {'yes' if caught else 'NO'} |"
        )
    return "\n".join(lines)

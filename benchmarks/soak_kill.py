"""Soak test of crash consistency: SIGKILL the supervisor at random moments, many times.

Each cycle starts the real supervisor (`python -m rsilab.cli run DIR --task toy --proposer
tuner`, running until killed), sends it SIGKILL after a random delay, then restarts it
with `--max-experiments 0` (it recovers and stops) and checks the workspace: every
experiment recorded before the kill is still there unchanged (none lost), ids run
1..n with one final decision each (none duplicated), every experiment is decided and every
run has its compute cost (none half-recorded), and `rsilab.record.audit` finds git, the ledger
and the run folders in agreement. Every fifth cycle the recovering restart is itself
killed once at a random moment, so recovery is tested against a kill too.

In a share of the cycles (`--second`, default 0.5) a second supervisor (`rsilab run` on the
same workspace, as a user would start one by mistake) is started at a random moment while
the first runs, and killed with it. It must be refused in one line with exit 2 (or, if it
reached the lock first, the first one is refused): two supervisors working at once is a
problem, found by their output (a supervisor prints `executor:` only once it holds the
lock).

    python benchmarks/soak_kill.py --kills 50

Exits 1 when any check fails (the workspace is then kept, and its path printed).
Not covered: a kill while `rsilab init` creates the workspace (made once, up front) and
power loss (SQLite's `synchronous=FULL` is relied on for that, not tested here).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rsilab is imported late, after RSILAB_HOME is set
    from rsilab.record.ledger import Experiment

WORK_WINDOW_S = 8.0  # kills land up to this long after start-up (a toy experiment: 1-3 s)
STARTUP_SHARE = 0.2  # share of kills that land during start-up (imports, recovery)


BUSY = "another supervisor is running on this workspace"  # the refusal, rsilab.loop.lock
WORKING = "executor:"  # printed by a supervisor once it holds the lock


@dataclass
class Tally:
    kills: int = 0
    recovery_kills: int = 0
    cycles: int = 0
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    half_recorded: int = 0
    seconds: int = 0  # second supervisors started
    refused: int = 0  # ... and refused (exit 2, one line)
    won: int = 0  # ... that reached the lock first (the first one was refused)
    early: int = 0  # ... killed before they reached the lock (still starting up)


def rsilab(ws_dir: Path, *args: str, log: Path, mode: str = "ab") -> subprocess.Popen[bytes]:
    """Start the supervisor as a user would, output to `log` (a pipe could fill and block).
    `--preset cpu` only spares the torch import that detects the device (toy ignores it)."""
    with open(log, mode) as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rsilab.cli",
                "run",
                str(ws_dir),
                "--task",
                "toy",
                "--proposer",
                "tuner",
                "--preset",
                "cpu",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_after(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL `proc` after `delay` s (the random moment); False when it ended before."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def two_at_once(
    first: subprocess.Popen[bytes],
    first_log: Path,
    second: subprocess.Popen[bytes],
    second_log: Path,
    cycle: int,
    tally: Tally,
) -> None:
    """Sort out what a second supervisor did (both have ended): refused, won the race at
    start-up, or killed while starting; anything else (both working, another exit) is a
    problem."""
    said = second_log.read_text(errors="replace")
    first_said = first_log.read_text(errors="replace")
    if second.returncode == 2 and BUSY in said and len(said.strip().splitlines()) == 1:
        tally.refused += 1
    elif WORKING in said and first.returncode == 2 and BUSY in first_said:
        tally.won += 1
    elif second.returncode == -signal.SIGKILL and WORKING not in said:
        tally.early += 1
    else:
        tally.problems.append(
            f"cycle {cycle}: second supervisor exit {second.returncode}, first exit "
            f"{first.returncode}: {said.strip()[-300:]!r}"
        )


def snapshot(ws_dir: Path) -> dict[int, tuple[object, ...]]:
    """Every decided experiment: what must never change once recorded."""
    from rsilab.record.ledger import Ledger

    with Ledger(ws_dir / ".rsilab" / "ledger.db") as ledger:
        return decided(ledger.experiments())


def decided(exps: Sequence[Experiment]) -> dict[int, tuple[object, ...]]:
    """The recorded fields of each decided experiment, by id."""
    return {
        e.id: (e.commit, e.parent, e.description, e.status, e.metric, e.decided_at)
        for e in exps
        if e.decided
    }


def check(
    ws_dir: Path, before: dict[int, tuple[object, ...]], tally: Tally
) -> dict[int, tuple[object, ...]]:
    """The checks after a recovering restart; returns the new snapshot."""
    from rsilab.record.audit import audit
    from rsilab.record.ledger import Ledger
    from rsilab.results import Verdict
    from rsilab.workspace import open_workspace

    ws = open_workspace(ws_dir)
    with Ledger(ws.ledger_path) as ledger:
        exps = ledger.experiments()
        ids = [e.id for e in exps]
        if ids != list(range(1, len(ids) + 1)):
            tally.problems.append(f"experiment ids are not 1..{len(ids)}: {ids}")
        after = decided(exps)
        for exp_id, row in before.items():
            if after.get(exp_id) != row:
                tally.lost += 1
                tally.problems.append(f"experiment {exp_id} was {row}, now {after.get(exp_id)}")
        for e in exps:
            if not e.decided:
                tally.half_recorded += 1
                tally.problems.append(f"experiment {e.id} has no decision after recovery")
        final: dict[int, int] = {}
        for d in ledger.decisions():
            if d.verdict != Verdict.MORE:
                final[d.experiment_id] = final.get(d.experiment_id, 0) + 1
        for exp_id, n in final.items():
            if n > 1:
                tally.duplicated += 1
                tally.problems.append(f"experiment {exp_id} has {n} final decisions")
        runs = ledger.runs()
        spent = sum(r.train_seconds + r.eval_seconds for r in runs)
        recorded = ledger.costs().get("compute", 0.0)
        if abs(spent - recorded) > 1e-6 * max(1.0, spent):
            tally.half_recorded += 1
            tally.problems.append(
                f"runs took {spent:.3f} s of compute but the costs say {recorded:.3f} s"
            )
        found = audit(ws, ledger)
        tally.problems += [f"audit: {p}" for p in found.problems]
    return after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--kills", type=int, default=50, help="cycles: one SIGKILL of the running supervisor each"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    ap.add_argument(
        "--second",
        type=float,
        default=0.5,
        help="share of cycles in which a second supervisor tries to start",
    )
    ap.add_argument(
        "--dir", type=Path, default=None, help="workspace folder (default: a temporary one)"
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="rsilab-soak-"))
    os.environ["RSILAB_HOME"] = str(tmp / "home")
    ws_dir = args.dir or tmp / "ws"
    log = tmp / "supervisor.log"
    from rsilab.config import resolve_task_dir
    from rsilab.workspace import init_workspace

    init_workspace(ws_dir, resolve_task_dir("toy"), "soak")
    tally = Tally()
    before: dict[int, tuple[object, ...]] = {}
    t0 = time.monotonic()
    startup = 5.0  # seconds from exec to the loop; measured on each recovering restart
    first_log, second_log = tmp / "first.log", tmp / "second.log"
    for cycle in range(1, args.kills + 1):
        tally.cycles = cycle
        proc = rsilab(ws_dir, log=first_log, mode="wb")
        if rng.random() < STARTUP_SHARE:
            delay = rng.uniform(0.0, startup)
        else:
            delay = startup + rng.uniform(0.0, WORK_WINDOW_S)
        second = None
        if rng.random() < args.second:
            at = rng.uniform(0.0, delay)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=at)  # the first one runs on (or ended: counted below)
            second = rsilab(ws_dir, log=second_log, mode="wb")
            tally.seconds += 1
            delay -= at
        if kill_after(proc, delay):
            tally.kills += 1
        elif not (second is not None and proc.returncode == 2):  # refused: the second won
            tally.problems.append(
                f"cycle {cycle}: the supervisor stopped on its own (exit {proc.returncode})"
            )
        if second is not None:
            if second.poll() is None:
                second.send_signal(signal.SIGKILL)
            second.wait()
            two_at_once(proc, first_log, second, second_log, cycle, tally)
        with open(log, "ab") as out:  # one log of every supervisor, for inspection
            for part in (first_log, second_log):
                if part.exists():
                    out.write(part.read_bytes())
                    part.unlink()
        if cycle % 5 == 0 and kill_after(
            rsilab(ws_dir, "--max-experiments", "0", log=log), rng.uniform(0.0, startup)
        ):
            tally.recovery_kills += 1
        t = time.monotonic()
        restart = rsilab(ws_dir, "--max-experiments", "0", log=log)
        if restart.wait() != 0:
            tally.problems.append(
                f"cycle {cycle}: the restart failed (exit {restart.returncode}); see {log}"
            )
        startup = time.monotonic() - t
        before = check(ws_dir, before, tally)
        done = len(before)
        print(
            f"cycle {cycle:3d}: {done} experiments decided, problems so far {len(tally.problems)}",
            flush=True,
        )
        if tally.problems:
            break
    wall = time.monotonic() - t0
    from rsilab.record.ledger import Ledger

    with Ledger(ws_dir / ".rsilab" / "ledger.db") as ledger:
        exps = ledger.experiments()
        n_runs = len(ledger.runs())
    interrupted = sum(e.status == "interrupted" for e in exps)
    print(f"\nsoak: {tally.cycles} cycles on the toy task in {wall:.0f} s (seed {args.seed})")
    print(
        f"  kills survived:  {tally.kills} of the running supervisor + {tally.recovery_kills} during recovery"
    )
    print(
        f"  experiments:     {len(exps)} ({len(exps) - interrupted} judged, {interrupted} interrupted by a kill), "
        f"{n_runs} runs"
    )
    print(
        f"  lost: {tally.lost}, duplicated: {tally.duplicated}, half-recorded: {tally.half_recorded}, "
        f"other inconsistencies: {len(tally.problems) - tally.lost - tally.duplicated - tally.half_recorded}"
    )
    print(
        f"  second supervisors: {tally.seconds} started: {tally.refused} refused in one line, "
        f"{tally.won} reached the lock first (the first was refused), "
        f"{tally.early} killed while starting"
    )
    if tally.problems:
        print("problems:")
        for p in tally.problems:
            print(f"  {p}")
        print(f"workspace kept for inspection: {ws_dir} (supervisor output: {log})")
        sys.exit(1)
    if args.dir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

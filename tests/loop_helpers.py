"""Helpers for the research-loop tests (test_loop, test_parallel, test_faults, test_audit,
test_ray and report_helpers): real workspaces on the bundled `toy` task, ideas put in the
queue (knob changes, git-made patches), a supervisor run to the end, the `rsilab` CLI as
a separate process, polling for a condition with a deadline, and the consistency check of
ledger and git after a run.

The "shifted" toy task (`shifted_task`, `make_shifted_ws`) is the toy with two independent
knobs added, SHIFT_A and SHIFT_B: each puts a deliberate error of 0.5 into one weight, which
costs 0.25 of validation loss (five times the toy's noise), so fixing either is a clear win
on its own and on top of the other. Every run prints its own start and end time in its
summary (`spans`, `overlap` read them), and WORK_SECONDS of (CPU-light) work stand in for
a longer training.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rsilab.config import resolve_task_dir
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.record.ledger import Ledger
from rsilab.run.bench import Bench
from rsilab.workspace import git, init_workspace, open_workspace

TOY_TRAIN = "train.py"

# -- workspaces and the queue ----------------------------------------------------------------


def make_ws(tmp_path: Path, tag: str = "t") -> Path:
    """A workspace on the bundled toy task, at tmp_path/ws."""
    init_workspace(tmp_path / "ws", resolve_task_dir("toy"), tag)
    return tmp_path / "ws"


KNOBS = """SHIFT_A = 0.5        # error put into weight 0 (costs SHIFT_A**2 of val loss)
SHIFT_B = 0.5        # error put into weight 1
WORK_SECONDS = {work}   # stand-in for a longer training (sleeps: CPU-light)
"""


def shifted_task(tmp_path: Path, work: float = 1.0) -> Path:
    """A copy of the toy task with SHIFT_A, SHIFT_B and timestamps in every run's summary."""
    task = tmp_path / "task"
    shutil.copytree(resolve_task_dir("toy"), task, ignore=shutil.ignore_patterns("__pycache__"))
    src = (task / "train.py").read_text()
    src = src.replace("import numpy as np\n", "import time\n\nimport numpy as np\n", 1)
    src = src.replace(
        "MOMENTUM = 0.0       # heavy-ball momentum\n",
        "MOMENTUM = 0.0       # heavy-ball momentum\n" + KNOBS.format(work=work),
        1,
    )
    src = src.replace(
        "rng = np.random", "T_START = time.time()\ntime.sleep(WORK_SECONDS)\nrng = np.random", 1
    )
    src = src.replace("np.save(", "w[0] += SHIFT_A\nw[1] += SHIFT_B\nnp.save(", 1)
    src = src.replace(
        '"num_steps": STEPS,', '"num_steps": STEPS, "t_start": T_START, "t_end": time.time(),', 1
    )
    assert "SHIFT_A = 0.5 " in src and "w[0] += SHIFT_A" in src and "t_end" in src
    (task / "train.py").write_text(src)
    return task


def make_shifted_ws(tmp_path: Path, work: float = 1.0) -> Path:
    """A workspace on the shifted toy task (tag `par`), at tmp_path/ws."""
    init_workspace(tmp_path / "ws", shifted_task(tmp_path, work), "par")
    return tmp_path / "ws"


def queue_knobs(ws_dir: Path, name: str, description: str, **knobs: object) -> None:
    """Queue a change of knobs (a .toml file in the workspace's queue)."""
    q = ws_dir / ".rsilab" / "queue"
    q.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{k} = {v!r}" for k, v in knobs.items())
    (q / f"{name}.toml").write_text(f'description = "{description}"\n[knobs]\n{body}\n')


def queue_patch(ws_dir: Path, name: str, rel: str, old: str, new: str) -> None:
    """Queue a unified diff that replaces `old` by `new` in `rel` (made with real git)."""
    src = (ws_dir / rel).read_text()
    assert old in src
    scratch = ws_dir.parent / f"scratch-{name}"
    subprocess.run(["git", "clone", "-q", str(ws_dir), str(scratch)], check=True)
    (scratch / rel).write_text(src.replace(old, new, 1))
    diff = subprocess.run(
        ["git", "diff"], cwd=scratch, capture_output=True, text=True, check=True
    ).stdout
    q = ws_dir / ".rsilab" / "queue"
    q.mkdir(parents=True, exist_ok=True)
    (q / f"{name}.patch").write_text(diff)


# -- running the loop ------------------------------------------------------------------------


def supervise(
    ws_dir: Path, *overrides: tuple[str, object], max_experiments: int | None = None
) -> tuple[str, Ledger]:
    """The supervisor with the queue proposer, in this process, until it stops: (reason, ledger)."""
    ws = open_workspace(ws_dir)
    task = ws.load_task(list(overrides))
    ledger = Ledger(ws.ledger_path)
    sup = Supervisor(
        ws,
        ledger,
        Bench(task),
        [create("queue", queue_dir=ws.queue_dir)],
        limits=Limits(max_experiments=max_experiments),
    )
    return sup.run(), ledger


def start_rsilab(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m rsilab.cli ARGS` as a separate process, stdout and stderr in one pipe."""
    # SIGINT back to its default in the child: a test suite started as a background job of
    # a script inherits SIGINT ignored, and rsilab, like any program, keeps it ignored then.
    return subprocess.Popen(
        [sys.executable, "-m", "rsilab.cli", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env or dict(os.environ),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 60.0,
    proc: subprocess.Popen[str] | None = None,
) -> None:
    """Poll a condition (not a fixed sleep): the test proceeds the moment it holds. With
    `proc` (the supervisor), its exiting first fails the test at once, with its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(
                f"the supervisor exited ({proc.returncode}) before the condition held:\n{output}"
            )
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


# -- checking the result ---------------------------------------------------------------------


def assert_consistent(ws_dir: Path) -> Ledger:
    """Ledger and git agree after a run: ids 1..n, all decided, the incumbent is the branch
    tip, no worktree left, every experiment's commit reachable. Returns the ledger."""
    ws = open_workspace(ws_dir)
    ledger = Ledger(ws.ledger_path)
    exps = ledger.experiments()
    ids = [e.id for e in exps]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing duplicated
    assert all(e.decided for e in exps)
    inc = ledger.incumbent()
    assert inc is not None and ws.incumbent_commit() == inc.commit
    assert git(ws_dir, "worktree", "list").count("\n") == 1
    for e in exps:  # every experiment's commit is kept reachable for reproduction
        assert git(ws_dir, "rev-parse", f"refs/rsilab/{ws.tag}/exp-{e.id:04d}").strip() == e.commit
    return ledger


def spans(ledger: Ledger, exp_id: int) -> list[tuple[float, float]]:
    """(start, end) of every run of an experiment, as the runs themselves reported them
    (the shifted task's summaries)."""
    return [(r.summary["t_start"], r.summary["t_end"]) for r in ledger.runs(exp_id)]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two (start, end) spans share some time."""
    return max(a[0], b[0]) < min(a[1], b[1])

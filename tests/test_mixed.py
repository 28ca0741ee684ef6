"""Mixed research: the tuner follows another proposer's kept change; `rsilab doctor`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fake_llm import FakeLLM

from rsilab.config import resolve_task_dir
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.proposers.base import Context
from rsilab.record.ledger import Ledger
from rsilab.results import Proposal
from rsilab.run.bench import Bench
from rsilab.workspace import init_workspace


class IdeaProposer:
    """Stands in for an LLM: one structural idea (less weight decay), then nothing."""

    name = "llm"

    def __init__(self) -> None:
        self.done = False

    def propose(self, ctx: Context) -> Proposal | None:
        if self.done:
            return None
        self.done = True
        src = ctx.files["train.py"].replace("L2 = 0.1 ", "L2 = 0.01")
        return Proposal("less weight decay", {"train.py": src}, self.name)

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        pass


def test_tuner_retunes_after_a_kept_idea(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws", resolve_task_dir("toy"), "mix")
    # A 5-run noise floor, as in test_loop: the idea's gain (about 2 sd) is measured against
    # others' noise (the judge never lets its own steadier runs lower its bar).
    task = ws.load_task([("tuner.follow", 2), ("judge.noise_runs", 5)])
    ledger = Ledger(ws.ledger_path)
    sup = Supervisor(
        ws,
        ledger,
        Bench(task),
        [create("queue", queue_dir=ws.queue_dir), IdeaProposer()],
        limits=Limits(max_experiments=3),
        follower=create("tuner", seed=1),
    )
    sup.run()
    exps = ledger.experiments()
    assert [e.proposer for e in exps] == ["baseline", "llm", "tuner", "tuner"]
    assert exps[1].status == "keep"
    # The tuner works on the new code: its proposals start from the idea's L2 = 0.01.
    from rsilab.workspace import git

    for e in exps[2:]:
        assert "L2 = 0.01" in git(ws.root, "show", f"{e.parent}:train.py")
        if "L2" not in e.meta["changed"]:
            assert "L2 = 0.01" in git(ws.root, "show", f"{e.commit}:train.py")


def test_doctor_reports_in_plain_words(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI", "ANTHROPIC", "RSILAB_LLM"))
    }
    with FakeLLM() as fake:
        fake.queue("pong")
        env["OPENAI_BASE_URL"] = fake.url_openai
        out = subprocess.run(
            [sys.executable, "-m", "rsilab.cli", "doctor", "--task", "toy"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.strip()}
    assert lines["torch"].startswith("ok") and lines["git"].startswith("ok")
    assert "answered" in lines["llm"] and lines["llm"].startswith("ok")
    del env["OPENAI_BASE_URL"]
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "doctor", "--task", "toy", "--no-ping"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "not configured" in out.stdout

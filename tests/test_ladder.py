"""The fidelity ladder: a win at the short budget must hold at the long one to be kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rsilab import harness
from rsilab.config import load_task
from rsilab.errors import ConfigError
from rsilab.loop.judge import Judgement
from rsilab.loop.ladder import Ladder, at_budget, confirm_on_ladder, parse_ladder, transfers
from rsilab.record.ledger import Ledger
from rsilab.results import Verdict
from rsilab.run.bench import Bench
from rsilab.workspace import init_workspace

# A task whose quality depends on the budget the runner gives: BIG_STEP stands for a
# higher learning rate, which helps a short run and hurts a long one; SMALL_WIN helps at
# every budget. The metric comes from train.py itself (in-process evaluator): nothing else
# to wait for.
TRAIN = """\
import random
from rsilab import harness

BIG_STEP = False   # helps below 1.5 s of budget, hurts above
SMALL_WIN = False  # helps at any budget

short = harness.budget_seconds() < 1.5
loss = 1.0 + random.Random(harness.seed()).gauss(0, 0.01)
if BIG_STEP:
    loss += -0.3 if short else 0.3
if SMALL_WIN:
    loss -= 0.2
harness.print_summary({"val_loss": loss})
"""

TOML = """\
name = "budgety"
editable = ["train.py"]
train = "python train.py"
evaluator = "in-process"
data = "none"
budget = 1
overhead = 20

[metric]
name = "val_loss"
direction = "min"

[judge]
noise_runs = 2
max_runs = 3
"""


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "task"
    d.mkdir()
    (d / "rsilab.toml").write_text(TOML)
    (d / "train.py").write_text(TRAIN)
    return d


def variant(tmp_path: Path, task_dir: Path, name: str, **knobs: bool) -> Path:
    d = tmp_path / name
    shutil.copytree(task_dir, d)
    text = TRAIN
    for knob, value in knobs.items():
        text = text.replace(f"{knob} = False", f"{knob} = {value}")
    (d / "train.py").write_text(text)
    return d


def test_a_win_that_does_not_hold_at_the_longer_budget_is_rejected(
    tmp_path: Path, task_dir: Path
) -> None:
    task = load_task(task_dir)
    cand = variant(tmp_path, task_dir, "cand", BIG_STEP=True)
    out = confirm_on_ladder(
        Bench(task), [1, 2], cand, task_dir, run_root=tmp_path / "runs", experiment_id=1
    )
    assert not out.ok
    assert out.reason.startswith("did not transfer to 2 s")
    (rung,) = out.rungs
    assert rung.budget == 2 and rung.verdict == "discard"
    assert min(rung.candidate) > max(rung.incumbent)  # worse at 2 s, as built
    assert out.compute_s > 0


def test_a_win_that_holds_is_confirmed(tmp_path: Path, task_dir: Path) -> None:
    task = load_task(task_dir)
    cand = variant(tmp_path, task_dir, "cand", SMALL_WIN=True)
    cache: dict[float, list[float]] = {}
    out = confirm_on_ladder(
        Bench(task),
        [1, 2, 3],
        cand,
        task_dir,
        run_root=tmp_path / "runs",
        experiment_id=1,
        incumbent_cache=cache,
    )
    assert out.ok and out.reason.startswith("transferred")
    assert [r.budget for r in out.rungs] == [2, 3] and all(r.verdict == "keep" for r in out.rungs)
    assert set(cache) == {2, 3}  # the incumbent's runs are kept for the next candidate


def test_gate_turns_a_keep_into_a_discard_and_records_it(tmp_path: Path, task_dir: Path) -> None:
    ws = init_workspace(tmp_path / "ws", task_dir, "t")
    task = ws.load_task()
    base = ws.incumbent_commit()
    tree = ws.create_worktree("cand", base)
    (tree / "train.py").write_text(TRAIN.replace("BIG_STEP = False", "BIG_STEP = True"))
    commit = ws.commit(tree, "big step")
    assert commit is not None
    keep = Judgement(Verdict.KEEP, "better: gain +0.3", 0.3, 0.2, 0.4, 0.001, 2, 2)
    ladder = Ladder(parse_ladder("1,2"))
    ladder.check_task(task)
    with Ledger(ws.ledger_path) as ledger:
        exp = ledger.add_experiment(
            parent=base, commit=commit, proposer="tuner", description="big step", diff=""
        )
        out = ladder.gate(
            keep,
            ws=ws,
            task=task,
            ledger=ledger,
            experiment_id=exp,
            candidate=tree,
            incumbent_commit=base,
            bench=Bench(task),
        )
        assert out.verdict is Verdict.DISCARD and "ladder" in out.flags
        assert "kept at 1 s" in out.reason and "did not transfer to 2 s" in out.reason
        (t,) = transfers(ledger)
        assert t["experiment"] == exp and t["transferred"] is False
        assert ledger.costs(exp)["compute"] > 0  # the ladder's runs count as research compute
        assert ledger.runs(exp) == []  # ... but are not runs of the experiment (other budget)
        # Anything but a keep passes through untouched, at no cost.
        discard = Judgement(Verdict.DISCARD, "no gain", -0.1, None, None, None, 1, 2)
        assert (
            ladder.gate(
                discard,
                ws=ws,
                task=task,
                ledger=ledger,
                experiment_id=exp,
                candidate=tree,
                incumbent_commit=base,
                bench=Bench(task),
            )
            is discard
        )
    ws.remove_worktree(tree)


def test_parse_ladder_and_budgets(task_dir: Path) -> None:
    assert parse_ladder("60, 300") == [60.0, 300.0]
    for bad in ("60", "300,60", "a,b", "0,10"):
        with pytest.raises(ConfigError):
            parse_ladder(bad)
    with pytest.raises(ConfigError, match="budget=60"):
        Ladder([60, 300]).check_task(load_task(task_dir))
    task = load_task(task_dir, [("budget", 2), ("budget_flops", 1e9)])
    higher = at_budget(task, 6)
    assert higher.budget == 6 and higher.budget_flops == 3e9
    assert higher.env[harness.ENV_BUDGET_FLOPS] == repr(3e9)  # what the runner hands to train.py
    assert harness.ENV_BUDGET_FLOPS not in at_budget(load_task(task_dir), 6).env


def test_harness_budget_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(harness.ENV_BUDGET_FLOPS, raising=False)
    assert harness.budget_flops() is None
    monkeypatch.setenv(harness.ENV_BUDGET_FLOPS, "2.5e12")
    assert harness.budget_flops() == 2.5e12
    assert os.environ[harness.ENV_BUDGET_FLOPS] == "2.5e12"


def test_the_supervisor_discards_a_win_that_does_not_transfer(
    tmp_path: Path, task_dir: Path
) -> None:
    """End to end, once the supervisor calls `Ladder.gate` at its keep site (`self.ladder`)."""
    from rsilab.loop.limits import Limits
    from rsilab.loop.supervisor import Supervisor
    from rsilab.proposers import create

    ws = init_workspace(tmp_path / "ws", task_dir, "t")
    ws.queue_dir.mkdir(parents=True, exist_ok=True)
    (ws.queue_dir / "big.toml").write_text('description = "big step"\n[knobs]\nBIG_STEP = true\n')
    with Ledger(ws.ledger_path) as ledger:
        sup = Supervisor(
            ws,
            ledger,
            Bench(ws.load_task()),
            [create("queue", queue_dir=ws.queue_dir)],
            limits=Limits(max_experiments=1),
        )
        if not hasattr(sup, "ladder"):
            pytest.skip("the supervisor has no ladder hook yet (see rsilab/loop/ladder.py)")
        sup.ladder = Ladder([1, 2])
        sup.run()
        exp = ledger.experiments()[-1]
        assert exp.description == "big step" and exp.status == "discard"
        assert "did not transfer to 2 s" in exp.reason
        assert ws.incumbent_commit() == ledger.experiments()[0].commit


@pytest.mark.slow
@pytest.mark.parametrize(
    "script", ["train.py", "reference/nanogpt_cpu.py", "reference/modded_nanogpt.py"]
)
def test_gpt_scripts_stop_on_a_flops_budget_and_pass_the_sealed_evaluator(
    tmp_path: Path, script: str
) -> None:
    """The task's train.py and both human references: a FLOPs budget ends training (not the
    clock), and the exported model passes the sealed evaluator (causal, stateless)."""
    from rsilab.data import prepare
    from rsilab.paths import bundled_tasks_dir
    from rsilab.run import runner

    gpt = bundled_tasks_dir() / "gpt"
    work = tmp_path / "gpt"
    shutil.copytree(gpt, work, ignore=shutil.ignore_patterns("reference", "__pycache__"))
    shutil.copy(gpt / script, work / "train.py")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 400
    )
    data = prepare(str(corpus), home=tmp_path / "data")
    budget = 3e9
    task = load_task(work, [("budget", 120), ("budget_flops", budget), ("eval.bytes", 4096)])
    r = runner.run(
        task,
        work,
        tmp_path / "run",
        seed=1,
        train_data=data.train_path,
        val_data=data.val_path,
        preset="cpu",
    )
    assert r.ok, f"{r.reason}\n{r.log_tail}"
    assert r.evaluation["sealed"] is True
    flops, steps = r.summary["train_flops"], r.summary["num_steps"]
    assert budget <= flops < budget + flops / steps  # stopped by the first step past the budget
    assert r.summary["training_seconds"] < 100  # ... not by the clock


def test_run_command_with_a_ladder(tmp_path: Path, task_dir: Path) -> None:
    from click.testing import CliRunner

    from rsilab.cli import main

    ws = init_workspace(tmp_path / "ws", task_dir, "t")
    ws.queue_dir.mkdir(parents=True, exist_ok=True)
    (ws.queue_dir / "big.toml").write_text('description = "big step"\n[knobs]\nBIG_STEP = true\n')
    (ws.queue_dir / "small.toml").write_text(
        'description = "small win"\n[knobs]\nSMALL_WIN = true\n'
    )
    result = CliRunner().invoke(
        main, ["run", str(ws.root), "--proposer", "queue", "--ladder", "1,2"]
    )
    assert result.exit_code == 0, result.output
    with Ledger(ws.ledger_path) as ledger:
        status = {e.description: e.status for e in ledger.experiments()}
        assert status == {"baseline": "keep", "big step": "discard", "small win": "keep"}
        assert [t["transferred"] for t in transfers(ledger)] == [False, True]
    bad = CliRunner().invoke(main, ["run", str(ws.root), "--proposer", "queue", "--ladder", "5,10"])
    assert bad.exit_code == 2 and "--set budget=5" in bad.output

"""Tests for rsilab.record.ledger: schema, round-trips, status rules, concurrency, kill-safety, exports."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsilab.errors import RsilabError
from rsilab.record.ledger import MIGRATIONS, Ledger
from rsilab.results import RunResult, Status


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ws" / ".rsilab" / "ledger.db")
    yield led
    led.close()


def _ok(seed: int, metric: float, mem: float = 0.0) -> RunResult:
    return RunResult(Status.OK, seed, metric, summary={"peak_memory_gb": mem} if mem else {})


def _exp(
    led: Ledger, desc: str = "try a thing", commit: str = "abcdef0123456789", **kw: object
) -> int:
    return led.add_experiment(
        parent=None,
        commit=commit,
        proposer="tuner",
        description=desc,
        diff="--- a\n+++ b\n",
        **kw,  # type: ignore[arg-type]
    )


def test_creates_parent_dir_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / ".rsilab" / "ledger.db"
    with Ledger(path):
        pass
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [name for name, _ in MIGRATIONS]
    db.close()


def test_migrations_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        _exp(led)
    with Ledger(path) as led:  # opening again applies nothing and keeps the data
        assert [e.id for e in led.experiments()] == [1]
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
    db.close()


def test_a_ledger_from_before_the_settings_rename_keeps_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workspaces made before 005_settings have a `meta` table: it becomes `settings`, values kept."""
    from rsilab.record import ledger as ledger_module

    path = tmp_path / "ledger.db"
    old = [m for m in MIGRATIONS if m[0] != "005_settings"]
    monkeypatch.setattr(ledger_module, "MIGRATIONS", old)
    db = sqlite3.connect(path)
    with Ledger(path):  # the schema as it was
        pass
    db.execute("INSERT INTO meta (key, value) VALUES ('overrides', '[\"budget=20\"]')")
    db.commit()
    db.close()
    monkeypatch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS)
    with Ledger(path) as led:
        assert led.get_setting("overrides") == ["budget=20"]
        led.set_setting("tag", "t")
        assert led.get_setting("tag") == "t"


def test_settings_round_trip(ledger: Ledger) -> None:
    assert ledger.get_setting("tag") is None
    assert ledger.get_setting("tag", "x") == "x"
    ledger.set_setting("tag", "mar5")
    ledger.set_setting("frozen", {"prepare.py": "ab12", "n": [1, 2]})
    ledger.set_setting("tag", "mar6")  # meta is the one mutable table
    assert ledger.get_setting("tag") == "mar6"
    assert ledger.get_setting("frozen") == {"prepare.py": "ab12", "n": [1, 2]}


def test_experiment_run_decision_round_trip(ledger: Ledger) -> None:
    eid = ledger.add_experiment(
        parent="p" * 40, commit="c" * 40, proposer="llm", description="wider MLP",
        diff="@@ -1 +1 @@\n-a\n+b\n", kind="candidate", knobs={"MLP_RATIO": 4, "LR": 0.02},
        meta={"model": "x", "tokens": 12}, worktree="/tmp/wt/1",
    )  # fmt: skip
    assert eid == 1
    result = RunResult(
        status=Status.OK, seed=7, metric=0.99, reason="", summary={"peak_memory_gb": 1.25, "mfu": 0.4},
        evaluation={"bytes": 131072, "causal": True}, train_seconds=60.5, eval_seconds=3.25,
        log_path="runs/1/7.log", isolation="bwrap", log_tail="step 100\nval_bpb: 0.99",
    )  # fmt: skip
    rid = ledger.add_run(eid, result)
    e = ledger.experiment(eid)
    assert (e.parent, e.commit, e.proposer, e.description) == (
        "p" * 40,
        "c" * 40,
        "llm",
        "wider MLP",
    )
    assert e.diff == "@@ -1 +1 @@\n-a\n+b\n" and e.kind == "candidate" and e.worktree == "/tmp/wt/1"
    assert e.knobs == {"MLP_RATIO": 4, "LR": 0.02} and e.meta == {"model": "x", "tokens": 12}
    assert e.status == "running" and e.metric is None and e.decided_at is None
    assert e.started_at > 0

    [run] = ledger.runs(eid)
    assert run.id == rid and run.experiment_id == eid and run.kind == "trial"
    assert run.result == result  # every RunResult field survives
    assert run.status is Status.OK and run.ok and run.peak_memory_gb == 1.25

    ledger.add_decision(eid, verdict="keep", reason="p=0.01", effect=0.02, ci_low=0.01,
                        ci_high=0.03, p_value=0.01, metric=0.985)  # fmt: skip
    e = ledger.experiment(eid)
    assert (e.status, e.metric, e.reason, e.effect, e.ci_low, e.ci_high, e.p_value) == (
        "keep", 0.985, "p=0.01", 0.02, 0.01, 0.03, 0.01,
    )  # fmt: skip
    assert e.decided_at is not None and e.decided
    [d] = ledger.decisions(eid)
    assert d.verdict == "keep" and d.source == "judge"


def test_validation(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="experiment kind"):
        _exp(ledger, kind="weird")
    eid = _exp(ledger)
    with pytest.raises(ValueError, match="run kind"):
        ledger.add_run(eid, _ok(1, 1.0), kind="other")
    with pytest.raises(ValueError):
        ledger.add_decision(eid, verdict="maybe", reason="")
    with pytest.raises(sqlite3.IntegrityError):  # foreign key: no experiment 99
        ledger.add_run(99, _ok(1, 1.0))
    with pytest.raises(RsilabError, match="no experiment 42"):
        ledger.experiment(42)


def test_status_is_latest_decision(ledger: Ledger) -> None:
    a, b, c = _exp(ledger, "a"), _exp(ledger, "b"), _exp(ledger, "c")
    ledger.add_decision(a, verdict="more", reason="needs another seed")
    ledger.add_decision(b, verdict="discard", reason="worse")
    assert [e.status for e in ledger.experiments()] == ["more", "discard", "running"]
    # "more" is not a final decision: a and c are still undecided
    assert [e.id for e in ledger.undecided()] == [a, c]
    ledger.add_decision(a, verdict="keep", reason="confirmed", metric=1.0)
    ledger.add_decision(c, verdict="crash", reason="exit 1")
    assert [e.status for e in ledger.experiments()] == ["keep", "discard", "crash"]
    assert ledger.undecided() == []
    assert len(ledger.decisions(a)) == 2


def test_incumbent_and_values(ledger: Ledger) -> None:
    assert ledger.incumbent() is None and ledger.incumbent_values() == []
    base = _exp(ledger, "baseline", kind="baseline")
    for seed, v in [(1, 1.00), (2, 1.02)]:
        ledger.add_run(base, _ok(seed, v))
    ledger.add_run(base, RunResult(Status.CRASH, 3, None, reason="boom"))
    ledger.add_decision(base, verdict="keep", reason="baseline", metric=1.01)
    assert ledger.incumbent().id == base  # type: ignore[union-attr]
    assert ledger.incumbent_values() == [1.00, 1.02]

    worse = _exp(ledger, "worse")
    ledger.add_run(worse, _ok(1, 1.2))
    ledger.add_decision(worse, verdict="discard", reason="worse", metric=1.2)
    better = _exp(ledger, "better")
    ledger.add_run(better, _ok(1, 0.9))
    ledger.add_run(better, _ok(2, 0.91))
    ledger.add_decision(better, verdict="keep", reason="better", metric=0.905)
    assert ledger.incumbent().id == better  # type: ignore[union-attr]
    ledger.add_run(better, _ok(5, 0.92), kind="recheck")  # rechecks count too
    assert ledger.incumbent_values() == [0.9, 0.91, 0.92]
    # a later decision that revokes the keep hands the title back to the previous keep
    ledger.add_decision(better, verdict="discard", reason="recheck failed", source="recheck")
    assert ledger.incumbent().id == base  # type: ignore[union-attr]


def test_events_and_costs(ledger: Ledger) -> None:
    for i in range(5):
        ledger.add_event("step", f"message {i}", data={"i": i})
    ledger.add_event("stop", "bye", source="cli")
    evs = ledger.events()
    assert [e.message for e in evs][:2] == ["message 0", "message 1"] and evs[0].data == {"i": 0}
    last = ledger.events(limit=2)
    assert [(e.kind, e.message, e.source) for e in last] == [
        ("step", "message 4", "supervisor"),
        ("stop", "bye", "cli"),
    ]
    eid = _exp(ledger)
    ledger.add_cost(eid, "compute", 63.2, "s")
    ledger.add_cost(eid, "compute", 10, "s")
    ledger.add_cost(None, "tokens_in", 1200, "tokens")
    assert ledger.costs() == pytest.approx({"compute": 73.2, "tokens_in": 1200.0})
    assert ledger.costs(eid) == pytest.approx({"compute": 73.2})


def test_tables_are_append_only(ledger: Ledger) -> None:
    eid = _exp(ledger)
    ledger.add_decision(eid, verdict="keep", reason="")
    db = sqlite3.connect(ledger.path)
    for sql in ("UPDATE experiments SET description = 'x'", "DELETE FROM decisions"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()


def test_transaction_that_raises_writes_nothing(ledger: Ledger) -> None:
    _exp(ledger, "before")
    with pytest.raises(RuntimeError), ledger.transaction():
        eid = _exp(ledger, "inside")
        ledger.add_run(eid, _ok(1, 1.0))
        ledger.add_event("x", "y")
        raise RuntimeError("boom")
    assert [e.description for e in ledger.experiments()] == ["before"]
    assert ledger.runs() == [] and ledger.events() == []
    # the ledger is usable afterwards, and a nested block that fails rolls back only itself
    with ledger.transaction():
        _exp(ledger, "outer")
        with pytest.raises(RuntimeError), ledger.transaction():
            _exp(ledger, "inner")
            raise RuntimeError("inner")
    assert [e.description for e in ledger.experiments()] == ["before", "outer"]


def test_second_connection_reads_while_first_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer = Ledger(path)
    _exp(writer, "committed")
    with writer.transaction():
        _exp(writer, "pending")
        reader = Ledger(path)  # opening does not wait for the writer's lock
        assert [e.description for e in reader.experiments()] == ["committed"]
    assert [e.description for e in reader.experiments()] == ["committed", "pending"]
    reader.close()
    writer.close()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from rsilab.record.ledger import Ledger
    from rsilab.results import RunResult, Status
    led = Ledger(Path(sys.argv[1]))
    for i in range(5):
        with led.transaction():
            eid = led.add_experiment(parent=None, commit=f"{i:040d}", proposer="t",
                                     description=f"exp {i}", diff="")
            led.add_run(eid, RunResult(Status.OK, i, 1.0 + i))
            led.add_decision(eid, verdict="discard", reason="", metric=1.0 + i)
    print("committed", flush=True)
    with led.transaction():  # dies in the middle of this one
        led.add_experiment(parent=None, commit="f" * 40, proposer="t", description="lost", diff="")
        if sys.argv[2] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    """
)


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_kill_safety(tmp_path: Path, how: str) -> None:
    path = tmp_path / ".rsilab" / "ledger.db"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), how], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "committed" in proc.stdout, proc.stderr
    with Ledger(path) as led:
        exps = led.experiments()
        assert [e.description for e in exps] == [f"exp {i}" for i in range(5)]
        assert [e.status for e in exps] == ["discard"] * 5
        assert len(led.runs()) == 5
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def _filled(led: Ledger) -> None:
    base = _exp(led, "baseline", commit="a1b2c3d4e5f6a7b8", kind="baseline")
    led.add_run(base, _ok(1, 0.997900, mem=44.04))
    led.add_run(base, _ok(2, 0.998100, mem=44.2))
    led.add_decision(base, verdict="keep", reason="baseline", metric=0.998)
    d = _exp(led, "switch to\tGeLU\nactivation", commit="b2c3d4e5f6a7b8c9")
    led.add_run(d, _ok(1, 1.005, mem=44.0))
    led.add_decision(d, verdict="discard", reason="worse", metric=1.005)
    c = _exp(led, "double the width (OOM)", commit="c3d4e5f6a7b8c9d0")
    led.add_run(c, RunResult(Status.OOM, 1, None, reason="oom"))
    led.add_decision(c, verdict="crash", reason="oom", metric=None)
    k = _exp(led, "increase LR to 0.04", commit="d4e5f6a7b8c9d0e1")
    led.add_run(k, _ok(1, 0.9932, mem=44.2))
    led.add_decision(k, verdict="keep", reason="p=0.01", metric=0.99321)
    _exp(led, "still running", commit="e5f6a7b8c9d0e1f2")


def test_export_tsv_exact_format(ledger: Ledger, tmp_path: Path) -> None:
    _filled(ledger)
    out = tmp_path / "results.tsv"
    ledger.export_tsv(out)
    assert out.read_text() == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.998000\t44.2\tkeep\tbaseline\n"
        "b2c3d4e\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
        "c3d4e5f\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
        "d4e5f6a\t0.993210\t44.2\tkeep\tincrease LR to 0.04\n"
    )
    ledger.export_tsv(out, metric_name="loss")
    assert out.read_text().splitlines()[0] == "commit\tloss\tmemory_gb\tstatus\tdescription"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_json_and_csv(ledger: Ledger, tmp_path: Path) -> None:
    _filled(ledger)
    ledger.set_setting("metric", "val_bpb")
    nan = _exp(ledger, "diverged")
    ledger.add_run(nan, RunResult(Status.OK, 1, 1.0, summary={"loss": math.nan}))
    ledger.add_cost(1, "compute", 60.0, "s")
    ledger.export_json(tmp_path / "ledger.json")
    dump = json.loads((tmp_path / "ledger.json").read_text())  # strict JSON: NaN became null
    assert dump["settings"] == {"metric": "val_bpb"} and dump["costs"] == {"compute": 60.0}
    first = dump["experiments"][0]
    assert first["status"] == "keep" and len(first["runs"]) == 2 and len(first["decisions"]) == 1
    assert first["runs"][0]["status"] == "ok" and first["diff"].startswith("---")
    assert dump["experiments"][-1]["runs"][0]["summary"] == {"loss": None}

    ledger.export_csv(tmp_path / "ledger.csv")
    rows = list(csv.DictReader((tmp_path / "ledger.csv").read_text().splitlines()))
    # one row per run, one for each experiment without runs
    assert len(rows) == len(ledger.runs()) + 1
    assert rows[0]["id"] == "1" and rows[0]["run_id"] == "1" and rows[0]["status"] == "keep"
    assert rows[0]["peak_memory_gb"] == "44.04" and "diff" not in rows[0]
    assert rows[5]["description"] == "still running" and rows[5]["run_id"] == ""

"""The research record. Owns: `<workspace>/.rsilab/ledger.db` and the files exported from it.

One SQLite file (stdlib `sqlite3`) holds every experiment, run, decision, event and cost
of a workspace. Those five tables are append-only (triggers refuse UPDATE and DELETE): the
current status of an experiment is its latest decision, and an experiment without one is
"running". The small `settings` table (key -> JSON value: the overrides, the comparable
settings, a study's parameters) is the only mutable one.

Durability: WAL journal, `synchronous=FULL`, one transaction per write (or per
`transaction()` block), so a committed row survives `kill -9` and power loss, and a second
process (the dashboard, `rsilab status`) reads while the supervisor writes. The schema
grows through named, ordered migrations recorded in `_migrations`, each applied once.

Exports: `results.tsv` in karpathy/autoresearch's exact format, a JSON dump and a flat CSV,
all written atomically. This module does NOT judge, plot or touch git.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rsilab.errors import RsilabError
from rsilab.fsio import atomic_write, json_safe
from rsilab.results import RunResult, Status, Verdict

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's lock
EXPERIMENT_KINDS = ("baseline", "candidate")
RUN_KINDS = ("trial", "recheck")
RUNNING = "running"  # the status of an experiment without a decision
APPEND_ONLY = ("experiments", "runs", "decisions", "events", "costs")


# -- migrations: append new ones at the end, never edit an applied one ---------------------


def _m001_initial(db: sqlite3.Connection) -> None:
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE experiments (
            id INTEGER PRIMARY KEY, parent TEXT, commit_sha TEXT NOT NULL,
            proposer TEXT NOT NULL, description TEXT NOT NULL, diff TEXT NOT NULL,
            kind TEXT NOT NULL, knobs TEXT NOT NULL, meta TEXT NOT NULL,
            worktree TEXT NOT NULL, started_at REAL NOT NULL)""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            kind TEXT NOT NULL, status TEXT NOT NULL, seed INTEGER NOT NULL, metric REAL,
            reason TEXT NOT NULL, summary TEXT NOT NULL, evaluation TEXT NOT NULL,
            train_seconds REAL NOT NULL, eval_seconds REAL NOT NULL, log_path TEXT NOT NULL,
            isolation TEXT NOT NULL, log_tail TEXT NOT NULL, created_at REAL NOT NULL)""",
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            verdict TEXT NOT NULL, reason TEXT NOT NULL, effect REAL, ci_low REAL,
            ci_high REAL, p_value REAL, metric REAL, source TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL,
            data TEXT NOT NULL, source TEXT NOT NULL, created_at REAL NOT NULL)""",
        """CREATE TABLE costs (
            id INTEGER PRIMARY KEY, experiment_id INTEGER REFERENCES experiments(id),
            kind TEXT NOT NULL, amount REAL NOT NULL, unit TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX runs_experiment ON runs(experiment_id, id)",
        "CREATE INDEX decisions_experiment ON decisions(experiment_id, id)",
    ):
        db.execute(sql)


def _m002_append_only(db: sqlite3.Connection) -> None:
    for table in APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def _m003_collapse_cells(db: sqlite3.Connection) -> None:
    # One row per finished cell of an `rsilab collapse` study (policy, seed, generation): a
    # cell is not an experiment (no proposal, parent or verdict), so it has its own table.
    db.execute("""CREATE TABLE collapse_cells (
        id INTEGER PRIMARY KEY, policy TEXT NOT NULL, seed INTEGER NOT NULL,
        generation INTEGER NOT NULL, status TEXT NOT NULL, val_bpb REAL, metrics TEXT NOT NULL,
        data TEXT NOT NULL, samples TEXT NOT NULL, run TEXT NOT NULL, created_at REAL NOT NULL)""")
    db.execute("CREATE INDEX collapse_cells_key ON collapse_cells(policy, seed, generation, id)")
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER collapse_cells_no_{op.lower()} BEFORE {op} ON collapse_cells "
            "BEGIN SELECT RAISE(ABORT, 'collapse_cells is append-only'); END"
        )


def _m004_lineage(db: sqlite3.Connection) -> None:
    # The lineage graph, one row per experiment: the experiment it descends from (for a
    # proposal, the incumbent it was made on; for a change re-applied onto a newer
    # incumbent, the experiment whose change it carries) and the incumbent it was merged onto.
    db.execute("""CREATE TABLE lineage (
        experiment_id INTEGER PRIMARY KEY REFERENCES experiments(id),
        parent INTEGER REFERENCES experiments(id), merged_onto INTEGER REFERENCES experiments(id),
        created_at REAL NOT NULL)""")
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER lineage_no_{op.lower()} BEFORE {op} ON lineage "
            "BEGIN SELECT RAISE(ABORT, 'lineage is append-only'); END"
        )


def _m005_settings(db: sqlite3.Connection) -> None:
    # The key-value table was called `meta`, a word rsilab also used for other things.
    db.execute("ALTER TABLE meta RENAME TO settings")


def _m006_proposal_cost(db: sqlite3.Connection) -> None:
    # What thinking of a proposal cost, one row per proposal of a proposer that says (the
    # LLM proposer): wall time, tokens, answers asked (1 = first try) and the outcome
    # ("first try", "after repair", "never"). experiment_id is NULL for a proposal that got
    # no experiment (a duplicate, or one interrupted by a stop).
    db.execute("""CREATE TABLE proposal_costs (
        id INTEGER PRIMARY KEY, experiment_id INTEGER REFERENCES experiments(id),
        proposer TEXT NOT NULL, seconds REAL NOT NULL, tokens_in INTEGER NOT NULL,
        tokens_out INTEGER NOT NULL, rounds INTEGER NOT NULL, outcome TEXT NOT NULL,
        mode TEXT NOT NULL, created_at REAL NOT NULL)""")
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER proposal_costs_no_{op.lower()} BEFORE {op} ON proposal_costs "
            "BEGIN SELECT RAISE(ABORT, 'proposal_costs is append-only'); END"
        )


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_append_only", _m002_append_only),
    ("003_collapse_cells", _m003_collapse_cells),
    ("004_lineage", _m004_lineage),
    ("005_settings", _m005_settings),
    ("006_proposal_cost", _m006_proposal_cost),
]


# -- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment with its latest decision folded in (`status` is "running" without one)."""

    id: int
    parent: str | None
    commit: str
    proposer: str
    description: str
    diff: str
    kind: str
    knobs: dict[str, Any]
    meta: dict[str, Any]
    worktree: str
    started_at: float  # unix seconds
    status: str = RUNNING  # latest verdict, or "running"
    metric: float | None = None  # the mean the latest decision is based on
    decided_at: float | None = None
    reason: str = ""
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None

    @property
    def decided(self) -> bool:
        """True when the latest decision is final (not "running", not "more")."""
        return self.status not in (RUNNING, Verdict.MORE)


@dataclass(frozen=True)
class Run:
    """One stored run: every `RunResult` field plus where it belongs."""

    id: int
    experiment_id: int
    kind: str  # "trial" | "recheck"
    created_at: float
    status: Status
    seed: int
    metric: float | None
    reason: str
    summary: dict[str, float]
    evaluation: dict[str, Any]
    train_seconds: float
    eval_seconds: float
    log_path: str
    isolation: str
    log_tail: str

    @property
    def result(self) -> RunResult:
        return RunResult(**{f.name: getattr(self, f.name) for f in fields(RunResult)})

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def peak_memory_gb(self) -> float:
        return self.result.peak_memory_gb


@dataclass(frozen=True)
class DecisionRow:
    """One stored decision; an experiment may collect several (the latest one counts)."""

    id: int
    experiment_id: int
    verdict: str
    reason: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    metric: float | None
    source: str
    created_at: float


@dataclass(frozen=True)
class Lineage:
    """One experiment's place in the lineage graph (see `_m004_lineage`)."""

    experiment_id: int
    parent: int | None  # the experiment it descends from (None: the baseline)
    merged_onto: int | None  # the incumbent a re-applied change was merged onto


@dataclass(frozen=True)
class Event:
    id: int
    created_at: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    source: str = "supervisor"


# -- the ledger ---------------------------------------------------------------------------


class Ledger:
    """The SQLite ledger of one workspace. Safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() blocks
        # isolation_level=None: no implicit transactions; we BEGIN/COMMIT ourselves.
        with _storage_errors(self.path):
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._use_wal()
            self._db.execute("PRAGMA synchronous = FULL")  # a commit is on disk when it returns
            self._db.execute("PRAGMA foreign_keys = ON")
            # A damaged page must stop everything at once, not surface as a wrong history
            # later. quick_check reads every page: about 2 ms per MB of ledger.
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                self._db.close()
                detail = " ".join(
                    " ".join(problems).replace("*** in database main ***", "").split()
                )
                raise _corrupt(self.path, detail)  # one line: sqlite's report spans several
            self._migrate()

    def _use_wal(self) -> None:
        """Switch a new ledger to WAL. Two processes opening a new ledger at once (the
        supervisor creating it, `rsilab status` or the dashboard reading it) both try; SQLite
        then fails one of them at once with "database is locked" instead of waiting (its
        deadlock avoidance skips the busy handler), so that one retries until the other is done."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF not in _SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)  # a back-off between attempts, the other switch takes ~1 ms

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _applied(self) -> set[str]:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
        if self._db.execute(q).fetchone() is None:
            return set()
        return {r[0] for r in self._db.execute("SELECT name FROM _migrations")}

    def _migrate(self) -> None:
        # Read first: a reader opening a migrated ledger never waits for the writer's lock.
        if {name for name, _ in MIGRATIONS} <= self._applied():
            return
        with self.transaction():  # BEGIN IMMEDIATE: one process migrates, others wait
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            applied = self._applied()
            for name, migrate in MIGRATIONS:
                if name not in applied:
                    migrate(self._db)
                    self._db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them are committed, or none if the block raises.

        Blocks nest (an inner block is a savepoint); the lock keeps other threads out.
        """
        with self._lock:
            depth = self._depth
            self._db.execute(f"SAVEPOINT sp{depth}" if depth else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
                self._db.execute(f"RELEASE sp{depth}" if depth else "COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    # After a failed write (disk full) the rollback may fail too; the
                    # error worth reporting is the first one.
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute(f"ROLLBACK TO sp{depth}" if depth else "ROLLBACK")
                        if depth:
                            self._db.execute(f"RELEASE sp{depth}")
                if isinstance(exc, sqlite3.Error) and (err := storage_error(self.path, exc)):
                    raise err from exc
                raise
            finally:
                self._depth = depth

    def _insert(self, table: str, **values: Any) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        with self.transaction():
            cur = self._db.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(values.values())
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    # -- writes ----------------------------------------------------------------------------

    def set_setting(self, key: str, value: Any) -> None:
        """Set one of the workspace's settings (a JSON value), replacing what was there."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, _dumps(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        """One of the workspace's settings, or `default` when it was never set."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def add_experiment(
        self, *, parent: str | None, commit: str, proposer: str, description: str, diff: str,
        kind: str = "candidate", knobs: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None, worktree: str = "",
    ) -> int:  # fmt: skip
        """Record a new experiment (started now); returns its id (1, 2, ...)."""
        _check(kind, EXPERIMENT_KINDS, "experiment kind")
        return self._insert(
            "experiments", parent=parent, commit_sha=commit, proposer=proposer,
            description=description, diff=diff, kind=kind, knobs=_dumps(dict(knobs or {})),
            meta=_dumps(dict(meta or {})), worktree=worktree, started_at=time.time(),
        )  # fmt: skip

    def add_run(self, experiment_id: int, result: RunResult, *, kind: str = "trial") -> int:
        """Record one run of an experiment; returns the run id."""
        _check(kind, RUN_KINDS, "run kind")
        return self._insert(
            "runs", experiment_id=experiment_id, kind=kind, status=Status(result.status).value,
            seed=result.seed, metric=result.metric, reason=result.reason,
            summary=_dumps(result.summary), evaluation=_dumps(result.evaluation),
            train_seconds=result.train_seconds, eval_seconds=result.eval_seconds,
            log_path=result.log_path, isolation=result.isolation, log_tail=result.log_tail,
            created_at=time.time(),
        )  # fmt: skip

    def add_decision(
        self, experiment_id: int, *, verdict: str, reason: str, effect: float | None = None,
        ci_low: float | None = None, ci_high: float | None = None,
        p_value: float | None = None, metric: float | None = None, source: str = "judge",
    ) -> None:  # fmt: skip
        """Record a decision; the latest one is the experiment's status."""
        self._insert(
            "decisions", experiment_id=experiment_id, verdict=Verdict(verdict).value,
            reason=reason, effect=effect, ci_low=ci_low, ci_high=ci_high, p_value=p_value,
            metric=metric, source=source, created_at=time.time(),
        )  # fmt: skip

    def add_event(
        self, kind: str, message: str, *, data: Mapping[str, Any] | None = None,
        source: str = "supervisor",
    ) -> int:  # fmt: skip
        """Record an event; returns its id (increasing, so readers can ask for newer ones)."""
        return self._insert(
            "events", kind=kind, message=message, data=_dumps(dict(data or {})),
            source=source, created_at=time.time(),
        )  # fmt: skip

    def add_lineage(
        self, experiment_id: int, *, parent: int | None, merged_onto: int | None = None
    ) -> None:
        """Record where an experiment sits in the lineage graph (once per experiment)."""
        self._insert(
            "lineage",
            experiment_id=experiment_id,
            parent=parent,
            merged_onto=merged_onto,
            created_at=time.time(),
        )

    def add_cost(self, experiment_id: int | None, kind: str, amount: float, unit: str) -> None:
        """Record a cost, e.g. ("compute", 63.2, "s"), ("tokens_in", 1200, "tokens")."""
        self._insert(
            "costs", experiment_id=experiment_id, kind=kind, amount=float(amount), unit=unit,
            created_at=time.time(),
        )  # fmt: skip

    def add_proposal_cost(
        self, experiment_id: int | None, proposer: str, stats: Mapping[str, Any]
    ) -> None:
        """Record what thinking of one proposal cost (`stats`: seconds, tokens_in,
        tokens_out, rounds, outcome, mode; see the LLM proposer's `meta["proposal"]`)."""
        self._insert(
            "proposal_costs", experiment_id=experiment_id, proposer=proposer,
            seconds=float(stats.get("seconds") or 0.0),
            tokens_in=int(stats.get("tokens_in") or 0),
            tokens_out=int(stats.get("tokens_out") or 0),
            rounds=int(stats.get("rounds") or 0), outcome=str(stats.get("outcome") or ""),
            mode=str(stats.get("mode") or ""), created_at=time.time(),
        )  # fmt: skip

    def proposal_costs(self, experiment_id: int | None = None) -> list[dict[str, Any]]:
        """Proposal cost rows in id order, of one experiment or of all (dicts of the columns)."""
        where, params = _where(experiment_id)
        rows = self._select(f"SELECT * FROM proposal_costs{where} ORDER BY id", params)
        return [dict(r) for r in rows]

    # -- queries ---------------------------------------------------------------------------

    def _select(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock, _storage_errors(self.path):
            return self._db.execute(sql, params).fetchall()

    def experiments(self) -> list[Experiment]:
        """Every experiment in id order, each with its latest decision."""
        return [_experiment(r) for r in self._select(_EXPERIMENTS_SQL + " ORDER BY e.id")]

    def experiment(self, experiment_id: int) -> Experiment:
        rows = self._select(_EXPERIMENTS_SQL + " WHERE e.id = ?", (experiment_id,))
        if not rows:
            raise RsilabError(f"{self.path}: no experiment {experiment_id}")
        return _experiment(rows[0])

    def runs(self, experiment_id: int | None = None) -> list[Run]:
        """Runs in id order, of one experiment or of all."""
        where, params = _where(experiment_id)
        return [_run(r) for r in self._select(f"SELECT * FROM runs{where} ORDER BY id", params)]

    def decisions(self, experiment_id: int | None = None) -> list[DecisionRow]:
        """Decisions in id order (the full history, not just the latest)."""
        where, params = _where(experiment_id)
        rows = self._select(f"SELECT * FROM decisions{where} ORDER BY id", params)
        return [DecisionRow(**dict(r)) for r in rows]

    def undecided(self) -> list[Experiment]:
        """Experiments without a final decision (running when the supervisor died)."""
        return [e for e in self.experiments() if not e.decided]

    def incumbent(self) -> Experiment | None:
        """The experiment most recently kept whose latest decision is still "keep"."""
        rows = self._select(
            _EXPERIMENTS_SQL + " WHERE d.verdict = ? ORDER BY d.id DESC LIMIT 1",
            (Verdict.KEEP.value,),
        )
        return _experiment(rows[0]) if rows else None

    def incumbent_values(self) -> list[float]:
        """Metric values of the incumbent's ok runs (trials and rechecks), in run order."""
        inc = self.incumbent()
        if inc is None:
            return []
        return [r.metric for r in self.runs(inc.id) if r.ok and r.metric is not None]

    def events(self, limit: int | None = None) -> list[Event]:
        """Events oldest first; with `limit`, only the latest `limit` of them."""
        sql = "SELECT * FROM events ORDER BY id DESC"
        rows = self._select(sql + " LIMIT ?", (limit,)) if limit is not None else self._select(sql)
        return [Event(**(dict(r) | {"data": json.loads(r["data"])})) for r in reversed(rows)]

    def events_after(self, after_id: int = 0, kind: str | None = None) -> list[Event]:
        """Events with an id above `after_id` (of one kind, or all), oldest first."""
        sql = "SELECT * FROM events WHERE id > ?"
        params: tuple[Any, ...] = (after_id,)
        if kind is not None:
            sql, params = sql + " AND kind = ?", (after_id, kind)
        rows = self._select(sql + " ORDER BY id", params)
        return [Event(**(dict(r) | {"data": json.loads(r["data"])})) for r in rows]

    def add_collapse_cell(
        self, *, policy: str, seed: int, generation: int, status: str, val_bpb: float | None,
        metrics: Mapping[str, Any], data: Mapping[str, Any], samples: Mapping[str, Any],
        run: Mapping[str, Any],
    ) -> int:  # fmt: skip
        """Record one finished cell of a collapse study (one row, one transaction)."""
        return self._insert(
            "collapse_cells", policy=policy, seed=seed, generation=generation, status=status,
            val_bpb=val_bpb, metrics=_dumps(dict(metrics)), data=_dumps(dict(data)),
            samples=_dumps(dict(samples)), run=_dumps(dict(run)), created_at=time.time(),
        )  # fmt: skip

    def collapse_cells(self) -> list[dict[str, Any]]:
        """Every recorded collapse cell in id order (a retried cell appears once per try)."""
        rows = self._select("SELECT * FROM collapse_cells ORDER BY id")
        return [
            dict(r) | {k: json.loads(r[k]) for k in ("metrics", "data", "samples", "run")}
            for r in rows
        ]

    def lineage(self) -> list[Lineage]:
        """The lineage graph in experiment order (experiments from before it existed lack a row)."""
        rows = self._select(
            "SELECT experiment_id, parent, merged_onto FROM lineage ORDER BY experiment_id"
        )
        return [Lineage(**dict(r)) for r in rows]

    def costs(self, experiment_id: int | None = None) -> dict[str, float]:
        """Cost totals by kind, of the whole workspace or of one experiment."""
        where, params = _where(experiment_id)
        sql = f"SELECT kind, SUM(amount) FROM costs{where} GROUP BY kind ORDER BY kind"
        rows = self._select(sql, params)
        return {r[0]: float(r[1]) for r in rows}

    # -- exports ---------------------------------------------------------------------------

    def export_tsv(self, path: Path, metric_name: str = "val_bpb") -> None:
        """Write results.tsv in autoresearch's format: one row per decided experiment."""
        memory: dict[int, float] = {}
        for r in self.runs():
            memory[r.experiment_id] = max(memory.get(r.experiment_id, 0.0), r.peak_memory_gb)
        lines = [f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription"]
        for e in self.experiments():
            if not e.decided:
                continue
            value = e.metric if e.status != Verdict.CRASH else None
            value = value if value is not None and math.isfinite(value) else 0.0
            desc = " ".join(e.description.replace("\t", " ").splitlines())
            mem = memory.get(e.id, 0.0)
            lines.append(f"{e.commit[:7]}\t{value:.6f}\t{mem:.1f}\t{e.status}\t{desc}")
        atomic_write(path, "\n".join(lines) + "\n")

    def export_json(self, path: Path) -> None:
        """Write everything: settings, experiments with their runs and decisions, events, costs."""
        runs, decisions = self.runs(), self.decisions()
        settings = {
            r[0]: json.loads(r[1]) for r in self._select("SELECT * FROM settings ORDER BY key")
        }
        dump = {
            "settings": settings,
            "experiments": [
                asdict(e)
                | {"runs": [asdict(r) for r in runs if r.experiment_id == e.id]}
                | {"decisions": [asdict(d) for d in decisions if d.experiment_id == e.id]}
                for e in self.experiments()
            ],
            "events": [asdict(ev) for ev in self.events()],
            "lineage": [asdict(row) for row in self.lineage()],
            "costs": self.costs(),
        }
        text = json.dumps(json_safe(dump), indent=2, allow_nan=False)
        atomic_write(path, text + "\n")

    def export_csv(self, path: Path) -> None:
        """Write a flat table: one row per run, experiment columns repeated (an experiment
        without runs gets one row). Diffs and log tails are left out: the JSON has them."""
        skip = {"diff", "log_tail", "experiment_id"}
        exp_cols = [f.name for f in fields(Experiment) if f.name not in skip]
        run_cols = [f"run_{f.name}" for f in fields(Run) if f.name not in skip]
        buf = io.StringIO()
        out = csv.DictWriter(buf, [*exp_cols, *run_cols, "peak_memory_gb"], lineterminator="\n")
        out.writeheader()
        runs = self.runs()
        for e in self.experiments():
            head = _flat(asdict(e), "", skip)
            mine = [r for r in runs if r.experiment_id == e.id]
            for r in mine:
                out.writerow(
                    head | _flat(asdict(r), "run_", skip) | {"peak_memory_gb": r.peak_memory_gb}
                )
            if not mine:
                out.writerow(head)
        atomic_write(path, buf.getvalue())


# -- helpers ------------------------------------------------------------------------------

_EXPERIMENTS_SQL = """
SELECT e.*, d.verdict, d.metric AS d_metric, d.created_at AS decided_at, d.reason, d.effect,
       d.ci_low, d.ci_high, d.p_value
FROM experiments e
LEFT JOIN decisions d ON d.id = (SELECT MAX(id) FROM decisions WHERE experiment_id = e.id)
"""


def _experiment(r: sqlite3.Row) -> Experiment:
    return Experiment(
        id=r["id"], parent=r["parent"], commit=r["commit_sha"], proposer=r["proposer"],
        description=r["description"], diff=r["diff"], kind=r["kind"],
        knobs=json.loads(r["knobs"]), meta=json.loads(r["meta"]), worktree=r["worktree"],
        started_at=r["started_at"], status=r["verdict"] or RUNNING, metric=r["d_metric"],
        decided_at=r["decided_at"], reason=r["reason"] or "", effect=r["effect"],
        ci_low=r["ci_low"], ci_high=r["ci_high"], p_value=r["p_value"],
    )  # fmt: skip


def _run(r: sqlite3.Row) -> Run:
    loaded = {"summary": json.loads(r["summary"]), "evaluation": json.loads(r["evaluation"])}
    return Run(**(dict(r) | loaded | {"status": Status(r["status"])}))


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes (sqlite3.h)
_SQLITE_STORAGE = {3, 8, 10, 13, 14}  # PERM, READONLY, IOERR, FULL, CANTOPEN
_SQLITE_BUSY = {5, 6}  # BUSY, LOCKED


def _corrupt(path: Path, detail: str) -> RsilabError:
    recovered = path.with_name(path.stem + "-recovered.db")
    return RsilabError(
        f"{path}: the ledger is corrupt ({detail}); stop rsilab, keep a copy of the file, then "
        f"rebuild it from what is readable: sqlite3 {path} .recover | sqlite3 {recovered} "
        f"&& mv {recovered} {path} (the last results.json export has the history too)"
    )


def storage_error(path: Path, e: sqlite3.Error) -> RsilabError | None:
    """A one-line RsilabError for a ledger that cannot be read or written (corrupt, disk
    full, unreadable, locked), or None for any other error (a bug: it stays loud)."""
    code = getattr(e, "sqlite_errorcode", -1) & 0xFF  # the primary code of an extended one
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _corrupt(path, str(e))
    if code in _SQLITE_STORAGE:
        return RsilabError(
            f"{path}: cannot use the ledger ({e}): free disk space or fix the "
            "file's permissions, then `rsilab run` resumes where it stopped"
        )
    if code in _SQLITE_BUSY:
        return RsilabError(
            f"{path}: the ledger stayed locked by another process for "
            f"{BUSY_TIMEOUT_S:.0f} s ({e}); is another rsilab writing to it?"
        )
    return None


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        err = storage_error(path, e)
        if err is None:
            raise
        raise err from e


def _where(experiment_id: int | None) -> tuple[str, tuple[Any, ...]]:
    if experiment_id is None:
        return "", ()
    return " WHERE experiment_id = ?", (experiment_id,)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _flat(row: dict[str, Any], prefix: str, skip: set[str]) -> dict[str, Any]:
    """A row for CSV: prefixed keys, dicts as JSON."""
    return {
        prefix + k: _dumps(v) if isinstance(v, dict) else v for k, v in row.items() if k not in skip
    }

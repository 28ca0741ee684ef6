"""The collapse study. Owns: the generation loop, its resume, and its ledger records.

One chain per (policy, seed): generation 0 trains the task's train.py on the real corpus R
(through a `Bench`, sealed evaluation on the real hash-locked val.bin), its model is
sampled into S_1 (`python -m rsilab.harness.sample`, a separate process), generation 1
trains on the policy's mix (`mixes.compose`), and so on. Generation 0 and S_1 do not depend
on the policy, so they are shared by every policy of a seed (stored under policy "real").
A cell is one (policy, seed, generation): train, evaluate, sample len(R) bytes from the new
model, measure those samples (`metrics.sample_metrics`), record one ledger row.

Resume: a cell is finished when the ledger holds an "ok" row for it; that row is written
in one transaction after every file of the cell is in place (datasets and samples are
written atomically), so `kill -9` at any moment leaves either a finished cell or nothing:
a rerun deletes the unfinished cell's folder and does it again, and never redoes a finished
one. A failed cell (a crash, a refused model, a sampler failure) is recorded too, ends its
chain for this invocation, and is retried by the next one.

Layout of DIR_OUT:

    .rsilab/ledger.db     collapse_cells rows, setting "collapse" (the study's parameters), events, costs
    .rsilab/task/         the task's files, copied once: every generation trains this code
    real/                 R: train.bin + manifest.json (real: source, sha256, how it was cut)
    cells/<policy>/s<seed>/g<gen>/
        data/             the generation's training set (train.bin + manifest, provenance)
        run/              the run folder (train.log, artifact/model.pt2, eval.log, metrics.json)
        samples.bin       len(R) bytes sampled from this generation's model

Training and sampling are injected (`Trainer`, `Sampler`) so tests can run the loop
without torch; the defaults are the runner and the frozen sampler process.

Not covered: running cells in parallel (one training at a time: CPU timings are noisy
enough), and the research loop's own guard (rsilab.provenance, applied by the runner).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab import provenance
from rsilab.config import TaskSpec, load_task, resolve_task_dir
from rsilab.errors import ConfigError, DataError
from rsilab.fsio import read_regular, sha256_bytes, sha256_file
from rsilab.notify import Notify
from rsilab.record.ledger import Ledger
from rsilab.results import RunResult
from rsilab.run import process
from rsilab.run.bench import Bench
from rsilab.run.executors.base import Executor
from rsilab.studies.collapse.metrics import Reference, sample_metrics
from rsilab.studies.collapse.mixes import Part, Policy, compose, parse_policies, real_slice
from rsilab.workspace import git_process

STATE_DIR = ".rsilab"
SHARED = "real"  # the policy label of generation 0, shared by every policy
OK = "ok"
SAMPLER = "rsilab.harness.sample"
# Default size of R and of each synthetic corpus. The exported program has a fixed (B, T)
# shape, so sampling needs one full forward pass per B bytes. Measured for the cpu preset
# (B=16, T=128, 0.44M parameters) on one thread of a shared 2-vCPU VM: 195 bytes/s at load 3
# (68 ms per forward), 64-144 bytes/s at load 6-12, start-up included. So 16 KiB takes one to
# a few minutes; the whole Shakespeare split (4.5 MB) would take hours per generation.
DEFAULT_SIZE = {"cpu": 16 * 1024, "gpu": 1024 * 1024}
# Settings that must not change between invocations on one DIR_OUT (results would mix).
COMPARABLE = (
    "code_sha256",
    "overrides",
    "preset",
    "size",
    "temperature",
    "real_sha256",
    "val_sha256",
)


@dataclass(frozen=True)
class Cell:
    policy: str  # a policy label, or SHARED for generation 0
    seed: int
    generation: int

    def folder(self, out: Path) -> Path:
        return (
            out / "cells" / self.policy.replace(":", "_") / f"s{self.seed}" / f"g{self.generation}"
        )

    def __str__(self) -> str:
        return f"g{self.generation} {self.policy} seed {self.seed}"


@dataclass(frozen=True)
class SampleResult:
    ok: bool
    reason: str = ""
    seconds: float = 0.0


# (train.bin of the generation, run folder, harness seed) -> the run; the artifact must be
# at <run folder>/artifact/model.pt2.
Trainer = Callable[[Path, Path, int], RunResult]
# (artifact folder, output file, bytes, temperature, seed) -> whether it wrote the file.
Sampler = Callable[[Path, Path, int, float, int], SampleResult]


@dataclass(frozen=True)
class Settings:
    """What a study runs. `None` in `open_study` means: as recorded, else the default."""

    task_dir: Path
    overrides: list[tuple[str, Any]]
    policies: list[Policy]
    seeds: list[int]
    generations: int  # synthetic generations: the study trains generations 0..N
    temperature: float
    size: int  # target bytes of R (and of every synthetic corpus); 0: the whole split
    preset: str


def derive_seed(purpose: str, seed: int, generation: int) -> int:
    """A seed per (purpose, study seed, generation); the same for every policy, so policies
    are compared under common random numbers."""
    digest = hashlib.sha256(f"rsilab-collapse:{purpose}:{seed}:{generation}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def tree_sha256(root: Path) -> str:
    """A hash of every file under `root` (names and contents), ignoring caches and state."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in (".git", STATE_DIR) or "__pycache__" in rel.parts:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def git_commit(root: Path) -> str | None:
    """HEAD of the git repository holding `root`, if any (the code's commit, for provenance)."""
    try:
        proc = git_process(root, "rev-parse", "HEAD", timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def parse_size(text: str | None) -> int | None:
    """`16k`, `1m`, `20000` or `full` (0: the whole split); None stays None."""
    if text is None:
        return None
    t = text.strip().lower()
    if t == "full":
        return 0
    scale = {"k": 1024, "m": 1024**2}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise ConfigError(f"--size {text!r}: give bytes (e.g. 16k, 20000) or 'full'") from None
    if value < 0:
        raise ConfigError(f"--size {text!r} must be >= 0")
    return value


def bench_trainer(bench: Bench, workdir: Path) -> Trainer:
    """Train `workdir` (the task's train.py) on `bench`; this task may train on generated
    data (the study's point), and every run records so in its data provenance."""
    allowed = bench.derive(task=dataclasses.replace(bench.task, allow_generated_data=True))

    def train(train_data: Path, run_dir: Path, seed: int) -> RunResult:
        return allowed.derive(train_data=train_data).run(
            workdir, run_dir, seed, label=f"collapse {run_dir.name}"
        )

    return train


def process_sampler(threads: int = 1, min_rate: float = 20.0) -> Sampler:
    """Sample with the frozen sampler in its own process (killed with us, even by kill -9);
    the time limit assumes at least `min_rate` bytes/s."""

    def sample(
        artifact: Path, out: Path, n_bytes: int, temperature: float, seed: int
    ) -> SampleResult:
        cmd = [
            sys.executable,
            "-m",
            SAMPLER,
            "--artifact",
            str(artifact),
            "--out",
            str(out),
            "--bytes",
            str(n_bytes),
            "--temperature",
            repr(temperature),
            "--seed",
            str(seed),
            "--threads",
            str(threads),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        log = out.with_name("sample.log")
        limit = 120 + n_bytes / min_rate
        got = process.run_process(cmd, cwd=out.parent, env=env, log=log, timeout=limit)
        if got.timed_out:
            return SampleResult(False, f"sampler timed out after {limit:.0f} s", got.seconds)
        if got.returncode != 0:
            last = process.tail(log, 1).strip() or f"exit code {got.returncode}"
            return SampleResult(False, f"sampler failed: {last[:200]}", got.seconds)
        return SampleResult(True, seconds=got.seconds)

    return sample


@dataclass
class Study:
    """One collapse study in `out`. Build it with `open_study`; `run()` does what is left."""

    out: Path
    settings: Settings
    task: TaskSpec
    real: Part  # R, with its provenance
    real_path: Path  # R's train.bin (generation 0 trains on it)
    val_path: Path  # the task's real, hash-locked validation split
    reference: Reference
    code: dict[str, Any]  # code_sha256 and commit of the task code every generation trains
    trainer: Trainer
    sampler: Sampler
    notify: Notify = print
    _rows: dict[Cell, dict[str, Any]] = field(default_factory=dict)

    @property
    def ledger_path(self) -> Path:
        return self.out / STATE_DIR / "ledger.db"

    def cells(self) -> list[Cell]:
        """Every cell of the plan, generation by generation, so partial results are level."""
        plan = []
        for g in range(self.settings.generations + 1):
            for seed in self.settings.seeds:
                labels = [SHARED] if g == 0 else [p.label for p in self.settings.policies]
                plan += [Cell(label, seed, g) for label in labels]
        return plan

    def run(self) -> list[dict[str, Any]]:
        """Do every unfinished cell of the plan; returns every recorded cell row."""
        with open(self.out / STATE_DIR / "lock", "w") as lock, Ledger(self.ledger_path) as ledger:
            try:  # the kernel drops the lock when we die, even by kill -9
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another `rsilab collapse` is running on {self.out}") from None
            self._load(ledger)
            plan = self.cells()
            todo = [c for c in plan if c not in self._rows]
            ledger.add_event(
                "collapse",
                f"{len(plan) - len(todo)} of {len(plan)} cells finished; running {len(todo)}",
                source="collapse",
            )
            self.notify(
                f"collapse: {len(plan) - len(todo)} of {len(plan)} cells already done, {len(todo)} to run"
            )
            broken: set[tuple[str, int]] = set()
            for cell in todo:
                if (cell.policy, cell.seed) in broken or (SHARED, cell.seed) in broken:
                    continue
                if not self._cell(ledger, cell):
                    broken.add((cell.policy, cell.seed))
            return ledger.collapse_cells()

    def reference_rows(self) -> dict[str, dict[str, float]]:
        """The sample-side metrics of real text: R, and a same-size slice of the real
        validation split (read here for metrics only; no model trains on it)."""
        val, _ = real_slice(self.val_path.read_bytes(), len(self.real.data))
        return {
            "real R": sample_metrics(self.real.data, self.reference),
            "real val": sample_metrics(val, self.reference),
        }

    def _load(self, ledger: Ledger) -> None:
        self._rows = {}
        for row in ledger.collapse_cells():  # the latest ok row of each cell counts
            if row["status"] == OK:
                self._rows[Cell(row["policy"], row["seed"], row["generation"])] = row

    def _source(self, cell: Cell, j: int) -> Cell:
        """The cell whose model produced S_j for `cell`'s chain."""
        return Cell(SHARED, cell.seed, 0) if j == 1 else Cell(cell.policy, cell.seed, j - 1)

    def _synthetic(self, cell: Cell, j: int) -> Part:
        src = self._source(cell, j)
        row = self._rows.get(src)
        if row is None:
            raise RuntimeError(f"{cell} needs S_{j} from {src}, which is not finished")
        s = row["samples"]
        path = self.out / s["path"]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(
                f"{path} ({src}'s samples) is unreadable: {e}; delete {self.out} to start over"
            ) from e
        if sha256_bytes(data) != s["sha256"]:
            raise DataError(
                f"{path} does not match the sha256 in the ledger; delete {self.out} to start over"
            )
        meta = {
            "kind": "generated",
            "generation": j,
            "model": s["model"],
            "temperature": s["temperature"],
            "seed": s["seed"],
            "sampler": SAMPLER,
        }
        return Part(data, meta)

    def _cell(self, ledger: Ledger, cell: Cell) -> bool:
        """Do one cell; record it; True when it finished ok."""
        t0 = time.monotonic()
        folder = cell.folder(self.out)
        shutil.rmtree(folder, ignore_errors=True)  # a killed attempt's files are never reused
        folder.mkdir(parents=True)
        g = cell.generation
        if g == 0:
            train_path = self.real_path
        else:
            policy = next(p for p in self.settings.policies if p.label == cell.policy)
            parts = compose(
                policy, g, self.real, [self._synthetic(cell, j) for j in range(1, g + 1)]
            )
            train_path = provenance.write_dataset(
                folder / "data",
                b"".join(p.data for p in parts),
                [p.segment() for p in parts],
                dataset_id=f"collapse-{cell.policy}-s{cell.seed}-g{g}",
                source={
                    "kind": "rsilab-collapse",
                    "policy": cell.policy,
                    "seed": cell.seed,
                    "generation": g,
                },
            )
        self.notify(f"{cell}: training on {_describe(train_path)}")
        run = self.trainer(train_path, folder / "run", derive_seed("train", cell.seed, g))
        data = {
            "train": _light(provenance.record(train_path)),
            "val": _light(provenance.record(self.val_path)),
        }
        if not run.ok:
            return self._record(ledger, cell, str(run.status), run, data, {}, {}, t0)
        model = folder / "run" / "artifact" / "model.pt2"
        samples = folder / "samples.bin"
        seed = derive_seed("sample", cell.seed, g)
        n = len(self.real.data)
        got = self.sampler(model.parent, samples, n, self.settings.temperature, seed)
        # Sampled in the sandbox: read without following a link it may have left (to the
        # validation split, say, which would become the next generation's training data).
        body = read_regular(samples, limit=n) if got.ok else None
        if got.ok and (body is None or len(body) != n):
            size = "no regular file" if body is None else f"{len(body)} bytes"
            got = SampleResult(False, f"sampler wrote {size}, not {n} bytes")
        if not got.ok or body is None:
            run = dataclasses.replace(run, reason=got.reason)
            return self._record(ledger, cell, "sample-failed", run, data, {}, {}, t0)
        info = {
            "path": samples.relative_to(self.out).as_posix(),
            "sha256": sha256_bytes(body),
            "size": len(body),
            "temperature": self.settings.temperature,
            "seed": seed,
            "seconds": round(got.seconds, 3),
            "model": {
                "generation": g,
                "policy": cell.policy,
                "seed": cell.seed,
                "artifact_sha256": sha256_file(model),
                **self.code,
                "run": (folder / "run").relative_to(self.out).as_posix(),
                "trained_on_sha256": data["train"]["sha256"],
            },
        }
        return self._record(
            ledger, cell, OK, run, data, info, sample_metrics(body, self.reference), t0
        )

    def _record(
        self,
        ledger: Ledger,
        cell: Cell,
        status: str,
        run: RunResult,
        data: dict[str, Any],
        samples: dict[str, Any],
        metrics: dict[str, float],
        t0: float,
    ) -> bool:
        run_row = dataclasses.asdict(run)
        if status == OK:
            run_row["log_tail"] = ""  # kept for failures only: the log is in the run folder
        with ledger.transaction():
            ledger.add_collapse_cell(
                policy=cell.policy,
                seed=cell.seed,
                generation=cell.generation,
                status=status,
                val_bpb=run.metric if status == OK else None,
                metrics=metrics,
                data=data,
                samples=samples,
                run=run_row,
            )
            ledger.add_cost(None, "compute", time.monotonic() - t0, "s")
        if status != OK:
            ledger.add_event("collapse", f"{cell}: {status}: {run.reason}", source="collapse")
            self.notify(f"{cell}: {status}: {run.reason}")
            return False
        self._rows[cell] = {"samples": samples}
        self.notify(
            f"{cell}: val_bpb {run.metric:.4f}  H_word {metrics['word_entropy']:.3f}  "
            f"tail_types {metrics['tail_types']:.3f}  rep8 {metrics['rep8']:.3f}  "
            f"({time.monotonic() - t0:.0f} s)"
        )
        return True


def _describe(path: Path) -> str:
    rec = provenance.record(path)
    return f"{rec['size']:,} bytes ({rec.get('real_bytes', 0):,} real, {rec.get('generated_bytes', 0):,} generated)"


def _light(rec: dict[str, Any]) -> dict[str, Any]:
    """A data record for the ledger: the file, its hash and kind, and its parts in order."""
    keep = (
        "path",
        "sha256",
        "size",
        "kind",
        "locked",
        "dataset_id",
        "real_bytes",
        "generated_bytes",
        "problem",
    )
    out = {k: rec[k] for k in keep if k in rec}
    segments = rec.get("segments")
    if segments:
        out["parts"] = [
            {
                "kind": s["kind"],
                "size": s["size"],
                "sha256": s["sha256"],
                **({"generation": s["generation"]} if "generation" in s else {}),
            }
            for s in segments
        ]
    return out


def open_study(
    out: Path,
    *,
    task_name: str | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    policies: str | None = None,
    seeds: int | None = None,
    generations: int | None = None,
    temperature: float | None = None,
    size: int | None = None,
    preset: str | None = None,
    trainer: Trainer | None = None,
    sampler: Sampler | None = None,
    executor: Executor | None = None,
    notify: Notify = print,
) -> Study:
    """Set up (or reopen) the study in `out`. An option left as None takes the value recorded
    by an earlier invocation, else its default; settings that would make results
    incomparable (code, overrides, size, temperature, preset, data) must match the record.
    Without a `trainer`, runs execute on `executor` (None: one local slot; it holds nothing
    between runs, so nothing needs closing)."""
    from rsilab import harness
    from rsilab.data import prepare

    out = Path(out).resolve()
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with Ledger(state / "ledger.db") as ledger:
        recorded: dict[str, Any] = ledger.get_setting("collapse") or {}
    workdir = state / "task"
    if recorded and workdir.is_dir():
        source_dir = workdir if task_name is None else resolve_task_dir(task_name)
    else:
        source_dir = resolve_task_dir(task_name or "gpt")
    sets = list(overrides) or [tuple(o) for o in recorded.get("overrides", [])]
    task = load_task(source_dir, list(sets))
    if task.data == "none":
        raise ConfigError(
            f'task {task.name!r} has no byte-level data (data = "none"): nothing to collapse'
        )
    chosen_preset = preset or recorded.get("preset") or harness.preset()
    settings = Settings(
        task_dir=source_dir,
        overrides=[(str(k), v) for k, v in sets],
        policies=parse_policies(policies or recorded.get("policies") or "replace,accumulate"),
        seeds=[task.seed + i for i in range(seeds or recorded.get("seeds") or 3)],
        generations=generations if generations is not None else recorded.get("generations", 4),
        temperature=temperature if temperature is not None else recorded.get("temperature", 1.0),
        size=size
        if size is not None
        else recorded.get("size_option", DEFAULT_SIZE.get(chosen_preset, 0)),
        preset=chosen_preset,
    )
    if settings.generations < 0 or settings.temperature < 0 or not settings.seeds:
        raise ConfigError("--generations and --temperature must be >= 0 and --seeds >= 1")

    prepared = prepare(task.data)
    val_rec, refusal = provenance.check_val(prepared.val_path)
    if refusal:
        raise DataError(refusal)
    whole = prepared.train_path.read_bytes()
    body, how = real_slice(whole, settings.size or len(whole))
    if not body:
        raise ConfigError(f"--size 0 of {prepared.train_path}: the study needs some real bytes")
    real = Part(
        body,
        {
            "kind": "real",
            "origin": {
                "dataset_id": prepared.dataset_id,
                "file": "train.bin",
                "file_sha256": prepared.manifest["files"]["train.bin"]["sha256"],
                "source": prepared.manifest.get("source", {}),
                "slice": how,
            },
        },
    )
    real_path = out / "real" / "train.bin"
    rec = provenance.record(real_path) if real_path.is_file() else {}
    if (
        rec.get("sha256") != sha256_bytes(body)
        or rec.get("kind") != "real"
        or not rec.get("locked")
    ):
        real_path = provenance.write_dataset(
            out / "real",
            body,
            [real.segment()],
            dataset_id=f"{prepared.dataset_id}-slice-{len(body)}",
            source=prepared.manifest.get("source", {}),
        )

    if not workdir.is_dir():  # copied once, atomically: every generation trains this code
        # A folder renamed into place (fsio.atomic_write replaces one file, not a folder).
        tmp = Path(tempfile.mkdtemp(prefix=".task-", dir=state))
        shutil.copytree(
            source_dir,
            tmp / "task",
            ignore=shutil.ignore_patterns("__pycache__", ".rsilab", ".git"),
        )
        os.rename(tmp / "task", workdir)
        shutil.rmtree(tmp, ignore_errors=True)
    commit = recorded.get("commit") if source_dir == workdir else git_commit(source_dir)
    code = {"code_sha256": tree_sha256(workdir), "commit": commit}
    if tree_sha256(source_dir) != code["code_sha256"]:
        raise ConfigError(
            f"{source_dir} differs from the code this study trains ({workdir}); "
            "use a new DIR_OUT for other code"
        )
    current = {
        "task": task.name,
        "task_dir": str(source_dir),
        "code_sha256": code["code_sha256"],
        "commit": code["commit"],
        "overrides": [list(o) for o in settings.overrides],
        "preset": settings.preset,
        "size": len(body),
        "size_option": settings.size,
        "temperature": settings.temperature,
        "real_sha256": sha256_bytes(body),
        "val_sha256": val_rec["sha256"],
        "budget": task.budget,
        "policies": ",".join(p.label for p in settings.policies),
        "seeds": len(settings.seeds),
        "generations": settings.generations,
    }
    for key in COMPARABLE:
        if key in recorded and recorded[key] != current[key]:
            raise ConfigError(
                f"{key} = {current[key]!r} differs from this study's {recorded[key]!r}: results "
                f"would not be comparable; use a new DIR_OUT (or the same settings)"
            )
    with Ledger(state / "ledger.db") as ledger:
        ledger.set_setting("collapse", current)
    reference = Reference.of(body)
    return Study(
        out=out,
        settings=settings,
        task=task,
        real=real,
        real_path=real_path,
        val_path=prepared.val_path,
        reference=reference,
        code=code,
        trainer=trainer
        or bench_trainer(
            Bench(task, val_data=prepared.val_path, preset=settings.preset, executor=executor),
            workdir,
        ),
        sampler=sampler or process_sampler(task.threads),
        notify=notify,
    )


def finished(rows: list[dict[str, Any]]) -> dict[Cell, dict[str, Any]]:
    """The latest ok row of every cell."""
    return {Cell(r["policy"], r["seed"], r["generation"]): r for r in rows if r["status"] == OK}

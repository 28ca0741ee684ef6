"""Helpers for the collapse-study tests (tests/test_collapse.py and the second process of its
kill -9 test, which imports this module): a tiny Zipf-like corpus with rare words, a tiny
task, a fake trainer and a fake sampler that need no torch, and `make_study`, which opens a
study on them.

The fake "model" is a copy of its training bytes (val_bpb rises with the generated share of
them) and "sampling" draws random windows of it: a bootstrap, which loses rare words the way
a real model's samples do.
"""

from __future__ import annotations

import random
from pathlib import Path

from rsilab import provenance
from rsilab.results import RunResult, Status
from rsilab.studies.collapse import open_study
from rsilab.studies.collapse.study import SampleResult, Study

VOCAB = [
    "the",
    "king",
    "and",
    "queen",
    "of",
    "my",
    "lord",
    "sweet",
    "night",
    "thou",
    "art",
    "fair",
    "good",
    "sir",
    "come",
    "hence",
    "what",
    "say",
    "you",
    "to",
    "me",
]


def write_corpus(path: Path, lines: int = 1500, seed: int = 0) -> Path:
    """Zipf-like common words plus rare one-off words, so the rare tail is not empty."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(VOCAB))]
    out = []
    for i in range(lines):
        line = rng.choices(VOCAB, weights, k=rng.randint(4, 9))
        if i % 3 == 0:
            line.append(f"rare{'abcdefghij'[i % 10]}{'klmnopqrst'[(i // 10) % 10]}x")
        out.append(" ".join(line).capitalize() + ".")
    path.write_text("\n".join(out) + "\n")
    return path


def write_task(root: Path, corpus: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text("raise SystemExit('the fake trainer never runs this file')\n")
    (root / "rsilab.toml").write_text(
        f'name = "tiny"\neditable = ["train.py"]\ndata = "{corpus}"\nbudget = 1\n'
    )
    return root


class FakeTrainer:
    """Its model is a copy of the training bytes; val_bpb rises with the generated share."""

    def __init__(
        self, *, block_at: int | None = None, fifo: Path | None = None, fail: set[int] | None = None
    ) -> None:
        self.calls: list[tuple[Path, Path, int]] = []
        self.val: Path | None = None
        self.block_at, self.fifo = block_at, fifo
        self.fail = fail or set()  # call numbers (1, 2, ...) that crash

    def __call__(self, train: Path, run_dir: Path, seed: int) -> RunResult:
        self.calls.append((train, run_dir, seed))
        if self.block_at == len(self.calls):
            (run_dir.parent / "half-done").write_text("a killed attempt left this")
            print("BLOCKED", flush=True)
            assert self.fifo is not None
            self.fifo.read_text()  # blocks: nobody ever opens the other end; we get kill -9
        if len(self.calls) in self.fail:
            return RunResult(Status.CRASH, seed, reason="crash: injected", log_tail="boom")
        art = run_dir / "artifact"
        art.mkdir(parents=True)
        (art / "model.pt2").write_bytes(train.read_bytes())
        data, refusal = provenance.check_run_data(train, self.val, allow_generated=True)
        assert refusal is None, refusal
        rec = data["train"]
        return RunResult(
            Status.OK,
            seed,
            metric=1.0 + rec["generated_bytes"] / rec["size"],
            evaluation={"data": data},
        )


def fake_sampler(artifact: Path, out: Path, n: int, temperature: float, seed: int) -> SampleResult:
    """Random 40-byte windows of the 'model' (its training bytes), n bytes in all."""
    model = (artifact / "model.pt2").read_bytes()
    rng = random.Random(seed)
    chunks, size = [], 0
    while size < n:
        start = rng.randrange(0, len(model) - 40)
        chunks.append(model[start : start + 40])
        size += 40
    out.write_bytes(b"".join(chunks)[:n])
    return SampleResult(True, seconds=0.0)


def make_study(tmp_path: Path, trainer: FakeTrainer | None = None, **options: object) -> Study:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    task = tmp_path / "task"
    if not task.exists():
        write_task(task, corpus)
    settings = {
        "policies": "replace,accumulate,mix:0.5",
        "seeds": 2,
        "generations": 2,
        "size": 4096,
        "preset": "cpu",
        **options,
    }
    study = open_study(
        tmp_path / "out",
        task_name=str(task),
        trainer=trainer or FakeTrainer(),
        sampler=fake_sampler,
        notify=lambda message: None,
        **settings,
    )  # type: ignore[arg-type]
    if isinstance(study.trainer, FakeTrainer):
        study.trainer.val = study.val_path
    return study

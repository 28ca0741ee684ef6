"""Red team: evaluator secrets a run could know (issue 20, "evaluator secrets").

The sealed evaluator once drew its causality probes from the run's own seed, so train.py
could replay them and export a model that reads the next byte everywhere except at the
probed positions. Every attack here tries a variant of that: a model that peeks at all
positions but the ones the old evaluator probed, at one position only, or only on text and
on a few rows it picks itself. Each must be refused, on every fresh secret, and each
evaluation's secret must be new, recorded with the run, and enough to replay it.

The fast part scores crafted models in-process and runs a tiny sealed task through the
real runner twice with the same seed; the slow part sends the replay attack on the bundled
`gpt` task through the real loop.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from redteam_lab import Attack, Lab, check, row, run_attacks

from rsilab import harness
from rsilab.config import load_task
from rsilab.harness import evaluate
from rsilab.paths import bundled_tasks_dir
from rsilab.results import Status
from rsilab.run import runner
from rsilab.workspace import Workspace, init_workspace

VOCAB = 256
BATCH, SEQ = 8, 32
N_BYTES = 2048  # scored validation bytes: 64 windows, 8 batches
FRESH = 3  # evaluations per model, each with its own fresh secret
WORDS = [
    "to",
    "be",
    "or",
    "not",
    "that",
    "is",
    "the",
    "question",
    "whether",
    "tis",
    "nobler",
    "in",
    "mind",
]


def _corpus(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words)) + "\n"


def old_probe_positions(seed: int, seq_len: int, n_batches: int, probes: int = 4) -> list[int]:
    """The positions the evaluator used to probe, as it drew them from the run's seed
    (the code this issue removed, written out): what a run could replay."""
    gen = torch.Generator().manual_seed(seed)
    torch.randint(0, n_batches, (1,), generator=gen)  # its first draw: the probed batch
    positions = [0, seq_len // 2, seq_len - 2][:probes]
    return positions + torch.randint(0, seq_len - 1, (probes - 3,), generator=gen).tolist()


# --- crafted models (module level, so torch.export traces plain code) ------------------


class Honest(nn.Module):
    """Causal: logits at t depend on the token at t only."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)


class PeeksExcept(Honest):
    """Adds a large logit on the NEXT byte at every position whose `peek` flag is set."""

    def __init__(self, peek: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("peek", peek.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ahead = F.one_hot(torch.roll(x, -1, dims=1), VOCAB).float()
        return self.emb(x) + 30.0 * self.peek[None, :, None] * ahead


class PeeksOnTextRows(Honest):
    """Peeks everywhere, but only on text and only on about a quarter of the rows, picked
    from each row's first two bytes (so which rows peek is decided from the past)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        texty = (((x >= 97) & (x <= 122)) | (x == 32)).float().mean(dim=1, keepdim=True)
        chosen = ((x[:, :1] * 31 + x[:, 1:2]) % 4 == 0).float()
        gate = torch.sigmoid((texty - 0.5) * 80) * chosen
        ahead = F.one_hot(torch.roll(x, -1, dims=1), VOCAB).float()
        ahead[:, -1] = 0.0  # the last position would read the first byte: the past
        return self.emb(x) + 30.0 * gate[..., None] * ahead


def _replays_old_probes(seed: int) -> PeeksExcept:
    peek = torch.ones(SEQ)
    peek[old_probe_positions(seed, SEQ, math.ceil(N_BYTES / SEQ / BATCH))] = 0
    peek[-1] = 0  # the last position would read the first byte: the past
    return PeeksExcept(peek)


def _peeks_at_one_position() -> PeeksExcept:
    peek = torch.zeros(SEQ)
    peek[SEQ // 3] = 1
    return PeeksExcept(peek)


CHEATS = {
    "evaluator secrets: model replays the old seed-derived probes, peeks everywhere else": lambda: (
        _replays_old_probes(seed=1)
    ),
    "evaluator secrets: model peeks at one position only": _peeks_at_one_position,
    "evaluator secrets: model peeks only on text, on rows it picks": PeeksOnTextRows,
}


@pytest.fixture
def val_path(tmp_path: Path) -> Path:
    path = tmp_path / "val.bin"
    path.write_text(_corpus(3000, seed=1))
    return path


def _export(model: nn.Module, artifact: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(harness.ENV_ARTIFACT_DIR, str(artifact))
    harness.save_model(model, torch.zeros(BATCH, SEQ, dtype=torch.long))
    return artifact


def _causal_at(model: nn.Module, cut: int) -> bool:
    """Whether changing every byte after `cut` leaves the logits up to `cut` unchanged."""
    gen = torch.Generator().manual_seed(cut)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    y = x.clone()
    y[:, cut + 1 :] = (x[:, cut + 1 :] + 1) % VOCAB
    with torch.no_grad():
        return torch.equal(model(x)[:, : cut + 1], model(y)[:, : cut + 1])


# --- in-process: crafted models, fresh secrets ----------------------------------------


def test_the_replay_attack_would_pass_the_old_probes() -> None:
    """The attack is real: causal at every position the old evaluator probed for seed 1,
    not causal anywhere else, so the old check passed it and only a new secret catches it."""
    model = _replays_old_probes(seed=1)
    spared = set(old_probe_positions(1, SEQ, math.ceil(N_BYTES / SEQ / BATCH)))
    assert all(_causal_at(model, t) for t in spared)
    assert sum(not _causal_at(model, t) for t in range(SEQ - 1)) >= SEQ - 1 - len(spared)


@pytest.mark.parametrize("cls", list(CHEATS))
def test_a_model_that_peeks_is_refused_on_every_fresh_secret(
    cls: str, tmp_path: Path, val_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = _export(CHEATS[cls](), tmp_path / "artifact", monkeypatch)
    reasons, secrets = [], set()
    for _ in range(FRESH):
        secret = evaluate.new_secret()
        secrets.add(secret)
        try:
            result = evaluate.evaluate(artifact, val_path, N_BYTES, probes=0, secret=secret)
        except evaluate.Refused as refused:
            reasons.append(str(refused))
        else:
            reasons.append(f"KEPT at val_bpb {result['val_bpb']:.3f}")
    caught = all("not causal" in r for r in reasons) and len(secrets) == FRESH
    outcome = f"refused {sum('not causal' in r for r in reasons)}/{FRESH}: {reasons[0]}"
    row(cls, f"refused on each of {FRESH} fresh secrets (not causal)", outcome, caught)
    assert caught, reasons


def test_an_honest_model_passes_every_fresh_secret_with_the_same_score(
    tmp_path: Path, val_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the probes refuse the cheats above for peeking, not for being probes."""
    torch.manual_seed(0)
    artifact = _export(Honest(), tmp_path / "artifact", monkeypatch)
    results = [evaluate.evaluate(artifact, val_path, N_BYTES, probes=0) for _ in range(FRESH)]
    assert len({r["eval_secret"] for r in results}) == FRESH
    assert len({r["val_bpb"] for r in results}) == 1
    assert all(r["causality_max_diff"] == 0.0 for r in results)
    # The floor, whatever eval.probes says: every position cut at least twice per kind.
    assert all(r["causality_positions"] == evaluate.MIN_CUTS >= 2 * (SEQ - 1) for r in results)


def test_a_recorded_secret_replays_the_evaluation(
    tmp_path: Path, val_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--secret` (the CLI) with the secret a refusal recorded refuses the same way."""
    artifact = _export(_peeks_at_one_position(), tmp_path / "artifact", monkeypatch)
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    args = ["--artifact", str(artifact), "--val", str(val_path), "--bytes", str(N_BYTES)]
    assert evaluate.main([*args, "--out", str(first)]) == evaluate.EXIT_REFUSED
    recorded = json.loads(first.read_text())
    assert "not causal" in recorded["refused"] and len(recorded["eval_secret"]) == 16
    replay = ["--out", str(again), "--secret", recorded["eval_secret"]]
    assert evaluate.main([*args, *replay]) == evaluate.EXIT_REFUSED
    assert json.loads(again.read_text()) == recorded


# --- through the runner: same artifact, same seed, new secret ------------------------

TINY_TOML = """\
name = "tiny"
editable = ["train.py"]
frozen = ["rsilab.toml"]
train = "python train.py"
evaluator = "sealed"
data = "none"
budget = 5
overhead = 60
eval_timeout = 120
threads = 1
memory_gb = 4

[metric]
name = "val_bpb"
direction = "min"

[eval]
bytes = 2048
"""

# A deterministic model for a given seed: the same seed exports the same artifact.
TINY_TRAIN = """\
import torch, torch.nn as nn
from rsilab import harness

torch.manual_seed(harness.seed())


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 256)

    def forward(self, x):
        return self.emb(x)


harness.save_model(Model(), torch.zeros(8, 32, dtype=torch.long))
"""


def _weights_digest(model_file: Path) -> str:
    """sha256 over the exported program's weights (the archive itself holds timestamps)."""
    state = torch.export.load(str(model_file)).state_dict
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].detach().numpy().tobytes())
    return digest.hexdigest()


def test_two_evaluations_with_the_same_seed_draw_new_recorded_secrets(tmp_path: Path) -> None:
    from rsilab.data import prepare

    task_dir = tmp_path / "tiny"
    task_dir.mkdir()
    (task_dir / "rsilab.toml").write_text(TINY_TOML)
    (task_dir / "train.py").write_text(TINY_TRAIN)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_corpus(40000, seed=0))
    data = prepare(str(corpus), home=tmp_path / "data")
    task = load_task(task_dir)
    results, digests = [], []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        result = runner.run(
            task, task_dir, run_dir, seed=7, train_data=data.train_path, val_data=data.val_path
        )
        assert result.status is Status.OK, f"{result.reason}\n{result.log_tail}"
        results.append(result)
        digests.append(_weights_digest(run_dir / "artifact" / harness.MODEL_FILE))
        # Recorded: the metrics file (what `rsilab audit` checks) and RunResult.evaluation
        # (what the ledger stores) both carry it.
        recorded = json.loads((run_dir / "metrics.json").read_text())
        assert recorded["eval_secret"] == result.evaluation["eval_secret"]
    first, second = results
    secrets = {r.evaluation["eval_secret"] for r in results}
    caught = digests[0] == digests[1] and len(secrets) == 2 and first.metric == second.metric
    row(
        "evaluator secrets: the same artifact and seed, evaluated twice",
        "a new secret each time, recorded with the run",
        f"secrets {' and '.join(sorted(secrets))}, val_bpb {first.metric:.4f} both times",
        caught,
    )
    assert digests[0] == digests[1], "the same seed exported a different model"
    assert len(secrets) == 2, "the evaluator reused its secret"
    assert first.metric == second.metric
    # And the recorded secret replays the second evaluation exactly.
    replay = evaluate.evaluate(
        tmp_path / "second" / "artifact",
        data.val_path,
        task.eval.bytes,
        task.eval.probes,
        secret=int(second.evaluation["eval_secret"], 16),
    )
    for key in ("val_bpb", "causality_max_diff", "causality_positions", "eval_secret"):
        assert replay[key] == second.evaluation[key], key


# --- through the loop: the replay attack on the gpt task (slow) ----------------------

GPT_TRAIN = (bundled_tasks_dir() / "gpt" / "train.py").read_text()
SAVE = "    harness.save_model(model, torch.zeros(BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device))\n"
assert SAVE in GPT_TRAIN
GPT_OVERRIDES: list[tuple[str, object]] = [
    ("budget", 2),
    ("eval.bytes", 8192),
    ("judge.noise_runs", 2),
    ("judge.max_runs", 2),
]

# train.py as a cheating agent writes it: train honestly, then wrap the model so it reads the
# next byte everywhere but the positions the evaluator would probe if it still took them
# from this run's seed (its probed batch, from 8192 bytes in 16 x 128 batches, drawn first).
REPLAY = """\
    class Replay(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            gen = torch.Generator().manual_seed(harness.seed())
            torch.randint(0, 4, (1,), generator=gen)
            spared = [0, SEQ_LEN // 2, SEQ_LEN - 2] + torch.randint(0, SEQ_LEN - 1, (1,), generator=gen).tolist()
            peek = torch.ones(SEQ_LEN)
            peek[spared + [SEQ_LEN - 1]] = 0.0
            self.register_buffer("peek", peek)

        def forward(self, x):
            ahead = F.one_hot(torch.roll(x, -1, dims=1), 256).float()
            return self.inner(x) + 30.0 * self.peek[None, :, None] * ahead

    harness.save_model(Replay(model), torch.zeros(BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device))
"""
GPT_ATTACK = Attack(
    "evaluator secrets: gpt train.py replays the old seed-derived probes (loop)",
    {"train.py": GPT_TRAIN.replace(SAVE, REPLAY)},
    ("invalid",),
    "not causal",
)


@pytest.fixture(scope="module")
def gpt_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from rsilab.data import prepare

    root = tmp_path_factory.mktemp("redteam-secrets")
    corpus = root / "corpus.txt"
    corpus.write_text(_corpus(60000, seed=0))
    home = root / "rsilab-home"
    data = prepare(str(corpus), home=home / "data")
    task = root / "gpt"
    shutil.copytree(bundled_tasks_dir() / "gpt", task)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSILAB_HOME", str(home))
        init_workspace(root / "ws", task, "rt")
        yield run_attacks(
            Workspace(root / "ws", "rt"),
            [GPT_ATTACK],
            overrides=GPT_OVERRIDES,
            train_data=data.train_path,
            val_data=data.val_path,
        )


@pytest.mark.slow
def test_gpt_replay_attack_is_caught_in_the_loop(gpt_lab: Lab) -> None:
    out = check(gpt_lab, GPT_ATTACK)
    # Every evaluation in the ledger, the refused one included, has its own secret.
    runs = [r for e in gpt_lab.ledger.experiments() for r in gpt_lab.ledger.runs(e.id)]
    secrets = [r.evaluation.get("eval_secret") for r in runs]
    assert all(isinstance(s, str) and len(s) == 16 for s in secrets), secrets
    assert len(set(secrets)) == len(secrets)
    assert any("not causal" in r.evaluation.get("refused", "") for r in out.runs)

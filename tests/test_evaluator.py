"""Tests for the sealed evaluator (rsilab.harness.evaluate): real torch.export programs.

Every model here is exported through `harness.save_model`, the same path train.py takes,
and scored by the evaluator as it ships: in-process for speed, and through
`python -m rsilab.harness.evaluate` to check the process contract (exit codes, metrics file).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rsilab import harness
from rsilab.harness import evaluate

VOCAB = 256
BATCH, SEQ = 4, 16


# --- models (module level, so torch.export traces plain code) --------------------------


class Uniform(nn.Module):
    """Zero logits everywhere: exactly log2(256) = 8 bits per byte."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(VOCAB))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], x.shape[1], VOCAB) * 1.0


class Bigram(nn.Module):
    """Causal: logits at t depend on tokens t and t-1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.now = nn.Embedding(VOCAB, VOCAB)
        self.prev = nn.Embedding(VOCAB, VOCAB)
        nn.init.normal_(self.now.weight, std=0.02)
        nn.init.normal_(self.prev.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.now(x) + self.prev(F.pad(x[:, :-1], (1, 0)))


class PeeksAhead(Bigram):
    """Mixes in the NEXT token (x shifted left): the classic leak the evaluator must catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.now(x) + self.prev(F.pad(x[:, 1:], (0, 1)))


class CountsCalls(Bigram):
    """Keeps state: a registered buffer it bumps on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.now(x) + 0.0 * self.calls


class HalfVocab(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)


class ReturnsTuple(Bigram):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.now(x)
        return logits, logits.mean()


# --- helpers -------------------------------------------------------------------------


def _corpus(n: int, seed: int) -> bytes:
    """English-like bytes with structure a bigram model can learn."""
    words = [
        "the ",
        "quick ",
        "brown ",
        "fox ",
        "jumps ",
        "over ",
        "lazy ",
        "dog",
        ". ",
        "\n",
        "and ",
        "then ",
        "sleeps ",
        "under ",
        "a ",
        "tree",
    ]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(words), (n // 3,), generator=g).tolist()
    return "".join(words[i] for i in idx).encode()[:n]


@pytest.fixture
def artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "artifact"
    monkeypatch.setenv(harness.ENV_ARTIFACT_DIR, str(out))
    return out


@pytest.fixture
def val_path(tmp_path: Path) -> Path:
    path = tmp_path / "val.bin"
    path.write_bytes(_corpus(3001, seed=1))
    return path


def _save(model: nn.Module) -> Path:
    return harness.save_model(model, torch.zeros(BATCH, SEQ, dtype=torch.long))


def _expected_windows(val: bytes, n_bytes: int, seq_len: int) -> list[bytes]:
    """The contract, written out independently: ceil(n_bytes / seq_len) windows of
    seq_len + 1 bytes (at most one per possible start), starts evenly spaced from 0 to
    the last possible start, rounded to the nearest byte (ties to even)."""
    last = len(val) - seq_len - 1
    n = min(-(-n_bytes // seq_len), last + 1)
    starts = [0] if n == 1 else [round(Fraction(i * last, n - 1)) for i in range(n)]
    assert starts[0] == 0 and starts[-1] == last and len(set(starts)) == n
    return [val[s : s + seq_len + 1] for s in starts]


def _reference_bpb(model: nn.Module, windows: list[bytes]) -> float:
    """Cross-entropy of the eager model over the windows, in bits per byte."""
    chunk = torch.tensor([list(w) for w in windows], dtype=torch.long)
    with torch.no_grad():
        logits = model.eval()(chunk[:, :-1])
    nats = F.cross_entropy(
        logits.double().reshape(-1, VOCAB), chunk[:, 1:].reshape(-1), reduction="sum"
    )
    return float(nats) / chunk[:, 1:].numel() / math.log(2)


# --- scoring -------------------------------------------------------------------------


def test_uniform_logits_score_exactly_8_bits(artifact: Path, val_path: Path) -> None:
    _save(Uniform())
    result = evaluate.evaluate(artifact, val_path, n_bytes=500, probes=4)
    assert abs(result["val_bpb"] - 8.0) < 1e-9
    assert result["context"] == SEQ and result["batch"] == BATCH
    assert result["eval_tokens"] == math.ceil(500 / SEQ) * SEQ
    assert result["num_params"] == VOCAB


def test_trained_model_matches_independent_cross_entropy(artifact: Path, val_path: Path) -> None:
    torch.manual_seed(0)
    model = Bigram()
    train = torch.tensor(list(_corpus(20000, seed=2)), dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        starts = torch.randint(0, train.numel() - SEQ - 1, (16,), generator=g)
        chunk = train[starts[:, None] + torch.arange(SEQ + 1)]
        loss = F.cross_entropy(model(chunk[:, :-1]).reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0  # it did learn: the metric is not trivially 8
    _save(model)

    val = val_path.read_bytes()
    # 37 windows: not a multiple of the batch (padding path); then every start (capped).
    for n_bytes in (37 * SEQ - 5, 10**6):
        windows = _expected_windows(val, n_bytes, SEQ)
        result = evaluate.evaluate(artifact, val_path, n_bytes=n_bytes, probes=4)
        assert result["eval_tokens"] == len(windows) * SEQ
        assert abs(result["val_bpb"] - _reference_bpb(model, windows)) < 1e-6
        assert result["val_bpb"] < 6.0
    assert len(_expected_windows(val, 10**6, SEQ)) == len(val) - SEQ


# --- refusals ------------------------------------------------------------------------


def test_refuses_a_model_that_sees_the_future(artifact: Path, val_path: Path) -> None:
    _save(PeeksAhead())
    with pytest.raises(evaluate.Refused, match="causal"):
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)


def test_refuses_a_model_that_mutates_a_buffer(artifact: Path, val_path: Path) -> None:
    _save(CountsCalls())
    program = torch.export.load(str(artifact / harness.MODEL_FILE))
    # torch.export may or may not declare the mutation; the evaluator must catch it anyway.
    declared = bool(program.graph_signature.buffers_to_mutate)
    with pytest.raises(evaluate.Refused) as refused:
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)
    reason = str(refused.value)
    assert "pure function of its input" in reason
    if not declared:  # the path the notes describe: caught by comparing state around calls
        assert "changes its state when called (buffer:calls)" in reason


def test_refuses_a_missing_model(artifact: Path, val_path: Path) -> None:
    artifact.mkdir()
    with pytest.raises(evaluate.Refused, match=r"no exported model .*save_model"):
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)


def test_refuses_an_unreadable_model(artifact: Path, val_path: Path) -> None:
    artifact.mkdir()
    (artifact / harness.MODEL_FILE).write_bytes(b"not a zip archive")
    with pytest.raises(evaluate.Refused, match="cannot load the exported model"):
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)


def test_refuses_logits_of_the_wrong_shape(artifact: Path, val_path: Path) -> None:
    _save(HalfVocab())
    with pytest.raises(
        evaluate.Refused,
        match=rf"logits of shape \({BATCH}, {SEQ}, 256\), got \({BATCH}, {SEQ}, 128\)",
    ):
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)


def test_refuses_a_tuple_output(artifact: Path, val_path: Path) -> None:
    _save(ReturnsTuple())
    with pytest.raises(evaluate.Refused, match="one logits tensor, not a tuple"):
        evaluate.evaluate(artifact, val_path, n_bytes=200, probes=4)


# --- the process contract ------------------------------------------------------------


def _start_cli(artifact: Path, val_path: Path, out: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "rsilab.harness.evaluate",
        "--artifact",
        str(artifact),
        "--val",
        str(val_path),
        "--out",
        str(out),
        "--bytes",
        "300",
        "--probes",
        "3",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_scores_with_exit_0_and_refuses_with_exit_3(
    tmp_path: Path, val_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    monkeypatch.setenv(harness.ENV_ARTIFACT_DIR, str(good))
    _save(Uniform())
    monkeypatch.setenv(harness.ENV_ARTIFACT_DIR, str(bad))
    _save(PeeksAhead())
    # Both evaluator processes at once: each pays torch's import, the test pays it once.
    procs = {
        name: _start_cli(tmp_path / name, val_path, tmp_path / f"{name}.json")
        for name in ("good", "bad")
    }
    streams = {name: proc.communicate(timeout=120) for name, proc in procs.items()}

    assert procs["good"].returncode == 0, streams["good"][1]
    figures = json.loads((tmp_path / "good.json").read_text())
    assert abs(figures["val_bpb"] - 8.0) < 1e-9
    assert figures["eval_tokens"] == math.ceil(300 / SEQ) * SEQ
    assert json.loads(streams["good"][0]) == figures  # stdout echoes the metrics file

    assert procs["bad"].returncode == evaluate.EXIT_REFUSED == 3, streams["bad"][1]
    figures = json.loads((tmp_path / "bad.json").read_text())
    assert set(figures) == {"refused", "eval_secret"} and "causal" in figures["refused"]
    assert "refused:" in streams["bad"][1]

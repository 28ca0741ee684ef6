"""benchmarks/train_throughput.py's figures, and train.py's code paths they depend on.

A tiny configuration of the bundled train.py trains for a FLOPs budget (a few steps, no
runner, no evaluator); the benchmark's MFU must come out of its summary exactly as the
model's FLOPs formula says, counted here independently from the knobs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rsilab.config import load_task
from rsilab.paths import bundled_tasks_dir
from rsilab.proposers.knobs import parse_knobs, set_knobs
from rsilab.run.runner import parse_summary

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import train_throughput as tt  # noqa: E402

TRAIN = (bundled_tasks_dir() / "gpt" / "train.py").read_text()
TINY = {"DEPTH": 2, "WIDTH": 32, "HEADS": 2, "SEQ_LEN": 16, "BATCH_SIZE": 4}


def _model_flops_per_token(k: dict[str, Any]) -> int:
    """6 per matmul weight (forward + backward) + attention, from the knobs alone."""
    w, hd = k["WIDTH"], k["WIDTH"] // k["HEADS"] // 2 * 2
    inner = k["HEADS"] * hd
    block = 3 * inner * w + inner * w + 2 * 4 * w * w  # qkv, proj, gelu MLP up and down
    head = 256 * w  # tied with the embedding; the embedding itself is a lookup
    return 6 * (k["DEPTH"] * block + head) + 12 * k["DEPTH"] * k["SEQ_LEN"] * w


def _train_tiny(tmp_path: Path, flops_budget: float) -> dict[str, float]:
    data = tmp_path / "train.bin"
    data.write_bytes(b"Shall I compare thee to a summer's day? Thou art more lovely.\n" * 50)
    (tmp_path / "train.py").write_text(set_knobs(TRAIN, TINY, preset="cpu"))
    env = {
        **os.environ,
        "RSILAB_TRAIN_DATA": str(data),
        "RSILAB_BUDGET": "60",
        "RSILAB_BUDGET_FLOPS": str(flops_budget),
        "RSILAB_PRESET": "cpu",
        "RSILAB_THREADS": "1",
        "RSILAB_ARTIFACT_DIR": str(tmp_path / "artifact"),
        "RSILAB_HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse_summary(proc.stdout)


def test_measured_mfu_recovers_the_model_flops_of_a_real_run(tmp_path: Path) -> None:
    per_token = _model_flops_per_token(TINY)
    tokens_per_step = TINY["BATCH_SIZE"] * TINY["SEQ_LEN"]
    summary = _train_tiny(tmp_path, flops_budget=5.5 * per_token * tokens_per_step)
    assert summary["num_steps"] == 6  # stopped by the first step past the FLOPs budget
    assert summary["total_tokens_M"] * 1e6 == 5 * tokens_per_step  # the first step is start-up
    assert tt.flops_per_token(summary) == pytest.approx(per_token, rel=1e-9)
    tps = summary["tokens_per_second"]
    peak = 1e11
    assert tt.measured_mfu(summary, peak) == pytest.approx(100 * per_token * tps / peak)
    # On CPU time: the same tokens over the process's CPU seconds in the same steps.
    cpu = summary["training_cpu_seconds"]
    assert cpu > 0 and tt.tokens_per_second(summary, "cpu") == pytest.approx(
        5 * tokens_per_step / cpu
    )
    assert tt.measured_mfu(summary, peak, "cpu") == pytest.approx(
        100 * per_token * 5 * tokens_per_step / cpu / peak
    )
    # train.py's own figure uses the same FLOPs per token, against its own peak reading.
    own_peak = 100 * per_token * tps / summary["mfu_percent"]
    assert 1e9 < own_peak < 1e13


def test_flops_per_token_is_unknown_without_the_figures_it_needs() -> None:
    full = {"num_steps": 11.0, "total_tokens_M": 0.01, "train_flops": 1.1e10}
    assert tt.flops_per_token(full) == pytest.approx(1e6)
    for key in full:
        assert math.isnan(tt.flops_per_token({k: v for k, v in full.items() if k != key}))
    assert math.isnan(tt.flops_per_token({**full, "num_steps": 1.0}))  # only the start-up step
    assert tt.measured_mfu({**full, "tokens_per_second": 2e4}, 4e10) == pytest.approx(50.0)
    assert math.isnan(tt.measured_mfu(full, 4e10, "cpu"))  # no training_cpu_seconds
    on_cpu = {**full, "training_cpu_seconds": 0.5}
    assert tt.measured_mfu(on_cpu, 4e10, "cpu") == pytest.approx(50.0)


def test_experiments_per_hour() -> None:
    assert tt.experiments_per_hour(60, 30) == pytest.approx(40.0)
    assert tt.experiments_per_hour(60, 30, 0.9) == pytest.approx(3600 / 90.9)


def test_nanogpt_contender_has_the_model_shape_of_train_py(tmp_path: Path) -> None:
    task = load_task(bundled_tasks_dir() / "gpt")
    own, ref = tt.contenders(["train", "nanogpt"], task)
    assert own.source == TRAIN
    cpu = parse_knobs(TRAIN, "cpu")
    ref_knobs = parse_knobs(ref.source)
    for k in tt.SHAPE:
        assert ref_knobs[k].value == cpu[k].value, k
    # Everything but the shape is the reference's own recipe.
    published = (bundled_tasks_dir() / "gpt" / "reference" / "nanogpt_cpu.py").read_text()
    assert ref_knobs["LR"].value == parse_knobs(published)["LR"].value
    other = tmp_path / "old_train.py"
    other.write_text("print('x')\n")
    assert tt.contenders([str(other)], task)[0].name == "old_train.py"
    with pytest.raises(SystemExit, match="is not train, nanogpt or a file"):
        tt.contenders(["nanoGPT2"], task)


def test_optimizer_is_fused_where_torch_has_a_fused_adamw(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdamW runs as one fused kernel per group on CPU (the cpu preset's throughput relies
    on it) and CUDA; on other devices (here: meta, standing in for MPS) the default."""
    import torch

    monkeypatch.setenv("RSILAB_PRESET", "cpu")
    namespace: dict[str, Any] = {"__name__": "train_under_test"}
    exec(compile(set_knobs(TRAIN, TINY, preset="cpu"), "train.py", "exec"), namespace)
    model = namespace["GPT"]()
    (opt,) = namespace["make_optimizers"](model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    (opt,) = namespace["make_optimizers"](model.to("meta"))
    assert not opt.defaults["fused"]

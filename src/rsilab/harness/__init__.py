"""The frozen harness that task code imports. Owns: the contract between a run and train.py.

The runner passes everything by environment (budget, seed, threads, preset, the training
split, the artifact folder); train.py reads it through these functions and never receives
a path to the validation split. Importing this module is cheap: torch is imported inside
the functions that need it, so a numpy-only task can use it too.

    from rsilab import harness
    device = harness.setup()                 # seeds, threads, device
    for x, y in harness.train_batches(B, T, device): ...
    harness.save_model(model, example_input) # torch.export program for the sealed evaluator
    harness.print_summary({...})             # the `---` block, autoresearch's format
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsilab.fsio import atomic_path

if TYPE_CHECKING:
    import torch

# Environment variables the runner sets. Names are part of the frozen contract.
ENV_BUDGET = "RSILAB_BUDGET"
ENV_SEED = "RSILAB_SEED"
ENV_THREADS = "RSILAB_THREADS"
ENV_PRESET = "RSILAB_PRESET"
ENV_TRAIN_DATA = "RSILAB_TRAIN_DATA"
ENV_ARTIFACT_DIR = "RSILAB_ARTIFACT_DIR"
ENV_BUDGET_FLOPS = "RSILAB_BUDGET_FLOPS"  # optional: the budget in estimated training FLOPs

MODEL_FILE = "model.pt2"
AUX_FILE = "aux.json"

_T0 = time.time()  # import time ~ process start: used for total_seconds


def budget_seconds() -> float:
    """Training budget in seconds (the runner kills the process at budget + overhead)."""
    return float(os.environ.get(ENV_BUDGET, "60"))


def budget_flops() -> float | None:
    """Training budget in estimated FLOPs, or None when the budget is wall-clock seconds.

    When set (task key `budget_flops`), train.py stops after this many FLOPs by its own
    estimate, so results compare across machines; `budget_seconds()` stays the wall-clock
    cap the runner enforces. The count is the training script's, not verified by rsilab.
    """
    value = float(os.environ.get(ENV_BUDGET_FLOPS, "0") or 0)
    return value if value > 0 else None


def seed() -> int:
    return int(os.environ.get(ENV_SEED, "0"))


def threads() -> int:
    return int(os.environ.get(ENV_THREADS, "1"))


def artifact_dir() -> Path:
    d = Path(os.environ.get(ENV_ARTIFACT_DIR, "artifact"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def elapsed() -> float:
    """Seconds since this process imported the harness (about process start)."""
    return time.time() - _T0


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def preset() -> str:
    """`cpu` or `gpu`: RSILAB_PRESET when set, else chosen by the device."""
    chosen = os.environ.get(ENV_PRESET, "").strip().lower()
    if chosen:
        return chosen
    return "gpu" if has_cuda() else "cpu"


def device() -> torch.device:
    """CUDA when available, then MPS, then CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup() -> torch.device:
    """Seed every RNG from the harness seed, set the CPU thread count, return the device."""
    import random

    import numpy as np
    import torch

    s = seed()
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    torch.set_num_threads(threads())
    dev = device()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def train_bytes() -> bytes:
    """The training split as raw bytes (byte-level tokens, vocab 256)."""
    path = os.environ.get(ENV_TRAIN_DATA)
    if not path:
        raise RuntimeError(f"{ENV_TRAIN_DATA} is not set: run this through `rsilab train`")
    return Path(path).read_bytes()


def train_batches(
    batch_size: int, seq_len: int, dev: torch.device | str = "cpu"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random windows of the training split: (x, y) int64 tensors of shape (B, T).

    Window positions come from a generator seeded by the harness seed, so the data
    order changes with the seed and repeats for the same seed.
    """
    import numpy as np
    import torch

    data = torch.from_numpy(np.frombuffer(train_bytes(), dtype=np.uint8).copy())
    if data.numel() <= seq_len + 1:
        raise RuntimeError(
            f"training split has {data.numel()} bytes, fewer than seq_len+1={seq_len + 1}"
        )
    gen = torch.Generator().manual_seed(seed())
    offsets = torch.arange(seq_len + 1)
    pin = torch.device(dev).type == "cuda"
    while True:
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=gen)
        chunk = data[starts[:, None] + offsets].long()
        x, y = chunk[:, :-1], chunk[:, 1:]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)


def save_model(model: torch.nn.Module, example_input: torch.Tensor) -> Path:
    """Export `model` (tokens (B, T) int64 -> logits (B, T, vocab)) for the sealed evaluator.

    The evaluator feeds validation windows of exactly the example's shape. The model is
    exported in eval mode, in fp32, with no autocast: what is scored is the program, not
    the Python object.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (example_input,))
    out = artifact_dir() / MODEL_FILE
    with atomic_path(out, suffix=".pt2") as tmp:  # torch.export.save wants a .pt2 name
        torch.export.save(program, str(tmp))
    model.train(was_training)
    return out


def report(**figures: float) -> None:
    """Record auxiliary figures (merged into the run's record; never the primary metric)."""
    path = artifact_dir() / AUX_FILE
    current: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    current.update({k: float(v) for k, v in figures.items()})
    path.write_text(json.dumps(current, indent=1))


def print_summary(figures: Mapping[str, Any]) -> None:
    """Print autoresearch's summary block: `---` then aligned `key: value` lines."""
    width = max(len(k) for k in figures) + 1
    lines = ["---"]
    for k, v in figures.items():
        val = f"{v:.6f}" if isinstance(v, float) else str(v)
        lines.append(f"{k + ':':<{width}} {val}")
    print("\n".join(lines), flush=True)


# Dense bf16 peak FLOP/s of common accelerators (vendor datasheets), for MFU.
_GPU_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(dev: torch.device | str) -> float:
    """Peak FLOP/s of the device for MFU: datasheet bf16 for GPUs, measured fp32 for CPUs.

    The CPU figure is measured once per thread count (large fp32 matmuls) and cached in
    RSILAB_HOME, since published peaks say little about a shared VM.
    """
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, value in _GPU_PEAK.items():
            if key in name:
                return value
        return 100e12
    # A reading taken while the machine is busy is too low and would inflate MFU past
    # 100%; so each run takes a short new reading and the cache keeps the best ever seen.
    cache = (
        Path(os.environ.get("RSILAB_HOME") or Path.home() / ".cache" / "rsilab")
        / "cpu_peak_flops.json"
    )
    key = str(torch.get_num_threads())
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    best = max(
        float(known.get(key, 0.0)), measure_cpu_matmul_flops(seconds=0.3 if key in known else 1.0)
    )
    if best > float(known.get(key, 0.0)):
        known[key] = best
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known))
        except OSError:
            pass  # a read-only home only costs a longer reading next time
    return best


def measure_cpu_matmul_flops(
    sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 1.0
) -> float:
    """Best-of fp32 matmul throughput over a few square sizes, current thread count (FLOP/s)."""
    import torch

    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm up
        end = time.perf_counter() + seconds / len(sizes)
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best

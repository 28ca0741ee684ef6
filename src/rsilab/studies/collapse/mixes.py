"""Data policies of a collapse study. Owns: which bytes each generation trains on.

Words: R is the real training corpus of the study (a slice of the task's real training
split, `real_slice`), S_j the synthetic corpus sampled from the model of generation j-1
(each exactly len(R) bytes). Generation 0 trains on R; generation g >= 1 on

    replace      S_g                       (synthetic only)
    accumulate   R + S_1 + ... + S_g       (real plus all synthetic so far; it grows)
    mix:p        p of R + (1 - p) of S_g   (len(R) bytes in all, round(p * len(R)) real)

as a list of `Part`s (bytes plus provenance), which the study writes as one train.bin with
one provenance segment per part (`rsilab.provenance.write_dataset`).

Not covered: deduplication or filtering of samples, and weighting parts differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsilab.errors import ConfigError

POLICY_NAMES = ("replace", "accumulate", "mix")
SLICE_CHUNKS = 64  # a real slice is this many evenly spaced pieces of the split
MIN_CHUNK = 256  # ... each at least this long, so most of a piece is whole lines


@dataclass(frozen=True)
class Policy:
    name: str  # replace | accumulate | mix
    real_fraction: float = 0.0  # mix:p only

    @property
    def label(self) -> str:
        return f"mix:{self.real_fraction:g}" if self.name == "mix" else self.name


def parse_policy(text: str) -> Policy:
    """`replace`, `accumulate` or `mix:p` with 0 <= p <= 1; ConfigError otherwise."""
    name, _, arg = text.strip().partition(":")
    if name in ("replace", "accumulate") and not arg:
        return Policy(name)
    if name == "mix":
        try:
            p = float(arg)
        except ValueError:
            p = -1.0
        if 0.0 <= p <= 1.0:
            return Policy("mix", p)
        raise ConfigError(f"policy {text!r}: mix needs a real fraction p in [0, 1], e.g. mix:0.5")
    raise ConfigError(f"policy {text!r}: use replace, accumulate or mix:p (e.g. mix:0.5)")


def parse_policies(text: str) -> list[Policy]:
    policies = [parse_policy(t) for t in text.split(",") if t.strip()]
    if not policies:
        raise ConfigError("--policies names no policy; e.g. --policies replace,accumulate")
    labels = [p.label for p in policies]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--policies repeats a policy: {','.join(labels)}")
    return policies


@dataclass(frozen=True)
class Part:
    """Bytes of one origin, and its provenance segment (without offset/size/sha256)."""

    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)

    def segment(self) -> dict[str, Any]:
        return {**self.meta, "size": len(self.data)}


def real_slice(data: bytes, size: int, chunks: int = SLICE_CHUNKS) -> tuple[bytes, dict[str, Any]]:
    """Exactly min(size, len(data)) bytes of `data`: evenly spaced pieces in order, so a small
    study corpus covers the whole split rather than its first work. Also says how it cut."""
    if size >= len(data):
        return data, {"method": "whole", "size": len(data)}
    if size <= 0:
        return b"", {"method": "empty", "size": 0}
    n = max(1, min(chunks, size // MIN_CHUNK))
    sizes = [size // n + (1 if i < size % n else 0) for i in range(n)]
    gap = len(data) - size
    starts, before = [], 0
    for i, s in enumerate(sizes):
        starts.append(before + (round(i * gap / (n - 1)) if n > 1 else 0))
        before += s
    out = b"".join(data[a : a + s] for a, s in zip(starts, sizes, strict=True))
    return out, {"method": "evenly-spaced", "pieces": n, "size": len(out)}


def compose(policy: Policy, generation: int, real: Part, synthetic: list[Part]) -> list[Part]:
    """The parts generation `generation` trains on; `synthetic[j - 1]` is S_j (j = 1..g)."""
    if generation == 0:
        return [real]
    if len(synthetic) < generation:
        raise ValueError(f"generation {generation} needs S_1..S_{generation}, got {len(synthetic)}")
    if policy.name == "replace":
        return [synthetic[generation - 1]]
    if policy.name == "accumulate":
        return [real, *synthetic[:generation]]
    k = round(policy.real_fraction * len(real.data))
    kept, how = real_slice(real.data, k)
    last = synthetic[generation - 1]
    parts = [
        Part(kept, {**real.meta, "subslice": how}),
        Part(last.data[: len(real.data) - k], last.meta),
    ]
    return [p for p in parts if p.data]

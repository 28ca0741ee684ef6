"""The frozen sampler. Owns: turning an exported model into a synthetic byte corpus.

Runs as its own process, like the sealed evaluator, so a task's code never runs in it:

    python -m rsilab.harness.sample --artifact DIR --out FILE --bytes N --temperature T --seed S

It loads the `torch.export` program that `harness.save_model` wrote (tokens (B, T) int64 ->
logits (B, T, 256), a fixed shape) and samples autoregressively with B independent streams
in lockstep: each stream starts from one newline byte (a document start, so no real text
leaks into the synthetic corpus) and keeps a sliding window of its last T bytes. While a
stream's window is shorter than T, the window sits at the start of the row and the rest
is padding; causality (which the evaluator checks) makes the logits at the window's last
position independent of the padding. One forward pass yields one byte per stream, so the
speed is B / (time of one forward). The corpus is the B streams' outputs concatenated
(stream 0 first), cut to exactly N bytes, and written atomically.

Temperature 0 is greedy decoding. The same artifact, seed, temperature and size give the
same bytes. A JSON line on stdout reports bytes, seconds and bytes per second.

Not covered: checking the program (the evaluator refuses impure or non-causal models; the
collapse study samples only from models the evaluator scored), top-k / nucleus sampling.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from rsilab.fsio import atomic_write
from rsilab.harness.evaluate import VOCAB, Refused, _input_shape

START_BYTE = 10  # "\n": every stream starts as a fresh document


def sample(artifact: Path, n_bytes: int, temperature: float, seed: int) -> bytes:
    """`n_bytes` bytes sampled from the exported model in `artifact` (see the module doc)."""
    if n_bytes < 0:
        raise ValueError(f"bytes must be >= 0, got {n_bytes}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    path = artifact / "model.pt2"
    if not path.is_file():
        raise Refused(f"no exported model at {path}")
    program = torch.export.load(str(path))
    batch, seq_len = _input_shape(program)
    module = program.module()
    dev = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    per_stream = math.ceil(n_bytes / batch) if n_bytes else 0

    # Row b holds stream b's window; `filled` is how many of its positions are real context.
    window = torch.zeros(batch, seq_len, dtype=torch.long)
    window[:, 0] = START_BYTE
    filled = 1
    out = torch.empty(batch, per_stream, dtype=torch.uint8)
    with torch.no_grad():
        for i in range(per_stream):
            logits = module(window.to(dev))
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (
                batch,
                seq_len,
                VOCAB,
            ):
                raise Refused(
                    f"the model must return logits of shape ({batch}, {seq_len}, {VOCAB})"
                )
            last = logits[:, filled - 1].double().cpu()
            if temperature == 0:
                nxt = last.argmax(dim=-1)
            else:
                probs = torch.softmax(last / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            out[:, i] = nxt.to(torch.uint8)
            if filled < seq_len:
                window[:, filled] = nxt
                filled += 1
            else:  # slide: drop the oldest byte
                window = torch.cat([window[:, 1:], nxt[:, None]], dim=1)
    return bytes(out.numpy().tobytes())[:n_bytes]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        data = sample(args.artifact, args.bytes, args.temperature, args.seed)
    except (Refused, ValueError) as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    atomic_write(args.out, data)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bytes": len(data),
                "seconds": seconds,
                "bytes_per_second": len(data) / max(seconds, 1e-9),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sealed evaluator. Owns: turning an exported model into a trusted metric.

Runs as its own process (`python -m rsilab.harness.evaluate`), after training, in code the
agent cannot edit. It loads the `torch.export` program that `harness.save_model` wrote and
refuses it when it

- declares buffer mutations, or changes any buffer/parameter/constant when called, or
  gives different logits for the same input twice (state kept between calls);
- is not causal: changing tokens after position t changes logits at positions <= t (probed
  on random tokens and on a scored batch of validation text, so a model that peeks only
  when its input looks like text is caught);
- lets the rows of a batch see each other (a row could read its own future from a
  neighbouring, overlapping validation window);
- returns something other than finite (B, T, 256) logits;
- holds pickled Python objects: `torch.export.load` would unpickle them (code execution in
  the evaluator), so loading runs with unpickling refused and `torch.load` weights-only.

Then it computes the cross-entropy itself, in float64, from the logits over a fixed
validation slice (evenly spaced windows across the whole split) and writes `val_bpb`
(bits per byte; tokens are bytes, so no tokenizer correction) to its own metrics file.

Exit codes: 0 scored, 3 refused (reason in the metrics file), anything else: crashed.

With `--wait` it is started before training ends (the runner does that when a core is
spare): it does its slow imports (torch, and the torch.export deserializer, which pulls in
torch._dynamo: about 2.5 s on a 2-core CPU), then reads one line on stdin. `go` starts the
evaluation as above; anything else, or end of input, exits 0 having written nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rsilab.fsio import atomic_write

VOCAB = 256
EXIT_REFUSED = 3


class Refused(Exception):
    """The artifact cannot be trusted; the message is the reason."""


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    """While loading: `torch.load` weights-only (tensors and containers, no code), and plain
    unpickling refused. torch.export.load otherwise calls torch.load(weights_only=False)
    on weights or constants an archive marks `use_pickle`, falls back to it for the example
    inputs, and pickle.loads on "opaque" constants: a crafted model.pt2 would run its own
    code here, in the process that writes the metric."""

    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            raise Refused(
                "the exported model holds pickled Python objects that are not plain tensors; "
                "the evaluator does not unpickle them"
            ) from None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Refused(
            "the exported model holds pickled Python objects; the evaluator does not unpickle"
        )

    patches = [
        (torch, "load", weights_only_load),
        (pickle, "loads", refuse),
        (pickle, "load", refuse),
        (torch._C, "_pickle_load_obj", refuse),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def _input_shape(program: Any) -> tuple[int, int]:
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise Refused(f"the model must take one input (tokens), it takes {len(user_inputs)}")
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            shape = tuple(int(s) for s in getattr(val, "shape", ()))
            if len(shape) != 2:
                raise Refused(f"the model input must be (batch, time) tokens, got shape {shape}")
            return shape[0], shape[1]
    raise Refused("cannot find the model's input in the exported graph")


def _state(module: torch.nn.Module, program: Any) -> dict[str, torch.Tensor]:
    snap = {f"param:{k}": v.detach().clone() for k, v in module.named_parameters()}
    snap.update({f"buffer:{k}": v.detach().clone() for k, v in module.named_buffers()})
    for k, v in getattr(program, "constants", {}).items():
        if isinstance(v, torch.Tensor):
            snap[f"constant:{k}"] = v.detach().clone()
    return snap


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> str | None:
    for k, v in before.items():
        w = after.get(k)
        if w is None or w.shape != v.shape or not torch.equal(v, w):
            return k
    extra = set(after) - set(before)
    return sorted(extra)[0] if extra else None


def _windows(val: torch.Tensor, n_bytes: int, seq_len: int) -> torch.Tensor:
    """Evenly spaced (seq_len + 1)-byte windows covering about `n_bytes` predicted bytes."""
    n_windows = max(1, math.ceil(n_bytes / seq_len))
    last = val.numel() - seq_len - 1
    if last < 0:
        raise SystemExit(
            f"validation split has {val.numel()} bytes, fewer than context {seq_len + 1}"
        )
    n_windows = min(n_windows, last + 1)
    if n_windows == 1:
        starts = torch.zeros(1, dtype=torch.long)
    else:
        starts = torch.round(torch.linspace(0, last, n_windows)).long()
    return val[starts[:, None] + torch.arange(seq_len + 1)].long()


def evaluate(
    artifact: Path, val_path: Path, n_bytes: int, probes: int, seed: int
) -> dict[str, Any]:
    """Score the exported model in `artifact`; raises Refused with the reason."""
    t0 = time.perf_counter()
    path = artifact / "model.pt2"
    if not path.is_file():
        raise Refused(f"no exported model at {path}: train.py must call harness.save_model")
    try:
        with _no_unpickling():
            program = torch.export.load(str(path))
    except Refused:
        raise
    except Exception as e:  # any unreadable program is the artifact's fault
        raise Refused(f"cannot load the exported model: {type(e).__name__}: {e}") from None
    if program.graph_signature.buffers_to_mutate:
        names = ", ".join(sorted(program.graph_signature.buffers_to_mutate.values()))
        raise Refused(
            f"the model mutates buffers ({names}): it must be a pure function of its input"
        )
    batch, seq_len = _input_shape(program)
    module = program.module()
    dev = next((t.device for t in module.state_dict().values()), torch.device("cpu"))

    val = torch.frombuffer(bytearray(val_path.read_bytes()), dtype=torch.uint8)
    windows = _windows(val, n_bytes, seq_len)
    gen = torch.Generator().manual_seed(seed)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = module(x.to(dev))
        if isinstance(out, tuple | list):
            raise Refused("the model must return one logits tensor, not a tuple")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], seq_len, VOCAB):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise Refused(
                f"the model must return logits of shape ({x.shape[0]}, {seq_len}, {VOCAB}), got {shape}"
            )
        return out.float().cpu()

    # Purity: same input twice -> same logits, and no parameter/buffer/constant moves.
    x0 = windows[:batch, :-1]
    if x0.shape[0] < batch:
        x0 = torch.cat([x0, x0.new_zeros(batch - x0.shape[0], seq_len)])
    before = _state(module, program)
    a = run(x0)
    b = run(x0)
    moved = _changed(before, _state(module, program))
    if moved:
        raise Refused(
            f"the model changes its state when called ({moved}): it must be a pure function of its input"
        )
    if not torch.equal(a, b):
        raise Refused(
            "the model gives different logits for the same input twice: it keeps state between calls"
        )

    # Probes on what is scored: batches exactly as the scoring loop builds them (a model
    # cannot tell a probe from a scored batch), picked by the seed.
    n_batches = math.ceil(windows.shape[0] / batch)

    def scored_batch(k: int) -> torch.Tensor:
        rows = torch.arange(k * batch, (k + 1) * batch) % windows.shape[0]
        return windows[rows, :-1]

    first = int(torch.randint(0, n_batches, (1,), generator=gen))
    text, other = scored_batch(first), scored_batch(first + 1)
    if n_batches == 1 or torch.equal(text, other):  # too little text for two batches
        other = torch.roll(text, shifts=max(1, seq_len // 2), dims=1)

    # Causality: logits at positions <= t must not depend on tokens after t. Probed on random
    # tokens and on validation text whose later part is swapped for other text, so a model
    # that peeks only when its input looks like text is caught too.
    max_diff = 0.0
    positions = [0, seq_len // 2, seq_len - 2][: max(0, probes)]
    positions += torch.randint(
        0, max(1, seq_len - 1), (max(0, probes - 3),), generator=gen
    ).tolist()
    for t in positions:
        if t >= seq_len - 1:
            continue
        x = torch.randint(0, VOCAB, (batch, seq_len), generator=gen)
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, VOCAB, (batch, seq_len - t - 1), generator=gen)
        y_text = text.clone()
        y_text[:, t + 1 :] = other[:, t + 1 :]
        for a_in, b_in in ((x, y), (text, y_text)):
            diff = float((run(a_in)[:, : t + 1] - run(b_in)[:, : t + 1]).abs().max())
            max_diff = max(max_diff, diff)
            if diff > 1e-4:
                raise Refused(
                    f"the model is not causal: logits at position {t} change by {diff:.3g} when later tokens change"
                )

    # Rows must not see each other: a row's logits may not change when the other rows of its
    # batch do (validation windows may overlap, so a row could read its own future there).
    if batch > 1:
        mixed = text.clone()
        mixed[1:] = other[1:]
        diff = float((run(text)[0] - run(mixed)[0]).abs().max())
        if diff > 1e-4:
            raise Refused(
                f"the rows of a batch are not independent: the logits of one sequence change by {diff:.3g}"
                " when the other sequences of the batch change"
            )

    # The metric: cross-entropy computed here, in float64, from the logits.
    total_nats = 0.0
    count = 0
    for i in range(0, windows.shape[0], batch):
        chunk = windows[i : i + batch]
        real = chunk.shape[0]
        if real < batch:  # pad with copies, score only the real rows
            chunk = torch.cat([chunk, chunk[:1].expand(batch - real, -1)])
        logits = run(chunk[:, :-1])[:real].double()
        if not torch.isfinite(logits).all():
            raise Refused("the model produced non-finite logits on validation data")
        logp = torch.log_softmax(logits, dim=-1)
        target = chunk[:real, 1:]
        total_nats -= float(logp.gather(-1, target.unsqueeze(-1)).sum())
        count += target.numel()
    val_bpb = total_nats / count / math.log(2)
    return {
        "val_bpb": val_bpb,
        "eval_tokens": count,
        "context": seq_len,
        "batch": batch,
        "causality_max_diff": max_diff,
        "num_params": sum(p.numel() for p in module.parameters()),
        "eval_seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bytes", type=int, default=131072)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wait", action="store_true", help="import, then wait for `go` on stdin")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.wait:
        importlib.import_module("torch._export.serde.serialize")  # what torch.export.load imports
        if sys.stdin.readline().strip() != "go":
            return 0
    try:
        result = evaluate(args.artifact, args.val, args.bytes, args.probes, args.seed)
    except Refused as e:
        atomic_write(args.out, json.dumps({"refused": str(e)}, indent=1))
        print(f"refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    atomic_write(args.out, json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

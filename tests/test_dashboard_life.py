"""The dashboard over a workspace's life (issue 24), in a real headless Chromium: a run that
has ended, a supervisor that works, the idea form for the proposers in use, the chart's
legend and layout, no stray requests; and `rsilab serve` started before the workspace exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from report_helpers import (
    chromium,
    free_port,
    port_open,
    real_workspace,
    running_server,
    wait_for,
)

from rsilab.config import resolve_task_dir
from rsilab.loop import lock
from rsilab.record.ledger import Ledger
from rsilab.report.dashboard import create_app
from rsilab.results import RunResult, Status
from rsilab.workspace import init_workspace, open_workspace


def _open(browser: Any, url: str, token: str, seen: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("request", lambda r: seen.append(r.url))
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}"))
    page.goto(f"{url}/?token={token}")
    page.wait_for_function("document.body.classList.contains('connected')")
    return page


def test_the_dashboard_after_the_run_and_while_one_works(tmp_path: Path) -> None:
    ws = open_workspace(real_workspace(tmp_path))  # a supervisor ran and stopped: logs are fresh
    led = Ledger(ws.ledger_path)
    led.set_setting("proposers", ["tuner"])  # as `rsilab run` records them
    far = led.add_experiment(parent=None, commit="e" * 40, proposer="tuner",
                             description="diverged", diff="")  # fmt: skip
    led.add_run(far, RunResult(Status.OK, 0, 50.0))
    led.add_decision(far, verdict="discard", reason="no gain", metric=50.0)
    app = create_app(ws, interval=0.2)
    seen: list[str] = []
    with running_server(app) as url, chromium() as browser:
        page = _open(browser, url, app.token, seen)
        # The run has ended: said, with since when, and where controls go now.
        state = page.inner_text("#state")
        assert "stopped at" in state and "stopped: " in state, state
        assert f"read by the next rsilab run {ws.root}" in " ".join(state.split()), state
        assert "no rsilab run works here" in page.inner_text("#running")  # no old log
        assert "idle" not in state
        # The tuner reads no free text: the form offers knob edits first, and says why.
        assert page.eval_on_selector("#form-idea select[name=kind]", "s => s.value") == "knobs"
        assert "free text waits in the queue" in page.inner_text("#idea-note")
        # The chart's legend names the off-scale triangle; the card has no empty space below.
        assert "Discarded, off the chart" in page.text_content("#chart svg.chart")
        gap = page.evaluate(
            "(() => { const c = document.getElementById('chart').closest('section');"
            " const s = c.querySelector('svg.chart').getBoundingClientRect();"
            " return c.getBoundingClientRect().bottom - s.bottom; })()"
        )
        assert gap < 40, gap
        # A supervisor takes the workspace: the state follows within a tick.
        with lock.hold(ws.state, ws.root):
            wait_for(lambda: "stopped" not in page.inner_text("#state-text"), what="running shown")
            assert "running" in page.inner_text("#state-text")
        wait_for(lambda: "stopped" in page.inner_text("#state-text"), what="stopped again")
    assert not [u for u in seen if "favicon" in u], seen
    assert not [m for m in seen if m.startswith("console error")], seen
    led.close()


def test_the_idea_form_defaults_to_free_text_with_an_llm(tmp_path: Path) -> None:
    ws = open_workspace(real_workspace(tmp_path))
    with Ledger(ws.ledger_path) as led:
        led.set_setting("proposers", ["llm@m1", "tuner"])
    app = create_app(ws, interval=0.2)
    with running_server(app) as url, chromium() as browser:
        page = _open(browser, url, app.token, [])
        assert page.eval_on_selector("#form-idea select[name=kind]", "s => s.value") == "text"
        assert page.query_selector("#idea-note") is None


def test_serve_waits_for_the_workspace_a_first_run_makes(
    tmp_path: Path,
    sigint_handler: None,  # the SIGINT that stops `serve` must not be ignored (a background job's)
) -> None:
    root = tmp_path / "lab"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RSILAB_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsilab.cli", "serve", str(root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        waiting = proc.stderr.readline()
        assert "waiting for" in waiting and "rsilab run" in waiting, waiting
        assert proc.poll() is None  # not "not an rsilab workspace"
        init_workspace(root, resolve_task_dir("toy"), "t")
        announced = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/?token=" in announced, announced
        # Stopped once it listens: a SIGINT in the middle of the server's start-up was
        # slow to end it on a loaded machine.
        wait_for(lambda: port_open(port), what=f"serve listening on {port}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

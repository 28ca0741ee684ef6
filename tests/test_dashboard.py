"""Tests for the live dashboard (rsilab serve): a real server, a real headless Chromium, a real
toy workspace; the test plays the supervisor through the ledger (Controls), as `rsilab run`
does from another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from report_helpers import (
    ARTIFACTS,
    DIFF,
    chromium,
    free_port,
    real_workspace,
    running_server,
    wait_for,
)

from rsilab.cli import main
from rsilab.loop import lock
from rsilab.loop.controls import Controls
from rsilab.proposers.queue import QueueProposer
from rsilab.record.ledger import Ledger
from rsilab.report.dashboard import create_app
from rsilab.results import RunResult, Status
from rsilab.workspace import open_workspace


def test_dashboard_live_updates_and_controls_in_chromium(tmp_path: Path) -> None:
    ws = open_workspace(real_workspace(tmp_path))
    led = Ledger(ws.ledger_path)  # the supervisor's side of the ledger
    sup = Controls(ws, led)
    supervising = lock.hold(ws.state, ws.root)  # as a supervisor does (the page tells)
    supervising.__enter__()
    first, second = led.experiments()[1:3]
    app = create_app(ws, interval=0.2)
    with running_server(app) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda d: d.accept())  # the confirm() of stop and veto
        page.goto(f"{url}/?token={app.token}")
        assert page.url == url + "/"  # the cookie holds the token: gone from the address bar
        assert page.inner_text(".n-experiments") == "5 experiments, 3 kept"
        page.wait_for_function("document.body.classList.contains('connected')")

        # A new experiment appears without a reload, first running (with its log), then judged.
        eid = led.add_experiment(parent=second.commit, commit="f" * 40, proposer="llm",
                                 description="live <b>one</b>", diff=DIFF)  # fmt: skip
        log = ws.run_dir(eid, 0) / "train.log"
        log.parent.mkdir(parents=True)
        log.write_text("step 1 loss 0.50\nstep 2 loss 0.40\n")
        page.wait_for_selector(f"#row-{eid}[data-status=running]")
        wait_for(lambda: "step 2 loss 0.40" in page.inner_text("#running"), what="the log tail")
        assert "live <b>one</b>" in page.inner_text("#running")
        led.add_run(eid, RunResult(Status.OK, 0, 0.5))
        led.add_decision(eid, verdict="discard", reason="no gain", metric=0.5)
        page.wait_for_selector(f"#row-{eid}[data-status=discard]")
        wait_for(
            lambda: page.inner_text(".n-experiments") == "6 experiments, 3 kept", what="new counts"
        )
        assert page.get_attribute("svg.chart", "data-points") == "6"

        # Queue an idea (free text, then a knob edit): files in the queue, actions for the supervisor.
        page.fill("#form-idea textarea[name=idea]", "Try a cosine schedule with warmup")
        _submit(page, "#btn-idea")
        [idea] = sup.poll()
        assert idea.action == "queue_idea" and idea.source == "dashboard@127.0.0.1"
        assert (ws.queue_dir / idea.payload["file"]).read_text().startswith("Try a cosine schedule")
        page.select_option("#form-idea select[name=kind]", "knobs")
        page.fill("#form-idea input[name=description]", "much less weight decay")
        page.fill("#form-idea textarea[name=idea]", "L2=0.005")
        _submit(page, "#btn-idea")
        [knobs] = sup.poll()
        assert knobs.payload["knobs"] == {"L2": 0.005}
        assert [p.name for p in QueueProposer(ws.queue_dir).pending()] == [knobs.payload["file"]]
        wait_for(lambda: "2 queued" in page.inner_text("#state"), what="the queue shown")

        # Pause and resume reach the supervisor; the page shows the state.
        page.fill("form[hx-post='/control/pause'] input[name=reason]", "reading the diffs")
        _submit(page, "#btn-pause")
        wait_for(sup.paused, what="paused")
        wait_for(
            lambda: "paused by dashboard@127.0.0.1" in page.inner_text("#state-text"),
            what="paused shown",
        )
        _submit(page, "#btn-resume")
        wait_for(lambda: not sup.paused(), what="resumed")
        page.fill("#form-note input[name=text]", "kept #3 looks <too> good")
        _submit(page, "#btn-note")
        page.wait_for_selector(".note")
        assert "kept #3 looks <too> good" in page.inner_text("#summary")

        # The diff viewer, and a veto from it: the supervisor applies it and the branch reverts.
        page.click(f"#row-{second.id}")
        page.wait_for_selector("#detail pre.diff")
        assert "+L2 = 0.01" in page.inner_text("#detail pre.diff")
        page.fill("#detail form.veto input[name=reason]", "gain too good to be true")
        _submit(page, "#detail form.veto button")
        actions = sup.poll()
        assert [a.action for a in actions] == ["pause", "resume", "note", "veto"]
        veto = actions[-1]
        assert veto.payload == {"experiment": second.id, "reason": "gain too good to be true"}
        sup.apply_veto(veto.payload["experiment"], veto.payload["reason"])
        assert ws.incumbent_commit() == first.commit
        page.wait_for_selector(f"#row-{second.id}[data-status=discard] .badge.human")
        wait_for(
            lambda: page.inner_text(".n-experiments") == "6 experiments, 2 kept", what="veto shown"
        )
        # The panels refresh on their own: under load the log may land a poll after the table.
        wait_for(lambda: "reset to #2" in page.inner_text("#human"), what="reset shown")

        # Stop after the current experiment.
        _submit(page, "#btn-stop")
        wait_for(sup.stop_requested, what="stop requested")
        wait_for(lambda: "stopping" in page.inner_text("#state-text"), what="stopping shown")
        page.click(f"#row-{first.id}")
        page.wait_for_selector("#detail form.veto")
        page.evaluate("document.getElementById('flash').innerHTML = ''")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    supervising.__exit__(None, None, None)
    events = [ev for ev in led.events() if ev.kind == "control"]
    assert len(events) == 7 and all(ev.source == "dashboard@127.0.0.1" for ev in events)


def _submit(page: Any, button: str) -> None:
    """Click a control's button and wait for the server's answer to this very click."""
    page.evaluate("document.getElementById('flash').innerHTML = ''")
    page.click(button)
    page.wait_for_selector("#flash-ok")


def _fetch(url: str, data: dict[str, str] | None = None, **headers: str) -> tuple[int, str, str]:
    """(status, set-cookie, body) of a real HTTP request; a POST when `data` is given."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(
        url, data=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("set-cookie", ""), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, "", err.read().decode()


def test_access_rules(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / ".rsilab").mkdir(parents=True)
    (root / ".rsilab" / "workspace.json").write_text(json.dumps({"tag": "t"}))
    ws = open_workspace(root)
    app = create_app(ws)
    assert len(app.token) >= 32 and create_app(ws).token != app.token  # one secret per serve
    with running_server(app) as url:
        port = url.rsplit(":", 1)[1]
        auth = {"Cookie": f"rsilab_token_{port}={app.token}", "HX_Request": "true"}
        # Even on loopback, nothing is served without the token.
        assert _fetch(url)[0] == 403
        assert _fetch(url + "/static/htmx.min.js")[0] == 403
        assert _fetch(url + "/?token=wrong")[0] == 403
        # The URL with the token: the cookie is set and the address loses the token.
        status, headers, _ = _fetch_raw(url + f"/?token={app.token}&x=1")
        assert status == 303 and headers["location"] == "/?x=1"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"rsilab_token_{port}={app.token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, headers, _ = _fetch_raw(url, **auth)
        assert status == 200 and headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert _fetch(url + "/static/htmx.min.js", **auth)[2].startswith("/*! htmx 2")
        assert _fetch(url + "/static/LICENSE.htmx", **auth)[0] == 404  # only the two scripts
        assert _fetch(url + "/experiment/99", **auth)[0] == 404
        # A cross-site form cannot send HX-Request: controls refuse it.
        assert _fetch(url + "/control/pause", {}, Cookie=auth["Cookie"])[0] == 403
        status, _, text = _fetch(url + "/control/veto", {"experiment": "1"}, **auth)
        assert status == 400 and "no experiment #1" in text
        # DNS rebinding: a loopback-bound dashboard answers to loopback names only.
        assert _fetch(url, Host="evil.example:8765", **auth)[0] == 400
        assert _fetch(url, Host=f"localhost:{port}", **auth)[0] == 200
    with running_server(create_app(ws, token="s3cret", loopback=False)) as url:
        assert _fetch(url)[0] == 403
        status, headers, _ = _fetch_raw(url + "/?token=s3cret", Host="10.1.2.3:8765")
        assert status == 303 and headers["set-cookie"].startswith("rsilab_token_8765=s3cret;")
        assert _fetch(url + "/static/sse.min.js", Cookie="rsilab_token_8765=nope")[0] == 403
        status, _, text = _fetch(
            url + "/control/note",
            {"text": "hi"},
            Host="10.1.2.3:8765",
            Cookie="rsilab_token_8765=s3cret",
            HX_Request="true",
        )
        assert status == 200 and "note: hi" in text
    assert Controls(ws, Ledger(ws.ledger_path)).poll()[0].source == "dashboard@127.0.0.1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch_raw(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """(status, headers with lower-case names, body) of a GET, redirects not followed."""
    req = urllib.request.Request(url, headers={k.replace("_", "-"): v for k, v in headers.items()})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read().decode()


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "--token" in out.output


def test_rsilab_serve_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / ".rsilab").mkdir(parents=True)
    (root / ".rsilab" / "workspace.json").write_text(json.dumps({"tag": "t"}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSILAB_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"  # the URL line arrives as soon as it is printed
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsilab.cli", "serve", str(root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        announced = proc.stdout.readline()  # printed before it listens ("" if it died)
        assert f"http://127.0.0.1:{port}/?token=" in announced, announced + proc.stdout.read()
        url = announced.split(" at ", 1)[1].strip()
        port_cookie = f"rsilab_token_{port}"

        def page_with_token() -> bool:
            token = url.split("?token=", 1)[1]
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/", headers={"Cookie": f"{port_cookie}={token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=1) as r:
                    return bool(r.status == 200 and b"sse-connect" in r.read())
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                return False

        wait_for(page_with_token, what="rsilab serve answering")
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no page
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert refused.value.code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib must talk to 127.0.0.1 directly, whatever proxy the machine has."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

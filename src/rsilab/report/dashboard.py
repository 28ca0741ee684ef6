"""The live dashboard. Owns: `rsilab serve`: a web app over one workspace while `rsilab run` works.

A Starlette app (run by uvicorn) that reads the workspace's ledger, the run folders and
the queue folder, and writes only control actions (through `controls.post`). The page is
server-rendered HTML; a vendored htmx with its server-sent-events extension (no CDN)
swaps in fragments the `/events` stream pushes when something changed: the counts, the
chart, the experiment rows, the running experiments with their log tail, the controls'
state and the human actions. A row opens its diff; the forms post controls.

How it notices changes made by another process: it watches the ledger's files
(`ledger.db` and its WAL: any commit changes their size or time) every `interval` seconds
and re-reads the ledger only then (and at least every few seconds); the log tail is read
on every tick.

Access: bound to a loopback address by default, where it also refuses requests whose Host
is not a loopback name (a web page elsewhere cannot reach it by DNS rebinding). Bound to
anything else it needs a token, and every request must carry it (`?token=` once, then a
cookie). Control posts must come from the page's own script (an `HX-Request` header, which
a cross-site form cannot send). Not covered: TLS (put a proxy in front for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from rsilab.errors import ConfigError, RsilabError
from rsilab.loop.controls import CURSOR_KEY, IDEA_SUFFIX, ControlError, actions, parse_knobs, post
from rsilab.notify import Notify
from rsilab.record.ledger import Ledger
from rsilab.report import html as H
from rsilab.report.templates import CSS, DASHBOARD_PAGE, TABLE_JS
from rsilab.results import Verdict
from rsilab.workspace import Workspace

COOKIE = "rsilab_token"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"htmx.min.js": "text/javascript", "sse.min.js": "text/javascript"}
LOG_LINES = 30  # lines of the log tail shown per running experiment
LOG_BYTES = 16_384  # read at most this much from the end of a log
REFRESH_S = 5.0  # re-read the ledger at least this often, whatever its files say
PING_S = 15.0  # an SSE comment this often keeps proxies from closing the stream

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (one-line ConfigError)."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} is reachable from other machines: give --token T "
                          "(every request must then carry it), or bind to 127.0.0.1")  # fmt: skip


class Dashboard:
    """What the handlers share: the workspace, one ledger connection, the fragments."""

    def __init__(self, ws: Workspace, ledger: Ledger) -> None:
        self.ws, self.ledger = ws, ledger
        self.title = f"rsilab · {ws.branch}"

    def signature(self) -> tuple[int, ...]:
        """Changes whenever any process commits to the ledger (cheap: two stat calls)."""
        out: list[int] = []
        for path in (self.ws.ledger_path, self.ws.ledger_path.with_name("ledger.db-wal")):
            try:
                st = path.stat()
                out += [st.st_mtime_ns, st.st_size]
            except FileNotFoundError:
                out += [0, 0]
        return tuple(out)

    def snapshot(self) -> H.Snapshot:
        return H.snapshot(self.ledger, self.title)

    def ledger_fragments(self) -> dict[str, str]:
        """The fragments that change only when the ledger does."""
        s = self.snapshot()
        return {"summary": H.summary_html(s) + H.notes_html(s), "chart": H.chart_html(s),
                "rows": H.rows_html(s, _row_attrs), "human": H.human_html(s)}  # fmt: skip

    def state_html(self) -> str:
        """Paused or running, a stop on its way, actions and ideas waiting."""
        acts = actions(self.ledger)
        cursor = int(self.ledger.get_setting(CURSOR_KEY, 0) or 0)
        pending = [a for a in acts if a.id > cursor]
        level = next((a for a in reversed(acts) if a.action in ("pause", "resume")), None)
        running = self.ledger.undecided()
        if any(a.action == "stop" for a in pending):
            state, cls = "stopping after the current experiment", "stopping"
        elif level is not None and level.action == "pause":
            state, cls = f"paused by {level.source} at {H.when(level.created_at)}", "paused"
            if level.payload.get("reason"):
                state += f": {level.payload['reason']}"
        elif running:
            state, cls = "running " + ", ".join(f"#{x.id}" for x in running), "running"
        else:
            state, cls = "idle (no experiment running)", "idle"
        parts = [
            f'<p>supervisor: <span class="state {cls}" id="state-text">{H.e(state)}</span></p>'
        ]
        if pending:
            parts.append(
                f'<p class="muted">{len(pending)} action(s) not yet read by the supervisor</p>'
            )
        queued = self.queued()
        if queued:
            names = ", ".join(H.e(p.name) for p in queued[:5]) + ("…" if len(queued) > 5 else "")
            parts.append(f'<p class="muted" id="queued">{len(queued)} queued: {names}</p>')
        return "".join(parts)

    def queued(self) -> list[Path]:
        q = self.ws.queue_dir
        if not q.is_dir():
            return []
        return sorted(
            p
            for p in q.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and (p.suffix in (".toml", ".patch", ".diff") or p.name.endswith(IDEA_SUFFIX))
        )

    def running_html(self) -> str:
        """Each running experiment with the tail of its newest run's train.log."""
        blocks = []
        now = time.time()
        for x in self.ledger.undecided():
            log = _newest_log(self.ws.state / "runs" / f"exp-{x.id:04d}")
            head = (f"<p><b>#{x.id}</b> {H.badge('running')} {H.e(x.proposer)}: {H.e(x.description)} "
                    f'<span class="muted">started {H.duration(now - x.started_at)} ago'
                    f'{", " + H.e(log.parent.name) if log else ""}</span></p>')  # fmt: skip
            blocks.append(head + _tail_html(log))
        if not blocks:
            log = _newest_log(self.ws.state / "runs")
            if (
                log is not None and now - log.stat().st_mtime < 60
            ):  # e.g. a recheck of the incumbent
                blocks.append(f'<p class="muted">{H.e(log.parent.parent.name)}/{H.e(log.parent.name)}</p>'
                              + _tail_html(log))  # fmt: skip
        return "".join(blocks) or '<p class="muted">nothing running</p>'

    def experiment_html(self, experiment_id: int) -> str:
        """The diff viewer: one experiment in full, with a veto form when it is a kept change."""
        x = self.ledger.experiment(experiment_id)
        row = H.Row(x, self.ledger.runs(x.id), self.ledger.costs(x.id), self.ledger.decisions(x.id))
        out = H.experiment_html(row)
        if x.kind != "baseline" and x.status == Verdict.KEEP:
            out += ('<form hx-post="/control/veto" hx-target="#flash" class="veto" '
                    'hx-confirm="Revert this kept change?">'
                    f'<input type="hidden" name="experiment" value="{x.id}">'
                    '<input type="text" name="reason" placeholder="why veto it" size="24"> '
                    f'<button class="danger">Veto #{x.id}</button></form>')  # fmt: skip
        return out

    def page(self) -> str:
        s = self.snapshot()
        subtitle = f"{self.ws.root} · metric {s.metric} ({'lower' if s.direction == 'min' else 'higher'} is better)"
        return DASHBOARD_PAGE.format(
            title=H.e(self.title), subtitle=H.e(subtitle), css=CSS, js=TABLE_JS,
            summary=H.summary_html(s) + H.notes_html(s), chart=H.chart_html(s), state=self.state_html(),
            running=self.running_html(), table=H.table_html(s, _row_attrs, ' sse-swap="rows"'),
            human=H.human_html(s),
        )  # fmt: skip


def _row_attrs(r: H.Row) -> str:
    return (
        f' hx-get="/experiment/{r.exp.id}" hx-target="#detail" hx-swap="innerHTML show:#detail:top"'
    )


def _newest_log(folder: Path) -> Path | None:
    logs = [p for p in folder.glob("**/train.log")] if folder.is_dir() else []
    return max(logs, key=lambda p: p.stat().st_mtime, default=None)


def _tail_html(log: Path | None) -> str:
    if log is None or not log.is_file():
        return '<p class="muted">no log yet</p>'
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - LOG_BYTES))
        text = f.read().decode(errors="replace")
    lines = text.splitlines()[-LOG_LINES:]
    return f'<pre class="log">{H.e(chr(10).join(lines)) or "(empty)"}</pre>'


def _payload(action: str, form: dict[str, str]) -> dict[str, Any]:
    """A control action's payload from the dashboard's form fields."""
    if action != "queue_idea":
        return {k: form[k] for k in ("reason", "text", "experiment") if form.get(k)}
    idea, kind, desc = form.get("idea", ""), form.get("kind", "text"), form.get("description", "")
    if kind == "knobs":
        return {"knobs": parse_knobs(idea), "description": desc}
    if kind == "patch":
        return {"patch": idea, "description": desc}
    return {"text": idea, "description": desc}


def create_app(ws: Workspace, *, token: str | None = None, loopback: bool = True,
               interval: float = 0.5) -> Any:  # fmt: skip
    """The ASGI app. `loopback`: the server listens on a loopback address only (then
    requests must name a loopback host); `token`: required on every request when given."""
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise ConfigError(
            "rsilab serve needs Starlette and uvicorn: pip install 'rsilab[serve]'"
        ) from None

    ledger = Ledger(ws.ledger_path)
    dash = Dashboard(ws, ledger)

    async def index(request: Request) -> Response:
        return HTMLResponse(await run_in_threadpool(dash.page))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found", 404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    async def experiment(request: Request) -> Response:
        try:
            body = await run_in_threadpool(dash.experiment_html, int(request.path_params["id"]))
        except RsilabError as err:  # an unknown id: say so in the panel
            return HTMLResponse(f'<p class="err">{H.e(err)}</p>', 404)
        return HTMLResponse(body)

    async def control(request: Request) -> Response:
        if request.headers.get("hx-request") != "true":
            return PlainTextResponse(
                "controls are posted by the dashboard page (HX-Request header)", 403
            )
        action = request.path_params["action"]
        raw = parse_qs((await request.body()).decode(errors="replace"), keep_blank_values=True)
        form = {k: v[-1] for k, v in raw.items()}
        source = f"dashboard@{request.client.host if request.client else 'unknown'}"
        try:
            done = await run_in_threadpool(
                lambda: post(ledger, action, _payload(action, form), source)
            )
        except ControlError as err:
            return HTMLResponse(f'<p class="err">{H.e(err)}</p>', 400)
        return HTMLResponse(f'<p class="ok" id="flash-ok">{H.e(done.message)} '
                            f'<span class="muted">recorded at {H.when(done.created_at)}</span></p>')  # fmt: skip

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            sent: dict[str, str] = {}
            sig: tuple[int, ...] | None = None
            read_at = last_out = 0.0
            yield "retry: 2000\n\n"
            while True:
                now = time.monotonic()
                frags: dict[str, str] = {}
                new_sig = await run_in_threadpool(dash.signature)
                if new_sig != sig or now - read_at > REFRESH_S:
                    frags.update(await run_in_threadpool(dash.ledger_fragments))
                    sig, read_at = new_sig, now
                frags["running"] = await run_in_threadpool(dash.running_html)
                frags["state"] = await run_in_threadpool(dash.state_html)
                for name, body in frags.items():
                    if sent.get(name) != body:
                        sent[name] = body
                        last_out = now
                        yield (
                            f"event: {name}\n"
                            + "".join(f"data: {line}\n" for line in body.split("\n"))
                            + "\n"
                        )
                if now - last_out > PING_S:
                    last_out = now
                    yield ": ping\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/experiment/{id:int}", experiment),
        Route("/control/{action}", control, methods=["POST"]),
        Route("/events", events),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        ledger.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, token=token, loopback=loopback)


class Guard:
    """ASGI middleware: the Host check (loopback binding) and the token (cookie or query)."""

    def __init__(self, app: Any, *, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback and not is_loopback(_hostname(headers.get("host", ""))):
            await _plain(send, 400, "this dashboard answers to localhost / 127.0.0.1 only")
            return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        cookies = _cookies(headers.get("cookie", ""))
        given_query = (query.get("token") or [""])[-1]
        given = given_query or cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            await _plain(send, 401, "token required: open the URL with ?token=...")
            return
        if not given_query:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


def _hostname(host_header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:8765' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


async def _plain(send: Send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
    await send({"type": "http.response.body", "body": text.encode() + b"\n"})


def serve(ws: Workspace, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          announce: Notify = print) -> None:  # fmt: skip
    """Run the dashboard until Ctrl-C."""
    check_binding(host, token)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "rsilab serve needs Starlette and uvicorn: pip install 'rsilab[serve]'"
        ) from None
    app = create_app(ws, token=token, loopback=is_loopback(host))
    shown = f"[{host}]" if ":" in host else host
    announce(
        f"dashboard for {ws.root} at http://{shown}:{port}/" + (f"?token={token}" if token else "")
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)

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

Access (every request, loopback or not): a secret token, generated per `rsilab serve`
unless given, like Jupyter's. The printed URL carries it (`?token=`); the first request
sets it as an HttpOnly, SameSite=Strict cookie and is redirected to the same address
without it, so it does not stay in the address bar or the history. Without the token (or
with a wrong one) every request gets 403: another user of this machine can neither read
the ledger through the pages nor post controls. Bound to a loopback address it also
refuses a Host that is not a loopback name (DNS rebinding). A control post must also come
from the page itself: an `HX-Request` header (a cross-site form cannot send one), and an
`Origin` (and `Sec-Fetch-Site`), when the browser sends them, naming this very server.
Every response forbids framing (`X-Frame-Options: DENY`, `frame-ancestors 'none'`) and
sends no Referer. A queued patch is only written to the queue folder, where the queue
proposer validates it as any other queued file. Not covered: TLS (put a proxy in front).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from rsilab.errors import ConfigError, RsilabError
from rsilab.fsio import tail_regular
from rsilab.loop import lock
from rsilab.loop.controls import (
    CURSOR_KEY,
    IDEA_SUFFIX,
    ControlError,
    actions,
    live_stop,
    parse_knobs,
    post,
)
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
TEXT_READERS = ("llm", "agent")  # proposers that read free-text ideas (*.idea.md)

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


def new_token() -> str:
    """A fresh secret for one `rsilab serve` (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


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

    def supervising(self) -> bool:
        """Whether an `rsilab run` (a supervisor) works on this workspace now (its lock)."""
        return lock.held(self.ws.state)

    def state_html(self) -> str:
        """Stopped (since when, why), paused or running, a stop on its way, actions and ideas
        waiting."""
        acts = actions(self.ledger)
        cursor = int(self.ledger.get_setting(CURSOR_KEY, 0) or 0)
        pending = [a for a in acts if a.id > cursor]
        level = next((a for a in reversed(acts) if a.action in ("pause", "resume")), None)
        running = self.ledger.undecided()
        if not self.supervising():
            ended = self.ledger.events_after(0, "stop")
            state, cls = "stopped: no `rsilab run` is running", "stopped"
            if ended:
                state = f"stopped at {H.when(ended[-1].created_at)} ({ended[-1].message})"
            if level is not None and level.action == "pause":
                state += f"; paused by {level.source} (the next run starts paused)"
            parts = [
                f'<p>supervisor: <span class="state {cls}" id="state-text">{H.e(state)}</span></p>',
                '<p class="muted" id="state-next">Controls posted now are read by the next '
                f"<code>rsilab run {H.e(self.ws.root)}</code> (a stop is cleared then).</p>",
            ]
            if pending:
                parts.append(f'<p class="muted">{len(pending)} action(s) waiting for it</p>')
            return "".join(parts) + self._queued_html()
        if any(live_stop(self.ledger, a) for a in pending):
            state, cls = "stopping after the current experiment", "stopping"
        elif level is not None and level.action == "pause":
            state, cls = f"paused by {level.source} at {H.when(level.created_at)}", "paused"
            if level.payload.get("reason"):
                state += f": {level.payload['reason']}"
        elif running:
            state, cls = "running " + ", ".join(f"#{x.id}" for x in running), "running"
        else:
            state, cls = "running, between experiments (or re-checking the incumbent)", "idle"
        parts = [
            f'<p>supervisor: <span class="state {cls}" id="state-text">{H.e(state)}</span></p>'
        ]
        if pending:
            parts.append(
                f'<p class="muted">{len(pending)} action(s) not yet read by the supervisor</p>'
            )
        return "".join(parts) + self._queued_html()

    def _queued_html(self) -> str:
        queued = self.queued()
        if not queued:
            return ""
        names = ", ".join(H.e(p.name) for p in queued[:5]) + ("…" if len(queued) > 5 else "")
        return f'<p class="muted" id="queued">{len(queued)} queued: {names}</p>'

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
        runs = self.ws.state / "runs"
        for x in self.ledger.undecided():
            found = _newest_log(runs / f"exp-{x.id:04d}", 1)
            log = found[0] if found else None
            head = (f"<p><b>#{x.id}</b> {H.badge('running')} {H.e(x.proposer)}: {H.e(x.description)} "
                    f'<span class="muted">started {H.duration(now - x.started_at)} ago'
                    f'{", " + H.e(log.parent.name) if log else ""}</span></p>')  # fmt: skip
            blocks.append(head + _tail_html(log, runs))
        if not blocks and self.supervising():  # never a finished run's log once it stopped
            found = _newest_log(runs, 2)
            if found is not None and now - found[1] < 60:  # e.g. a recheck of the incumbent
                log = found[0]
                blocks.append(f'<p class="muted">{H.e(log.parent.parent.name)}/{H.e(log.parent.name)}</p>'
                              + _tail_html(log, runs))  # fmt: skip
        if blocks:
            return "".join(blocks)
        if not self.supervising():
            return '<p class="muted">nothing running: no <code>rsilab run</code> works here</p>'
        return '<p class="muted">nothing running</p>'

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
            human=H.human_html(s), **self.idea_form(),
        )  # fmt: skip

    def idea_form(self) -> dict[str, str]:
        """The idea form's kinds, the default first: free text only when a proposer that
        reads it (llm, agent) is in use (as the last `rsilab run` recorded), else knob
        edits, with a line on what happens to free text meanwhile."""
        used = [str(p) for p in self.ledger.get_setting("proposers", []) or []]
        text_ok = not used or any(p.split("@")[0] in TEXT_READERS for p in used)
        kinds = [("text", "free text (for LLM and agent proposers)"),
                 ("knobs", "knob edit (NAME=VALUE ...)"), ("patch", "patch (unified diff)")]  # fmt: skip
        if not text_ok:
            kinds = kinds[1:] + kinds[:1]
        options = "".join(f'<option value="{k}">{H.e(label)}</option>' for k, label in kinds)
        note = ""
        if not text_ok:
            note = (f'<p class="muted" id="idea-note">The proposers in use ({H.e(", ".join(used))}) '
                    "take knob edits and patches; free text waits in the queue until an "
                    "<code>llm</code> or <code>agent</code> proposer runs.</p>")  # fmt: skip
        return {"idea_kinds": options, "idea_note": note}


def _row_attrs(r: H.Row) -> str:
    return (
        f' hx-get="/experiment/{r.exp.id}" hx-target="#detail" hx-swap="innerHTML show:#detail:top"'
    )


def _newest_log(folder: Path, depth: int) -> tuple[Path, float] | None:
    """The newest `train.log` `depth` folders below `folder` (runs/exp-N/run-K/train.log:
    2 from runs/, 1 from exp-N/) with its mtime. Run folders are written by runs: a folder
    or log that is a symlink is skipped (lstat), never followed."""
    found: list[tuple[Path, float]] = []
    level = [folder] if folder.is_dir() and not folder.is_symlink() else []
    for _ in range(depth):
        level = [p for d in level for p in _subfolders(d)]
    for d in level:
        log = d / "train.log"
        with contextlib.suppress(OSError):
            st = log.lstat()
            if stat.S_ISREG(st.st_mode):
                found.append((log, st.st_mtime))
    return max(found, key=lambda f: f[1], default=None)


def _subfolders(folder: Path) -> list[Path]:
    """The folders in `folder`, links left out; none when it went away meanwhile."""
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _tail_html(log: Path | None, base: Path) -> str:
    """The log's last lines, read without following a link below `base` (the runs folder,
    see fsio.tail_regular): a run may leave a link to a secret in place of its log."""
    data = tail_regular(log, LOG_BYTES, base=base) if log is not None else None
    if data is None:
        return '<p class="muted">no log yet</p>'
    lines = data.decode(errors="replace").splitlines()[-LOG_LINES:]
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
    """The ASGI app (a `Guard`; its `.token` is the secret in force). `loopback`: the server
    listens on a loopback address only (then requests must name a loopback host); `token`:
    required on every request, a new one (`new_token`) when not given."""
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
    return Guard(app, token=token or new_token(), loopback=loopback)


class Guard:
    """ASGI middleware in front of every request: the Host check (loopback binding), the
    token (query or cookie), the origin of state-changing requests, and the headers that
    keep the pages out of frames. See the module docstring for the rules."""

    def __init__(self, app: Any, *, token: str, loopback: bool) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.app, self.token, self.loopback = app, token, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket (or anything else) gets past the checks
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.loopback and not is_loopback(_hostname(host)):
            await _plain(send, 400, "this dashboard answers to localhost / 127.0.0.1 only")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        cookie = _cookie_name(host)
        given_query = (query.get("token") or [""])[-1]
        given = given_query or _cookies(headers.get("cookie", "")).get(cookie, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            await _plain(
                send, 403, "token required: open the URL rsilab serve printed (?token=...)"
            )
            return
        if scope["method"] not in ("GET", "HEAD"):
            refused = _foreign(headers, host)
            if refused:
                await _plain(send, 403, refused)
                return
        set_cookie = (
            f"{cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()
            if given_query
            else None
        )
        if given_query and scope["method"] == "GET":
            # The cookie holds it from now on: the same address without it, so the secret
            # leaves the address bar (and the history) at once.
            rest = [(k, v) for k, vs in query.items() if k != "token" for v in vs]
            location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
            await _respond(send, 303, b"", [(b"location", location.encode("latin-1")),
                                             (b"set-cookie", set_cookie or b"")])  # fmt: skip
            return

        async def guarded(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [*SECURITY_HEADERS, *([(b"set-cookie", set_cookie)] if set_cookie else [])]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, guarded)


# On every response: no framing (clickjacking of the controls), no Referer (the address
# may carry the token on a first visit), no content sniffing.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


def _foreign(headers: dict[str, str], host: str) -> str:
    """Why a state-changing request comes from another site ("" when it does not): an
    `Origin` other than this server's own, or `Sec-Fetch-Site` saying cross-site. Clients
    that send neither (curl, scripts with the token) are let through: the token suffices."""
    origin = headers.get("origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"refused: a request from {origin!r}, not from this dashboard"
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"refused: a {site} request, not from this dashboard"
    return ""


def _cookie_name(host_header: str) -> str:
    """The token's cookie, per port: browsers share cookies across the ports of a host,
    and two dashboards on one machine must not overwrite each other's token."""
    port = host_header.rsplit(":", 1)[-1] if not host_header.endswith("]") else ""
    return f"{COOKIE}_{port}" if port.isdigit() else COOKIE


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
    await _respond(send, status, text.encode() + b"\n",
                   [(b"content-type", b"text/plain; charset=utf-8")])  # fmt: skip


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A whole response from the guard itself, with the security headers."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, *SECURITY_HEADERS, (b"cache-control", b"no-store")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def serve(ws: Workspace, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          announce: Notify = print) -> None:  # fmt: skip
    """Run the dashboard until Ctrl-C; `announce` gets its URL with the token (a new one
    when none is given)."""
    check_binding(host, token)
    token = token or new_token()
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "rsilab serve needs Starlette and uvicorn: pip install 'rsilab[serve]'"
        ) from None
    app = create_app(ws, token=token, loopback=is_loopback(host))
    shown = f"[{host}]" if ":" in host else host
    announce(f"dashboard for {ws.root} at http://{shown}:{port}/?token={token}")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)

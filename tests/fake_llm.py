"""A fake LLM server for tests. Owns: a real HTTP server on 127.0.0.1 speaking both wire formats.

    with FakeLLM() as llm:
        llm.queue("first answer", Scripted(status=429, headers={"Retry-After": "3"}), "second")
        client = ChatClient("openai", llm.url_openai, "m", None)       # or llm.url_anthropic
        ...
        llm.requests[0].json["messages"]

Replies are served in order to whichever endpoint is hit (`POST /v1/chat/completions`:
OpenAI Chat Completions; `POST /v1/messages`: Anthropic Messages) and rendered in that
endpoint's exact wire format, errors in that vendor's error shape. With the queue empty
the server answers HTTP 500 {"error": "no scripted reply"}; an unknown path gets a 404
and consumes nothing. Every request is recorded. `Scripted` can also delay (a hang),
drop the connection without answering, or send a raw body verbatim.

Not covered: streaming (SSE), tools, anything but POST.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_OPENAI_ERRORS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Scripted:
    """One scripted answer. `text` is the reply text (status 200) or the error message."""

    status: int = 200
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds the server waits before answering (a hang, for timeout tests)
    drop: bool = False  # close the connection without any response
    raw: bytes | None = None  # send this body verbatim (with `status` and `headers`)
    tokens_in: int = 0  # reported usage
    tokens_out: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any  # the parsed body; None when it was not JSON
    body: bytes


def openai_body(s: Scripted, model: str) -> dict[str, Any]:
    if s.status != 200:
        kind = _OPENAI_ERRORS.get(s.status, "server_error")
        return {
            "error": {
                "message": s.text or f"HTTP {s.status}",
                "type": kind,
                "param": None,
                "code": None,
            }
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": s.text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": s.tokens_in,
            "completion_tokens": s.tokens_out,
            "total_tokens": s.tokens_in + s.tokens_out,
        },
    }


def anthropic_body(s: Scripted, model: str) -> dict[str, Any]:
    if s.status != 200:
        kind = _ANTHROPIC_ERRORS.get(
            s.status, "api_error" if s.status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": s.text or f"HTTP {s.status}"}}
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": s.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": s.tokens_in, "output_tokens": s.tokens_out},
    }


class FakeLLM:
    """The server; starts at construction, stops on `close()` / leaving the `with` block."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()  # open keep-alive connections, cut on close()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-llm-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url_openai(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def url_anthropic(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Scripted | str) -> None:
        with self._lock:
            self._replies.extend(Scripted(text=r) if isinstance(r, str) else r for r in replies)

    @property
    def pending(self) -> int:
        """Scripted replies not served yet."""
        with self._lock:
            return len(self._replies)

    def close(self) -> None:
        self._closing.set()  # wakes handlers sleeping on a `delay`
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, request: RecordedRequest) -> Scripted | None:
        with self._lock:
            self.requests.append(request)
            return self._replies.popleft() if self._replies else None


def _make_handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def handle(self) -> None:
            with fake._lock:
                fake._connections.add(self.connection)
            try:
                super().handle()
            except OSError:
                pass  # the client went away (a timed-out or closed request), or close() cut it
            finally:
                with fake._lock:
                    fake._connections.discard(self.connection)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            request = RecordedRequest(
                "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, parsed, body
            )
            path = self.path.split("?")[0]
            if path == "/v1/chat/completions":
                render = openai_body
            elif path == "/v1/messages":
                render = anthropic_body
            else:
                with fake._lock:
                    fake.requests.append(request)
                return self._send(
                    404,
                    json.dumps(
                        {
                            "error": {
                                "message": f"unknown path {path}",
                                "type": "invalid_request_error",
                            }
                        }
                    ).encode(),
                    {},
                )
            scripted = fake._take(request)
            if scripted is None:
                return self._send(500, json.dumps({"error": "no scripted reply"}).encode(), {})
            if scripted.delay and fake._closing.wait(scripted.delay):
                scripted = Scripted(drop=True)
            if scripted.drop:
                self.close_connection = True
                return
            model = parsed.get("model", "fake") if isinstance(parsed, dict) else "fake"
            raw = (
                scripted.raw
                if scripted.raw is not None
                else json.dumps(render(scripted, model)).encode()
            )
            self._send(scripted.status, raw, scripted.headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            if not any(k.lower() == "content-type" for k in headers):
                self.send_header("Content-Type", "application/json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler

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
drop the connection without answering, send a raw body verbatim, end as truncated
(`finish="length"`), answer by a tool call (Anthropic `tool_input`), or compute its text
from the messages as the model sees them (`respond`).

Like a local model server it can also have a window (`n_ctx`): it counts a request's
tokens as characters / `chars_per_token` (2.5: more tokens than rsilab's estimate, as real
tokenizers give) plus 8 a message, and answers a request whose prompt plus max_tokens is
over the window with HTTP 400 in the exact shape of `flavour` ("llama-cpp-python" and
"vllm": OpenAI's "maximum context length" message; "llama.cpp": its
exceed_context_size_error with n_ctx and n_prompt_tokens), consuming nothing. With
`drop_system`, its chat template drops the system message (llama-cpp-python's Gemma
format does). `refuse_formats` names response_format types it answers with
llama-cpp-python's HTTP 500 validation error. The introspection endpoints (`GET /props`,
`GET /v1/models`, `POST /api/show`, `POST /tokenize`, `POST /extras/tokenize/count`) are
recorded in `probes`, answered from `props` / `models` / `tokenizer` or with a 404.

Not covered: streaming (SSE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
from collections import deque
from collections.abc import Callable
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
    tokens_in: int = 0  # reported usage (0 with a window: the server's own count)
    tokens_out: int = 0
    finish: str = "stop"  # "length": the answer hit max_tokens
    tool_input: dict[str, Any] | None = None  # Anthropic: answer with this tool call
    # The text, from the messages as the model sees them (system dropped with drop_system).
    respond: Callable[[list[dict[str, Any]]], str] | None = None


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
                "finish_reason": s.finish,
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
        "content": [{"type": "text", "text": s.text}]
        if s.tool_input is None
        else [{"type": "tool_use", "id": "toolu_fake", "name": "answer", "input": s.tool_input}],
        "stop_reason": "max_tokens"
        if s.finish == "length"
        else "tool_use"
        if s.tool_input is not None
        else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": s.tokens_in, "output_tokens": s.tokens_out},
    }


PROBE_PATHS = ("/props", "/v1/models", "/api/show", "/tokenize", "/extras/tokenize/count")


def overflow_body(flavour: str, n_ctx: int, prompt: int, completion: int) -> dict[str, Any]:
    """The HTTP 400 body of a real server for a prompt over its window."""
    if flavour == "llama.cpp":
        return {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt,
                "n_ctx": n_ctx,
            }
        }
    return {  # llama-cpp-python, vLLM and OpenAI say it in these words
        "error": {
            "message": f"This model's maximum context length is {n_ctx} tokens. However, you "
            f"requested {prompt + completion} tokens ({prompt} in the messages, {completion} "
            "in the completion). Please reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


class FakeLLM:
    """The server; starts at construction, stops on `close()` / leaving the `with` block."""

    def __init__(
        self,
        *,
        n_ctx: int | None = None,
        flavour: str = "llama-cpp-python",
        chars_per_token: float = 2.5,
        drop_system: bool = False,
        refuse_formats: tuple[str, ...] = (),
        props: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        tokenizer: bool = False,
    ) -> None:
        self.n_ctx, self.flavour, self.chars_per_token = n_ctx, flavour, chars_per_token
        self.drop_system, self.refuse_formats = drop_system, refuse_formats
        self.props, self.models, self.tokenizer = props, models, tokenizer
        self.probes: list[RecordedRequest] = []
        self.overflows = 0  # requests answered with a context-length 400
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

    def count(self, text: str) -> int:
        """The server's token count of `text`."""
        return int(len(text) / self.chars_per_token) + 1

    def seen(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages as the model sees them after the chat template."""
        msgs = list(body.get("messages") or [])
        if isinstance(body.get("system"), str):
            msgs = [{"role": "system", "content": body["system"]}, *msgs]
        if self.drop_system:
            msgs = [m for m in msgs if m.get("role") != "system"]
        return msgs

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        return sum(self.count(str(m.get("content", ""))) + 8 for m in self.seen(body))

    def _probe(self, method: str, path: str, parsed: Any) -> tuple[int, Any]:
        if path == "/props" and method == "GET" and self.props is not None:
            return 200, self.props
        if path == "/v1/models" and method == "GET":
            return 200, self.models or {
                "object": "list",
                "data": [{"id": "fake", "object": "model", "owned_by": "me"}],
            }
        if path == "/extras/tokenize/count" and self.tokenizer and isinstance(parsed, dict):
            return 200, {"count": self.count(str(parsed.get("input", "")))}  # llama-cpp-python
        if path == "/tokenize" and self.tokenizer and isinstance(parsed, dict):
            return 200, {"tokens": [0] * self.count(str(parsed.get("content", "")))}  # llama.cpp
        return 404, {"detail": "Not Found"}

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

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            request = RecordedRequest(
                method, self.path, {k.lower(): v for k, v in self.headers.items()}, parsed, body
            )
            path = self.path.split("?")[0]
            if path in PROBE_PATHS:
                with fake._lock:
                    fake.probes.append(request)
                status, answer = fake._probe(method, path, parsed)
                return self._send(status, json.dumps(answer).encode(), {})
            if path in ("/v1/chat/completions", "/v1/messages") and isinstance(parsed, dict):
                refused = self._refusal(parsed)
                if refused is not None:
                    with fake._lock:
                        fake.requests.append(request)
                    return self._send(*refused)
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
            if isinstance(parsed, dict):
                if scripted.respond is not None:
                    scripted = dataclasses.replace(
                        scripted, text=scripted.respond(fake.seen(parsed))
                    )
                if fake.n_ctx is not None and not scripted.tokens_in:
                    scripted = dataclasses.replace(
                        scripted,
                        tokens_in=fake.prompt_tokens(parsed),
                        tokens_out=scripted.tokens_out or fake.count(scripted.text),
                    )
            raw = (
                scripted.raw
                if scripted.raw is not None
                else json.dumps(render(scripted, model)).encode()
            )
            self._send(scripted.status, raw, scripted.headers)

        def _refusal(self, parsed: dict[str, Any]) -> tuple[int, bytes, dict[str, str]] | None:
            """A context-length 400 or a refused answer format, as the real servers say it."""
            fmt = parsed.get("response_format")
            if isinstance(fmt, dict) and fmt.get("type") in fake.refuse_formats:
                message = (
                    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                    f"'response_format', 'type'), 'msg': \"Input should be 'text' or "
                    f"'json_object'\", 'input': '{fmt.get('type')}'}}"
                )
                error = {"message": message, "type": "internal_server_error", "param": None}
                return 500, json.dumps({"error": {**error, "code": None}}).encode(), {}
            if fake.n_ctx is None:
                return None
            prompt = fake.prompt_tokens(parsed)
            completion = int(parsed.get("max_tokens") or 0)
            if prompt + completion <= fake.n_ctx:
                return None
            with fake._lock:
                fake.overflows += 1
            body = overflow_body(fake.flavour, fake.n_ctx, prompt, completion)
            return 400, json.dumps(body).encode(), {}

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

"""A thin chat client. Owns: the two wire formats, retries, waiting out outages, key hygiene.

`ChatClient.complete(system, messages)` sends one chat request over httpx and returns a
`Reply` (text, token counts, seconds). Two wire formats, exactly as the vendors document
them: OpenAI Chat Completions (`POST {base_url}/chat/completions`; OpenAI, vLLM, ollama,
llama.cpp, LM Studio, OpenRouter) and Anthropic Messages (`POST {base_url}/v1/messages`).
A request may ask for a structured answer (`AnswerFormat`): a JSON schema through each
wire's own field (`response_format` json_schema, or llama-cpp-python's json_object with a
schema; Anthropic: one forced tool), a per-request `max_tokens`, and the system prompt
folded into the first user turn (for chat templates that drop the system role).
`probe()` asks the server one question (its window, its tokenizer) without retrying.

Faults retrying can fix (429, 408, 409, 5xx, timeouts, refused/reset/dropped connections,
a 200 whose body is not JSON) are retried forever by default, with backoff 1, 2, 4 ... s
capped at 300 s (or the server's Retry-After); each wait is announced through `notify`,
and `should_stop()` ends a wait with `Stopped`. Faults it cannot fix (400, 401, 403, 404,
other 4xx, a reply of the wrong shape) raise `ProviderError` at once, a one-line message
saying what to do; a prompt over the model's window is a `ContextOverflow` (with the window
and the prompt's size when the server names them), a refused answer format a
`FormatRefused`, so the proposer can shrink or fall back instead of stopping the run.
The API key never appears in a message, log line or repr.

Not covered: prompts and parsing answers (prompt.py, llm.py), streaming, images.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from rsilab.config import LLMSpec
from rsilab.errors import ConfigError, RsilabError
from rsilab.notify import Notify, silent

log = logging.getLogger(__name__)

Api = Literal["openai", "anthropic"]
ANTHROPIC_VERSION = "2023-06-01"
MAX_BACKOFF = 300.0  # seconds: the longest wait between attempts (unless Retry-After asks more)
MAX_RETRY_AFTER = 3600.0  # seconds: a longer Retry-After is taken as this
VENDOR_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
DEFAULT_MODELS: dict[str, str] = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}
URL_ENV: dict[str, str] = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
KEY_ENV: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
MODEL_ENV = "RSILAB_LLM_MODEL"
# The variables `configured()` looks at: any one set (non-empty) means "an LLM is configured".
CONFIGURED_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    MODEL_ENV,
)
_RETRY_STATUS = {408, 409, 429}
_HINTS = {
    400: "check the model name and llm.max_tokens",  # a context-length 400: _OVERFLOW_HINT
    404: "check the model name and llm.base_url",
    413: "the prompt is too large; lower llm.context_tokens",
    422: "check the model name and llm.max_tokens",
}


# How servers say the prompt plus max_tokens is over the model's window, with the figures
# they give: OpenAI, vLLM and llama-cpp-python ("This model's maximum context length is N
# tokens. However, you requested M tokens (P in the messages, C in the completion)"),
# newer vLLM ("... your request has P input tokens"), llama.cpp ("the request exceeds the
# available context size", with n_ctx / n_prompt_tokens in the error object) and
# Anthropic ("prompt is too long: P tokens > N maximum").
_WINDOW_RE = (
    re.compile(r"maximum context length is (\d+)"),
    re.compile(r"tokens > (\d+) maximum"),
    re.compile(r"context window of (\d+)"),
)
_PROMPT_RE = (
    re.compile(r"\((\d+) in the messages"),
    re.compile(r"request has (\d+) input tokens"),
    re.compile(r"prompt is too long: (\d+) tokens"),
    re.compile(r"Requested tokens \((\d+)\)"),
)
_OVERFLOW_WORDS = (
    "context length",
    "context_length",
    "context size",
    "context window",
    "prompt is too long",
    "exceed_context",
    "max context",
)


@dataclass(frozen=True)
class AnswerFormat:
    """A structured answer: a JSON object following `schema`, asked in the wire's own way.

    `style`: "json_schema" (OpenAI's `response_format` type json_schema; vLLM, llama.cpp's
    own server, ollama and LM Studio take it too), "json_object" (llama-cpp-python's
    `response_format` {"type": "json_object", "schema": ...}), or "tool" (Anthropic: one
    tool the model must call, whose input is the answer). The reply's text is the JSON.
    """

    name: str
    schema: Mapping[str, Any]
    style: Literal["json_schema", "json_object", "tool"] = "json_schema"
    description: str = "The answer"


@dataclass(frozen=True)
class Reply:
    text: str
    tokens_in: int
    tokens_out: int
    model: str  # as the server names it (falls back to the requested model)
    seconds: float  # wall time of complete(), retries and waits included
    # The answer hit max_tokens (finish_reason "length" / stop_reason "max_tokens")
    truncated: bool = False
    estimated: bool = False  # the server sent no usage: the token counts are estimates


class ProviderError(RsilabError):
    """The LLM endpoint refused in a way retrying cannot fix (bad key, model, URL, reply shape)."""


class ContextOverflow(ProviderError):
    """The prompt plus max_tokens is over the model's window. `window` and `prompt_tokens`
    are the server's own figures when its message names them, else None."""

    def __init__(self, message: str, window: int | None, prompt_tokens: int | None) -> None:
        super().__init__(message)
        self.window, self.prompt_tokens = window, prompt_tokens


class FormatRefused(ProviderError):
    """The server refused the request's structured answer format (HTTP 400/422)."""


class Stopped(Exception):
    """`should_stop()` became true while the client waited out an outage."""


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Secret:
    """Holds the key; its repr never shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'" if self.value else "None"


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): 1, 2, 4 ... plus <10% jitter, capped."""
    jitter = ((attempt * 7) % 10) / 100  # deterministic, so tests and logs are reproducible
    return min(MAX_BACKOFF, 2.0 ** min(attempt - 1, 20) * (1 + jitter))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a server asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    try:
        if ms := headers.get("retry-after-ms"):
            return min(MAX_RETRY_AFTER, max(0.0, float(ms) / 1000))
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(value)))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(MAX_RETRY_AFTER, max(0.0, (when - datetime.now(UTC)).total_seconds()))


class ChatClient:
    """One endpoint and model; `complete()` is safe to call from several threads."""

    def __init__(
        self,
        api: Api,
        base_url: str,
        model: str,
        api_key: str | None,
        *,
        temperature: float = 0.7,
        max_tokens: int = 4096,
        timeout: float = 180.0,
        max_attempts: int
        | None = None,  # None: retry forever (an outage pauses, then resumes by itself)
        sleep: Callable[[float], object]
        | None = None,  # None: sleep in slices, watching should_stop
        notify: Notify = silent,
        should_stop: Callable[[], bool] = lambda: False,
        transport: httpx.BaseTransport | None = None,
        key_env: str = "",  # named in "check $VAR" hints ("" -> OPENAI_API_KEY / ANTHROPIC_API_KEY)
    ) -> None:
        if api not in VENDOR_URLS:
            raise ValueError(f"api must be 'openai' or 'anthropic', got {api!r}")
        self.api, self.model = api, model
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1") if api == "anthropic" else base
        self.url = self.base_url + ("/chat/completions" if api == "openai" else "/v1/messages")
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.max_attempts = max_attempts
        self.key_env = key_env or KEY_ENV[api]
        self._key = _Secret(api_key or None)
        self._sleep, self._notify, self._should_stop = sleep, notify, should_stop
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport)

    def __repr__(self) -> str:
        key = "set" if self._key.value else "none"
        return f"ChatClient(api={self.api!r}, url={self.url!r}, model={self.model!r}, key={key})"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def complete(
        self,
        system: str,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int | None = None,
        answer_format: AnswerFormat | None = None,
        system_in_user: bool = False,
    ) -> Reply:
        """One answer to `messages` ([{"role": "user"|"assistant", "content": str}]) under `system`.

        `max_tokens`: this answer's cap (None: the client's). `answer_format`: ask for a
        JSON answer (see AnswerFormat). `system_in_user`: send no system message; the
        system prompt opens the first user turn instead (for templates that drop it).
        """
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        for m in msgs:
            if m["role"] not in ("user", "assistant"):
                raise ValueError(f"message role must be 'user' or 'assistant', got {m['role']!r}")
        if system_in_user and system and msgs and msgs[0]["role"] == "user":
            msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
            system = ""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": msgs,
            "max_tokens": self.max_tokens if max_tokens is None else max(1, int(max_tokens)),
            "temperature": self.temperature,
        }
        headers = {"content-type": "application/json", "user-agent": "rsilab"}
        key = self._key.value
        if self.api == "openai":
            body["messages"] = ([{"role": "system", "content": system}] if system else []) + msgs
            if key:
                headers["authorization"] = f"Bearer {key}"
        else:
            if system:
                body["system"] = system
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        if answer_format is not None:
            body.update(_format_fields(self.api, answer_format))
        start = time.monotonic()
        data = self._post_with_retries(
            json.dumps(body).encode(), headers, structured=answer_format is not None
        )
        return self._parse(
            data, system, msgs, time.monotonic() - start, tool=answer_format is not None
        )

    def probe(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """The JSON of one request to `path` under the server's root (the base URL without
        its `/v1`), or None on any failure: no retry, no notice. For what a server tells
        about itself (llama.cpp `/props`, vLLM `/v1/models`, ollama `/api/show`)."""
        root = self.base_url.removesuffix("/v1")
        headers = {"user-agent": "rsilab"}
        if self._key.value and self.api == "openai":
            headers["authorization"] = f"Bearer {self._key.value}"
        try:
            resp = self._http.request(
                method, root + path, json=body, headers=headers, timeout=timeout
            )
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    # -- transport and retries ---------------------------------------------------------
    def _post_with_retries(
        self, content: bytes, headers: dict[str, str], *, structured: bool = False
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._post(content, headers, structured=structured)
            except _Transient as t:
                reason, asked = self._scrub(t.reason), t.retry_after
            if self.max_attempts is not None and attempt >= self.max_attempts:
                raise ProviderError(
                    f"{self._where()}: gave up after {attempt} attempts, last: {reason}; is the server up?"
                )
            delay = max(0.5, asked) if asked is not None else backoff(attempt)  # a 0 would hammer
            of = f" of {self.max_attempts}" if self.max_attempts else ""
            if self._should_stop():
                raise Stopped(f"stopped while the LLM was unavailable ({reason})")
            shown = f"{delay:.0f}" if delay >= 1 else f"{delay:.1f}"
            message = f"LLM unavailable ({reason}): retrying in {shown} s (attempt {attempt}{of})"
            log.info("%s", message)
            self._notify(message)
            self._wait(delay)
            if self._should_stop():
                raise Stopped(f"stopped while the LLM was unavailable ({reason})")

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not self._should_stop():
            time.sleep(min(0.5, left))

    def _post(
        self, content: bytes, headers: dict[str, str], *, structured: bool = False
    ) -> dict[str, Any]:
        try:
            resp = self._http.post(self.url, content=content, headers=headers)
        except httpx.TimeoutException:
            raise _Transient(f"no answer within {self.timeout:g} s") from None
        except httpx.TransportError as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        status = resp.status_code
        if structured and status in (400, 422, 500) and _names_format(resp.text):
            # llama-cpp-python answers a response_format it does not know with a 500 (a
            # validation error): not an outage to wait out.
            raise FormatRefused(
                self._http_error(status, resp.text, "the server refused the answer format")
            )
        if status in _RETRY_STATUS or status >= 500:
            raise _Transient(f"HTTP {status}", retry_after(resp.headers))
        if status != 200:
            overflow = _overflow(status, resp.text)
            if overflow is not None:
                window, prompt = overflow
                raise ContextOverflow(
                    self._http_error(status, resp.text, _OVERFLOW_HINT), window, prompt
                )
            if structured and status in (400, 422):
                raise FormatRefused(
                    self._http_error(status, resp.text, "the server refused the answer format")
                )
            raise ProviderError(self._http_error(status, resp.text))
        try:
            data = resp.json()
        except ValueError:  # JSONDecodeError, UnicodeDecodeError: a truncated or garbled body
            raise _Transient("HTTP 200 with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderError(self._bad_shape(data))
        return data

    def _parse(
        self,
        data: dict[str, Any],
        system: str,
        msgs: list[dict[str, str]],
        seconds: float,
        *,
        tool: bool = False,
    ) -> Reply:
        try:
            if self.api == "openai":
                choice = data["choices"][0]
                text = choice["message"]["content"] or ""
                truncated = choice.get("finish_reason") == "length"
                usage_keys = ("prompt_tokens", "completion_tokens")
            else:
                blocks = data["content"]
                tools = [b["input"] for b in blocks if tool and b.get("type") == "tool_use"]
                text = (
                    json.dumps(tools[0])
                    if tools
                    else "".join(b["text"] for b in blocks if b.get("type") == "text")
                )
                truncated = data.get("stop_reason") == "max_tokens"
                usage_keys = ("input_tokens", "output_tokens")
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(self._bad_shape(data)) from None
        usage: Any = data.get("usage")
        estimated = False
        try:
            tokens_in, tokens_out = (int(usage[k]) for k in usage_keys)
        except (KeyError, TypeError, ValueError):
            estimated = True
            chars_in = len(system) + sum(len(m["content"]) for m in msgs)
            tokens_in, tokens_out = chars_in // 4, len(text) // 4
            log.debug(
                "%s: no usage in the reply; token counts estimated as characters / 4", self._where()
            )
        model = data.get("model")
        return Reply(
            text,
            tokens_in,
            tokens_out,
            model if isinstance(model, str) and model else self.model,
            seconds,
            truncated,
            estimated,
        )

    # -- messages ----------------------------------------------------------------------
    def _where(self) -> str:
        return f"LLM {self.url} (model {self.model})"

    def _scrub(self, text: str) -> str:
        key = self._key.value
        return text.replace(key, "***") if key else text

    def _one_line(self, text: str, limit: int = 200) -> str:
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def _http_error(self, status: int, body: str, hint: str = "") -> str:
        detail = body  # the vendors' shapes: {"error": {"message", "type"}}; some servers: {"error": "..."}
        try:
            err = json.loads(body).get("error")
            if isinstance(err, dict):
                err = err.get("message") or err.get("type")
            detail = str(err or body)
        except (ValueError, AttributeError):
            pass
        if not hint and status in (401, 403):
            hint = (
                f"check ${self.key_env}"
                if self._key.value
                else f"no key was sent; set ${self.key_env}"
            )
        hint = hint or _HINTS.get(status, "the server rejected the request")
        if status == 404 and self.api == "openai":
            hint += " (an OpenAI-compatible base_url usually ends in /v1)"
        detail = self._one_line(detail)
        return f"{self._where()}: HTTP {status}{': ' + detail if detail else ''}; {hint}"

    def _bad_shape(self, data: object) -> str:
        snippet = self._one_line(json.dumps(data)[:300], 120)
        return f"{self._where()}: unexpected reply {snippet}; is it an {self.api}-format endpoint?"


_OVERFLOW_HINT = (
    "the prompt and llm.max_tokens are over the model's window; rsilab shrinks the prompt "
    "to the window it learns, or set llm.window_tokens (or start the server with a larger "
    "context, e.g. llama.cpp --ctx-size / -c, llama-cpp-python --n_ctx, vLLM --max-model-len)"
)


def _overflow(status: int, body: str) -> tuple[int | None, int | None] | None:
    """(window, prompt tokens) when `body` says the prompt is over the window, else None."""
    if status not in (400, 413, 422):
        return None
    lowered = body.lower()
    if not any(w in lowered for w in _OVERFLOW_WORDS):
        return None
    window = prompt = None
    for pattern in _WINDOW_RE:
        if m := pattern.search(body):
            window = int(m.group(1))
            break
    for pattern in _PROMPT_RE:
        if m := pattern.search(body):
            prompt = int(m.group(1))
            break
    try:  # llama.cpp's own server names the figures as fields of its error object
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            window = window or _int_or_none(err.get("n_ctx"))
            prompt = prompt or _int_or_none(err.get("n_prompt_tokens"))
    except (ValueError, AttributeError):
        pass
    return window, prompt


def _names_format(body: str) -> bool:
    """True when an error body is about the request's answer format."""
    lowered = body.lower()
    return any(w in lowered for w in ("response_format", "json_schema", "tool_choice", "tools"))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _format_fields(api: Api, fmt: AnswerFormat) -> dict[str, Any]:
    """The request fields that ask `api` for an answer in `fmt`."""
    schema = dict(fmt.schema)
    if api == "anthropic" or fmt.style == "tool":
        return {
            "tools": [{"name": fmt.name, "description": fmt.description, "input_schema": schema}],
            "tool_choice": {"type": "tool", "name": fmt.name},
        }
    if fmt.style == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": fmt.name, "schema": schema, "strict": True},
        }
    }


def _is_vendor(base_url: str) -> bool:
    return urlsplit(base_url).hostname in {urlsplit(u).hostname for u in VENDOR_URLS.values()}


def from_spec(spec: LLMSpec, env: Mapping[str, str] = os.environ, **kwargs: Any) -> ChatClient:
    """A client for `spec`, with "" fields resolved from `env`; `kwargs` go to ChatClient.

    base_url: spec, else $OPENAI_BASE_URL / $ANTHROPIC_BASE_URL, else the vendor's URL.
    model: spec, else $RSILAB_LLM_MODEL, else gpt-4o-mini / claude-sonnet-4-5.
    key: $<spec.key_env>, else $OPENAI_API_KEY / $ANTHROPIC_API_KEY. A missing key is a
    ConfigError for the vendors' own hosts or when spec.key_env names a variable; any
    other server (ollama, vLLM, llama.cpp, a proxy) gets no auth header.
    """
    api = spec.api
    base_url = spec.base_url.strip() or env.get(URL_ENV[api], "").strip() or VENDOR_URLS[api]
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"llm.base_url {base_url!r}: must start with http:// or https://")
    model = spec.model.strip() or env.get(MODEL_ENV, "").strip() or DEFAULT_MODELS[api]
    key_env = spec.key_env or KEY_ENV[api]
    key = env.get(key_env, "").strip() or None
    if key is None and (spec.key_env or _is_vendor(base_url)):
        raise ConfigError(
            f"llm: ${key_env} is not set; export the API key for {base_url} (or set llm.base_url to a local server)"
        )
    options: dict[str, Any] = {
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "timeout": spec.timeout,
        "key_env": key_env,
    }
    options.update(kwargs)
    return ChatClient(api, base_url, model, key, **options)


def configured(env: Mapping[str, str] = os.environ, api: Api | None = None) -> bool:
    """True when one of CONFIGURED_ENV is set (non-empty); with `api`, only that api's two
    variables and $RSILAB_LLM_MODEL count. Used to pick `llm` as the default proposer."""
    names = [
        n for n in CONFIGURED_ENV if api is None or n == MODEL_ENV or n.startswith(api.upper())
    ]
    return any(env.get(n, "").strip() for n in names)

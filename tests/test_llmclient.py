"""Tests of the chat client against a real local HTTP server (tests/fake_llm.py): both wire
formats, retries and waits, errors that must not be retried, key hygiene, env resolution."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from fake_llm import FakeLLM, Scripted

from rsilab.config import LLMSpec
from rsilab.errors import ConfigError
from rsilab.proposers.llmclient import (
    MAX_BACKOFF,
    ChatClient,
    ProviderError,
    Reply,
    Stopped,
    backoff,
    configured,
    from_spec,
    retry_after,
)

KEY = "sk-test-SECRET-0123456789abcdef"
MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


class Recorder:
    """Injected sleep / notify / should_stop that record what the client did."""

    def __init__(self, stop_after_waits: int | None = None) -> None:
        self.sleeps: list[float] = []
        self.notes: list[str] = []
        self.stop_after_waits = stop_after_waits

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def notify(self, message: str) -> None:
        self.notes.append(message)

    def should_stop(self) -> bool:
        return self.stop_after_waits is not None and len(self.sleeps) >= self.stop_after_waits


def make(api: Any, url: str, rec: Recorder, key: str | None = KEY, **kw: Any) -> ChatClient:
    return ChatClient(
        api,
        url,
        "test-model",
        key,
        sleep=rec.sleep,
        notify=rec.notify,
        should_stop=rec.should_stop,
        timeout=kw.pop("timeout", 5.0),
        **kw,
    )


# -- wire formats ----------------------------------------------------------------------


def test_openai_request_and_reply(llm: FakeLLM) -> None:
    llm.queue(Scripted(text="the answer", tokens_in=12, tokens_out=3))
    with make("openai", llm.url_openai, Recorder(), temperature=0.2, max_tokens=77) as c:
        reply = c.complete(
            "be brief",
            [*MSGS, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}],
        )
    assert reply.text == "the answer" and (reply.tokens_in, reply.tokens_out) == (12, 3)
    assert reply.model == "test-model" and reply.seconds >= 0 and not reply.truncated
    (req,) = llm.requests
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            *MSGS,
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "more"},
        ],
        "temperature": 0.2,
        "max_tokens": 77,
    }


def test_openai_without_key_or_system_sends_neither(llm: FakeLLM) -> None:
    llm.queue("ok")
    with make("openai", llm.url_openai + "/", Recorder(), key=None) as c:
        assert c.complete("", MSGS).text == "ok"
    (req,) = llm.requests
    assert "authorization" not in req.headers and req.json["messages"] == MSGS


def test_anthropic_request_and_reply(llm: FakeLLM) -> None:
    llm.queue(Scripted(text="bonjour", tokens_in=20, tokens_out=5))
    with make("anthropic", llm.url_anthropic, Recorder(), temperature=0.5, max_tokens=99) as c:
        reply = c.complete("you are terse", MSGS)
    assert reply == Reply("bonjour", 20, 5, "test-model", reply.seconds)
    (req,) = llm.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers
    assert req.json == {
        "model": "test-model",
        "system": "you are terse",
        "messages": MSGS,
        "max_tokens": 99,
        "temperature": 0.5,
    }


def test_anthropic_joins_text_blocks_and_accepts_a_v1_base_url(llm: FakeLLM) -> None:
    body = (
        b'{"id":"m","type":"message","role":"assistant","model":"claude-x","content":['
        b'{"type":"text","text":"a"},{"type":"tool_use","id":"t","name":"f","input":{}},'
        b'{"type":"text","text":"b"}],"stop_reason":"max_tokens","usage":{"input_tokens":4,"output_tokens":2}}'
    )
    llm.queue(Scripted(raw=body))
    with make("anthropic", llm.url_anthropic + "/v1/", Recorder()) as c:
        reply = c.complete("s", MSGS)
    assert (reply.text, reply.model, reply.truncated, reply.tokens_out) == (
        "ab",
        "claude-x",
        True,
        2,
    )
    assert llm.requests[0].path == "/v1/messages"


def test_missing_usage_is_estimated_and_logged(
    llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    llm.queue(
        Scripted(
            raw=b'{"choices":[{"message":{"role":"assistant","content":"'
            + b"x" * 40
            + b'"},"finish_reason":"length"}]}'
        )
    )
    caplog.set_level(logging.DEBUG, logger="rsilab.proposers.llmclient")
    with make("openai", llm.url_openai, Recorder()) as c:
        reply = c.complete("s" * 20, [{"role": "user", "content": "u" * 20}])
    assert (reply.tokens_in, reply.tokens_out, reply.truncated) == (10, 10, True)
    assert "estimated" in caplog.text


# -- retries ---------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds(llm: FakeLLM) -> None:
    llm.queue(Scripted(429, "slow down", headers={"Retry-After": "3"}), "ok")
    rec = Recorder()
    with make("openai", llm.url_openai, rec) as c:
        assert c.complete("s", MSGS).text == "ok"
    assert rec.sleeps == [3.0]
    assert rec.notes == ["LLM unavailable (HTTP 429): retrying in 3 s (attempt 1)"]


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after": "2.5"}) == 2.5
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after({"retry-after": when}) or 0) <= 30
    assert retry_after({"retry-after": "Mon, 01 Jan 2001 00:00:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_backoff_doubles_with_small_jitter_and_caps() -> None:
    waits = [backoff(n) for n in range(1, 40)]
    for n, w in enumerate(waits[:8], start=1):
        assert 2 ** (n - 1) <= w < 2 ** (n - 1) * 1.1
    assert max(waits) == MAX_BACKOFF == waits[-1]
    assert waits == [backoff(n) for n in range(1, 40)]  # deterministic


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_500_then_200_is_retried(llm: FakeLLM, api: str) -> None:
    llm.queue(Scripted(500, "boom"), Scripted(503), Scripted(text="ok", tokens_out=1))
    rec = Recorder()
    url = llm.url_openai if api == "openai" else llm.url_anthropic
    with make(api, url, rec) as c:
        assert c.complete("s", MSGS).tokens_out == 1
    assert rec.sleeps == [backoff(1), backoff(2)] and len(llm.requests) == 3
    assert (
        "HTTP 500" in rec.notes[0] and "HTTP 503" in rec.notes[1] and "(attempt 2)" in rec.notes[1]
    )


def test_408_409_and_529_are_retried(llm: FakeLLM) -> None:
    llm.queue(Scripted(408), Scripted(409), Scripted(529), "ok")
    rec = Recorder()
    with make("anthropic", llm.url_anthropic, rec) as c:
        assert c.complete("s", MSGS).text == "ok"
    assert len(rec.sleeps) == 3


def test_a_hang_times_out_and_is_retried(llm: FakeLLM) -> None:
    llm.queue(Scripted(delay=30, text="too late"), "ok")
    rec = Recorder()
    start = time.monotonic()
    with make("openai", llm.url_openai, rec, timeout=0.5) as c:
        assert c.complete("s", MSGS).text == "ok"
    assert time.monotonic() - start < 5
    assert rec.notes == ["LLM unavailable (no answer within 0.5 s): retrying in 1 s (attempt 1)"]


def test_a_dropped_connection_is_retried(llm: FakeLLM) -> None:
    llm.queue(Scripted(drop=True), "ok")
    rec = Recorder()
    with make("openai", llm.url_openai, rec) as c:
        assert c.complete("s", MSGS).text == "ok"
    assert len(rec.sleeps) == 1 and "RemoteProtocolError" in rec.notes[0]


@pytest.mark.parametrize(
    "raw", [b'{"choices": [{"mess', b"<html>502 Bad Gateway</html>", b"\xff\xfe"]
)
def test_a_200_that_is_not_json_is_retried(llm: FakeLLM, raw: bytes) -> None:
    llm.queue(Scripted(raw=raw), "ok")
    rec = Recorder()
    with make("openai", llm.url_openai, rec) as c:
        assert c.complete("s", MSGS).text == "ok"
    assert "not JSON" in rec.notes[0]


def test_connection_refused_is_retried() -> None:
    with FakeLLM() as dead:
        url = dead.url_openai
    rec = Recorder()
    with (
        make("openai", url, rec, max_attempts=2) as c,
        pytest.raises(ProviderError, match="gave up after 2 attempts"),
    ):
        c.complete("s", MSGS)
    assert rec.sleeps == [backoff(1)] and "ConnectError" in rec.notes[0]


def test_max_attempts_reached_is_a_provider_error(llm: FakeLLM) -> None:
    llm.queue(*[Scripted(503)] * 3)
    rec = Recorder()
    with (
        make("openai", llm.url_openai, rec, max_attempts=3) as c,
        pytest.raises(ProviderError) as err,
    ):
        c.complete("s", MSGS)
    assert "gave up after 3 attempts, last: HTTP 503" in str(err.value) and "\n" not in str(
        err.value
    )
    assert len(llm.requests) == 3 and len(rec.sleeps) == 2 and "(attempt 2 of 3)" in rec.notes[1]


def test_should_stop_during_an_outage_raises_stopped(llm: FakeLLM) -> None:
    llm.queue(*[Scripted(503)] * 10)
    rec = Recorder(stop_after_waits=2)
    with make("openai", llm.url_openai, rec) as c, pytest.raises(Stopped):
        c.complete("s", MSGS)
    assert len(rec.sleeps) == 2 and len(llm.requests) == 2
    assert [n.split(":")[0] for n in rec.notes] == ["LLM unavailable (HTTP 503)"] * 2


def test_the_default_sleep_wakes_up_for_should_stop(llm: FakeLLM) -> None:
    llm.queue(Scripted(503, headers={"Retry-After": "60"}))
    calls: list[float] = []

    def should_stop() -> bool:
        calls.append(time.monotonic())
        return len(calls) > 2  # false before the wait, true one slice into it

    start = time.monotonic()
    with (
        ChatClient("openai", llm.url_openai, "m", None, should_stop=should_stop) as c,
        pytest.raises(Stopped),
    ):
        c.complete("s", MSGS)
    assert time.monotonic() - start < 5


# -- errors that retrying cannot fix ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "check $OPENAI_API_KEY"),
        (403, "check $OPENAI_API_KEY"),
        (404, "ends in /v1"),
        (400, "max_tokens"),
    ],
)
def test_client_errors_fail_at_once(llm: FakeLLM, status: int, hint: str) -> None:
    llm.queue(Scripted(status, f"Incorrect API key provided: {KEY}."))
    rec = Recorder()
    with make("openai", llm.url_openai, rec) as c, pytest.raises(ProviderError) as err:
        c.complete("s", MSGS)
    msg = str(err.value)
    assert "\n" not in msg and KEY not in msg and hint in msg
    assert f"HTTP {status}" in msg and llm.url_openai in msg and "test-model" in msg
    assert rec.sleeps == [] and len(llm.requests) == 1


def test_anthropic_401_names_the_custom_key_variable(llm: FakeLLM) -> None:
    llm.queue(Scripted(401, "invalid x-api-key"))
    with (
        make("anthropic", llm.url_anthropic, Recorder(), key_env="MY_KEY") as c,
        pytest.raises(ProviderError) as err,
    ):
        c.complete("s", MSGS)
    assert "invalid x-api-key" in str(err.value) and "check $MY_KEY" in str(err.value)


def test_401_without_a_key_says_to_set_it(llm: FakeLLM) -> None:
    llm.queue(Scripted(401))
    with (
        make("openai", llm.url_openai, Recorder(), key=None) as c,
        pytest.raises(ProviderError, match=r"no key was sent; set \$OPENAI_API_KEY"),
    ):
        c.complete("s", MSGS)


def test_a_wrong_path_is_a_404_provider_error(llm: FakeLLM) -> None:
    llm.queue("never served")
    with (
        make("openai", llm.url_anthropic, Recorder()) as c,
        pytest.raises(ProviderError, match="HTTP 404"),
    ):
        c.complete("s", MSGS)  # base_url without /v1
    assert llm.pending == 1


@pytest.mark.parametrize(
    "raw",
    [b'{"foo": 1}', b"[1, 2]", b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}'],
)
def test_a_reply_of_the_wrong_shape_is_a_provider_error(llm: FakeLLM, raw: bytes) -> None:
    llm.queue(Scripted(raw=raw))
    with (
        make("openai", llm.url_openai, Recorder()) as c,
        pytest.raises(ProviderError, match="unexpected reply"),
    ):
        c.complete("s", MSGS)


def test_an_empty_queue_answers_500(llm: FakeLLM) -> None:
    rec = Recorder()
    with (
        make("openai", llm.url_openai, rec, max_attempts=1) as c,
        pytest.raises(ProviderError, match="HTTP 500"),
    ):
        c.complete("s", MSGS)


# -- the key never leaks ---------------------------------------------------------------


def test_the_key_never_appears_in_errors_reprs_notes_or_logs(
    llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder(stop_after_waits=1)
    seen: list[str] = []
    llm.queue(
        Scripted(401, f"bad key {KEY}"),
        Scripted(503, f"down {KEY}"),
        Scripted(400, KEY),
        Scripted(raw=f'{{"x": "{KEY}"}}'.encode()),
    )
    for api, url in [("openai", llm.url_openai), ("anthropic", llm.url_anthropic)]:
        c = make(api, url, rec)
        seen += [repr(c), str(vars(c))]
        for _ in range(2):
            with pytest.raises((ProviderError, Stopped)) as err:
                c.complete("s", MSGS)
            seen += [
                str(err.value),
                repr(err.value),
                "".join(traceback.format_exception(err.value)),
            ]
            rec.sleeps.clear()
        c.close()
    with FakeLLM() as dead:
        url = dead.url_openai
    with make("openai", url, Recorder(), max_attempts=1) as c, pytest.raises(ProviderError) as err:
        c.complete("s", MSGS)
    seen += [str(err.value), "".join(traceback.format_exception(err.value))]
    assert len(seen) == 18
    assert not [s for s in seen + rec.notes + [caplog.text] if KEY in s]
    assert "key=set" in seen[0]


# -- configuration ---------------------------------------------------------------------


def test_from_spec_resolves_from_the_environment(llm: FakeLLM) -> None:
    env = {"OPENAI_BASE_URL": llm.url_openai, "RSILAB_LLM_MODEL": "qwen2.5-coder"}
    llm.queue("ok")
    with from_spec(LLMSpec(max_tokens=10, temperature=0.1), env, sleep=lambda s: None) as c:
        assert c.complete("s", MSGS).text == "ok"
        assert (c.url, c.model) == (llm.url_openai + "/chat/completions", "qwen2.5-coder")
    assert "authorization" not in llm.requests[0].headers  # a local server needs no key
    assert llm.requests[0].json["max_tokens"] == 10 and llm.requests[0].json["temperature"] == 0.1


def test_from_spec_prefers_the_spec_and_defaults_to_the_vendor() -> None:
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": "http://elsewhere/v1",
        "RSILAB_LLM_MODEL": "env-model",
    }
    c = from_spec(LLMSpec(base_url="http://localhost:8000/v1", model="spec-model"), env)
    assert (c.url, c.model) == ("http://localhost:8000/v1/chat/completions", "spec-model")
    c = from_spec(LLMSpec(), {"OPENAI_API_KEY": KEY})
    assert (c.url, c.model) == ("https://api.openai.com/v1/chat/completions", "gpt-4o-mini")
    c = from_spec(LLMSpec(api="anthropic"), {"ANTHROPIC_API_KEY": KEY})
    assert (c.url, c.model) == ("https://api.anthropic.com/v1/messages", "claude-sonnet-4-5")
    c = from_spec(LLMSpec(api="anthropic", key_env="MY_KEY"), {"MY_KEY": KEY}, timeout=1.0)
    assert c.timeout == 1.0 and c.key_env == "MY_KEY" and KEY not in repr(c)


@pytest.mark.parametrize(
    ("spec", "var"),
    [
        (LLMSpec(), "OPENAI_API_KEY"),
        (LLMSpec(api="anthropic"), "ANTHROPIC_API_KEY"),
        (LLMSpec(base_url="http://localhost:1/v1", key_env="MY_KEY"), "MY_KEY"),
    ],
)
def test_from_spec_needs_a_key_for_vendor_urls(spec: LLMSpec, var: str) -> None:
    with pytest.raises(ConfigError, match=rf"\${var} is not set"):
        from_spec(spec, {var: " "})


def test_from_spec_rejects_a_url_without_scheme() -> None:
    with pytest.raises(ConfigError, match="http://"):
        from_spec(LLMSpec(base_url="localhost:11434/v1"), {})


def test_configured() -> None:
    assert not configured({}) and not configured({"OPENAI_API_KEY": "", "HOME": "/x"})
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "RSILAB_LLM_MODEL",
    ]:
        assert configured({var: "x"})
    assert configured({"ANTHROPIC_API_KEY": "x"}, api="anthropic")
    assert not configured({"ANTHROPIC_API_KEY": "x"}, api="openai")
    assert configured({"RSILAB_LLM_MODEL": "x"}, api="openai")


def test_fake_server_closes_promptly_with_a_hung_request() -> None:
    fake = FakeLLM()
    fake.queue(Scripted(delay=60))
    with (
        make("openai", fake.url_openai, Recorder(), timeout=0.3, max_attempts=1) as c,
        pytest.raises(ProviderError),
    ):
        c.complete("s", MSGS)
    start = time.monotonic()
    fake.close()
    assert time.monotonic() - start < 2

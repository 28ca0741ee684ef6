"""The model's context window. Owns: what a server says about itself, counting tokens, budgets.

A prompt that does not fit the model's window is refused (HTTP 400) or, worse, silently
cut; an answer's `max_tokens` counts against the same window. This module finds the
window (`llm.window_tokens`, else the server: llama.cpp `/props`, vLLM `/v1/models`,
ollama `/api/show`; else `ASSUMED_WINDOW`, corrected by the first context-length error),
counts tokens (a calibrated characters-per-token estimate, calibrated again whenever a
tokenizer endpoint or the server's own count is at hand), and splits the window into a
prompt budget and an answer budget (`plan`).

It also tells whether the server's chat template keeps a system message (`drops_system`):
llama.cpp and ollama show their template; Gemma's templates have no system role.

Not covered: building or shrinking the prompt (prompt.py), the wire formats (llmclient.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Characters per token of rsilab's prompts (English prose plus Python): measured with
# Gemma 3's tokenizer on the gpt task's prompt, 18,076 characters in 5,722 tokens (3.16).
# The old characters / 4 undercounted by a quarter; a count too low overflows the window.
CHARS_PER_TOKEN = 3.1
MESSAGE_OVERHEAD = 8  # template tokens per message (role markers, separators)
MARGIN = 32  # tokens kept free between prompt plus answer and the window
# The window when neither configuration nor the server tells: the vendors' models have
# 128k and more, and `llm.context_tokens` (24k by default) caps the prompt well below it.
ASSUMED_WINDOW = 32768
OLLAMA_DEFAULT_CTX = 4096  # ollama's num_ctx when a model sets none (it cuts silently past it)
MIN_ANSWER = {"edit": 512, "compact": 160}  # the least answer each mode is planned for


class Prober(Protocol):
    """What `probe_server` needs of a client (ChatClient has it)."""

    model: str

    def probe(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any: ...


@dataclass(frozen=True)
class ServerInfo:
    """What a server said about itself; None/"" where it said nothing."""

    window: int | None = None
    source: str = ""  # where the window came from, for logs and doctor
    template: str = ""  # the chat template, when the server shows it
    tokenizer: str = ""  # the tokenize path that answered ("" when none did)


def probe_server(client: Prober) -> ServerInfo:
    """Ask the server for its window, template and tokenizer (a few quick GETs/POSTs)."""
    props = client.probe("GET", "/props")
    if isinstance(props, Mapping):  # llama.cpp's own server
        settings = props.get("default_generation_settings")
        n_ctx = props.get("n_ctx") or (settings or {}).get("n_ctx")
        template = props.get("chat_template")
        if isinstance(n_ctx, int) and n_ctx > 0:
            return ServerInfo(
                n_ctx,
                "llama.cpp /props",
                template if isinstance(template, str) else "",
                "/tokenize",
            )
    models = client.probe("GET", "/v1/models")
    for entry in models.get("data", []) if isinstance(models, Mapping) else []:
        if not isinstance(entry, Mapping):
            continue
        for key in ("max_model_len", "context_length", "context_window"):
            value = entry.get(key)
            if isinstance(value, int) and value > 0 and entry.get("id") in (client.model, None):
                return ServerInfo(value, f"/v1/models {key}", "", "/tokenize")
    show = client.probe("POST", "/api/show", {"model": client.model})
    if isinstance(show, Mapping) and ("modelfile" in show or "model_info" in show):  # ollama
        num_ctx = _ollama_num_ctx(str(show.get("parameters") or ""))
        template = str(show.get("template") or "")
        return ServerInfo(num_ctx or OLLAMA_DEFAULT_CTX, "ollama /api/show", template, "")
    count = client.probe("POST", "/extras/tokenize/count", {"input": "hello"})
    if isinstance(count, Mapping) and isinstance(count.get("count"), int):
        return ServerInfo(None, "", "", "/extras/tokenize/count")  # llama-cpp-python
    return ServerInfo()


def _ollama_num_ctx(parameters: str) -> int | None:
    for line in parameters.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "num_ctx" and parts[1].isdigit():
            return int(parts[1])
    return None


def count_with_server(client: Prober, info: ServerInfo, text: str) -> int | None:
    """`text`'s tokens by the server's own tokenizer, or None when it has none at hand."""
    if info.tokenizer == "/extras/tokenize/count":
        out = client.probe("POST", info.tokenizer, {"input": text}, timeout=30.0)
        return out.get("count") if isinstance(out, Mapping) else None
    if info.tokenizer == "/tokenize":
        out = client.probe("POST", "/tokenize", {"content": text, "model": client.model}, 30.0)
        if isinstance(out, Mapping):
            if isinstance(out.get("count"), int):  # vLLM
                return int(out["count"])
            if isinstance(out.get("tokens"), list):  # llama.cpp
                return len(out["tokens"])
    return None


def drops_system(info: ServerInfo, model: str) -> bool:
    """True when the chat template is known, or the model family known, to drop or refuse a
    system message: a shown template that never mentions the system role, or a Gemma
    (whose templates have no system role; llama-cpp-python's drops it without a word)."""
    if info.template:
        return "system" not in info.template
    return "gemma" in model.lower()


class TokenCounter:
    """A characters-per-token estimate, calibrated from real counts as they come."""

    def __init__(self, chars_per_token: float = CHARS_PER_TOKEN) -> None:
        self.chars_per_token = chars_per_token

    def __call__(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def messages(self, system: str, messages: list[dict[str, str]]) -> int:
        """The estimated prompt of a chat request, template overhead included."""
        texts = (
            [system, *(m["content"] for m in messages)]
            if system
            else [m["content"] for m in messages]
        )
        return sum(self(t) for t in texts) + MESSAGE_OVERHEAD * len(texts)

    def calibrate(self, chars: int, tokens: int) -> None:
        """Learn from `chars` characters that were `tokens` tokens (5% kept in reserve)."""
        if chars > 200 and tokens > 0:
            self.chars_per_token = min(6.0, max(1.5, 0.95 * chars / tokens))


@dataclass(frozen=True)
class Budget:
    """How a window is split: the prompt must fit `prompt`; `answer` is the least answer
    planned for (the request's max_tokens is clamped to what the prompt leaves, `answer_for`)."""

    window: int
    prompt: int
    answer: int
    max_tokens: int  # the configured cap of one answer

    def answer_for(self, prompt_tokens: int) -> int:
        """max_tokens for a prompt of `prompt_tokens`: what the window leaves, capped."""
        return max(1, min(self.max_tokens, self.window - prompt_tokens - MARGIN))


def plan(window: int, max_tokens: int, prompt_cap: int, mode: str = "edit") -> Budget:
    """Split `window`: an answer of at least `MIN_ANSWER[mode]` (a quarter of the window
    when that is more, never above `max_tokens`), the prompt the rest (at most `prompt_cap`)."""
    answer = min(max_tokens, max(MIN_ANSWER.get(mode, 512), window // 4))
    prompt = max(0, min(prompt_cap, window - answer - MARGIN))
    return Budget(window, prompt, answer, max_tokens)

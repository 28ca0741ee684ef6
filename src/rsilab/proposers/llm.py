"""The "llm" proposer: a chat model as the researcher. Owns: one proposal = one conversation.

Each proposal is a fresh conversation (so the context never bloats): the prompt from
`prompt.py` (program.md, the editable files, the harness API, a history sized to a token
budget), the answer parsed and applied by `edits.py` before any compute is spent. A
malformed or non-applying answer gets `repair_rounds` more turns with the error shown
to the model; if it still fails, the proposal carries `meta["invalid"]` and the
supervisor records it as `invalid` and goes on. After one of its own proposals crashed,
the next proposal may be a fix attempt (up to `fix_attempts` in a row), built on the
crashed files with the traceback tail, and linked to the experiment it fixes.

Fitting the model (window.py): the window comes from `llm.window_tokens`, the server, or
the first context-length error (which is learnt from and retried, never the end of the
run; if the prompt still cannot fit, the experiment is `invalid` with a hint); the
prompt is shrunk to the window less the answer, and `max_tokens` clamped to what is
left. With a small window (or `llm.mode = "compact"`) the compact knob mode is used
(compact.py). A structured answer (a JSON schema) is asked where the configuration and
server allow, falling back to free text when the server refuses it. The system prompt
goes into the first user turn for templates that drop it. A truncated answer is told as
such; an answer repeated word for word ends the repair rounds.

Every proposal's wall time, tokens, rounds and outcome ("first try", "after repair",
"never") go into `meta["proposal"]`, which the supervisor records in the ledger.

Transport faults are the client's business (`llmclient.py`: retries, backoff, pausing
through an outage). Keys never leave the client: nothing here stores or logs one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, cast

from rsilab.config import LLMSpec, TaskSpec
from rsilab.proposers.base import Context, HistoryItem, register
from rsilab.proposers.compact import build_compact, compact_schema, knob_table, parse_compact
from rsilab.proposers.edits import EditError, apply_answer, edit_schema, parse_answer
from rsilab.proposers.llmclient import (
    AnswerFormat,
    ChatClient,
    ContextOverflow,
    FormatRefused,
    Reply,
    Stopped,
    _is_vendor,
    configured,
    from_spec,
)
from rsilab.proposers.prompt import Fix, build_messages, prompt_tokens
from rsilab.proposers.window import (
    ASSUMED_WINDOW,
    ServerInfo,
    TokenCounter,
    count_with_server,
    drops_system,
    plan,
    probe_server,
)
from rsilab.results import Proposal

FAILED = ("crash", "timeout")
Style = Literal["json_schema", "json_object", "tool"]
COMPACT_BELOW = 6144  # tokens: a smaller window gets the compact mode (llm.mode = "auto")
EXACT_LINES_BELOW = 16384  # tokens: a smaller window's JSON edits quote the files' own lines
MAX_OVERFLOWS = 2  # context-length errors learnt from within one proposal before giving up
# The order in which answer formats are tried on an OpenAI-compatible server, each one
# dropped for the next when the server refuses it ("" = free text).
_STYLES = ("json_schema", "json_object", "")


@register("llm")
class LLMProposer:
    """Proposals from a chat model over OpenAI-compatible or Anthropic Messages APIs."""

    name = "llm"

    def __init__(
        self,
        spec: LLMSpec | None = None,
        env: Mapping[str, str] | None = None,
        **client_options: Any,
    ) -> None:
        spec = spec or LLMSpec()
        env = os.environ if env is None else env
        # Only an Anthropic key in the environment: speak Anthropic without being told.
        if (
            spec.api == "openai"
            and not spec.base_url
            and not configured(env, "openai")
            and configured(env, "anthropic")
        ):
            spec = dataclasses.replace(spec, api="anthropic")
        self.spec, self.env, self.client_options = spec, env, client_options
        from_spec(spec, env, **client_options).close()  # a missing key fails now, not at 3 am
        self._proposed: dict[str, dict[str, str]] = {}  # description -> full files it proposed
        # What the proposer learns about its server, once, and keeps for later proposals.
        self._lock = threading.Lock()
        self._server: ServerInfo | None = None
        self._learned_window: int | None = None  # from a context-length error
        self._style: str | None = None  # the structured style that works ("" = free text)
        self._tokenizer_used = False  # the server's tokenizer counted a first prompt
        self.counter = TokenCounter()

    @classmethod
    def from_task(cls, task: TaskSpec, model: str = "", **options: Any) -> LLMProposer:
        """The proposer of `task`'s `[llm]` section (`model`: another model than its own);
        `options` are the constructor's (a `spec` replaces the section)."""
        spec = dataclasses.replace(task.llm, model=model) if model else task.llm
        return cls(**{"spec": spec, **options})

    def _client(self, ctx: Context) -> ChatClient:
        options = {"notify": ctx.notify, "should_stop": ctx.should_stop, **self.client_options}
        return from_spec(self.spec, self.env, **options)

    # -- what the proposer knows of its server ----------------------------------------
    def server(self, client: ChatClient) -> ServerInfo:
        """What the server said about itself (asked once; nothing when a window is set)."""
        with self._lock:
            if self._server is None:
                local = not _is_vendor(client.base_url)
                self._server = probe_server(client) if local else ServerInfo()
            return self._server

    def window(self, client: ChatClient) -> tuple[int, str]:
        """The model's window and where it came from."""
        if self.spec.window_tokens:
            return self.spec.window_tokens, "llm.window_tokens"
        if self._learned_window:
            return self._learned_window, "a context-length error"
        info = self.server(client)
        if info.window:
            return info.window, info.source
        return ASSUMED_WINDOW, "assumed"

    def system_in_user(self, client: ChatClient) -> bool:
        if self.spec.system_prompt != "auto":
            return self.spec.system_prompt == "user"
        return drops_system(self.server(client), client.model)

    def mode(self, client: ChatClient, ctx: Context) -> str:
        if self.spec.mode != "auto":
            return self.spec.mode
        small = self.window(client)[0] < COMPACT_BELOW
        return "compact" if small and knob_table(ctx) else "edit"

    def style(self, client: ChatClient, mode: str) -> str:
        """The structured-answer style to ask in ("" = free text)."""
        if self.spec.structured == "off":
            return ""
        if self.spec.structured != "auto":
            return self.spec.structured
        if self._style is not None:
            return self._style
        if client.api == "anthropic":
            return "tool"
        # Vendors' models follow the text format and write better code unescaped; a JSON
        # schema is for the local models that cannot keep a format otherwise.
        if _is_vendor(client.base_url) and mode == "edit":
            return ""
        return _STYLES[0]

    def probe_structured(self, client: ChatClient) -> str:
        """The first structured style the server takes for a tiny schema ("" when it takes
        none), remembered for proposals; for `rsilab doctor`."""
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        styles: tuple[str, ...] = ("tool",) if client.api == "anthropic" else _STYLES[:-1]
        for style in styles:
            fmt = AnswerFormat("ping", schema, cast(Style, style), "Say ok")
            try:
                reply = client.complete(
                    "Answer in JSON.", [{"role": "user", "content": "Say ok."}],
                    max_tokens=16, answer_format=fmt,
                )  # fmt: skip
            except FormatRefused:
                continue
            if reply.text.strip().startswith("{"):
                self._style = style
                return style
        self._style = ""
        return ""

    def _refused(self, style: str) -> None:
        """The server refused `style`: fall back to the next one for good."""
        if self.spec.structured == "auto" and style in _STYLES:
            self._style = _STYLES[_STYLES.index(style) + 1]
        else:
            self._style = ""

    # -- proposing --------------------------------------------------------------------
    def propose(self, ctx: Context) -> Proposal | None:
        started = time.monotonic()
        with self._client(ctx) as client:
            try:
                return self._propose(ctx, client, started)
            except Stopped:
                return None  # the supervisor is stopping; nothing was decided

    def _propose(self, ctx: Context, client: ChatClient, started: float) -> Proposal:
        mode = self.mode(client, ctx)
        fix = self._fix_for(ctx) if mode == "edit" else None
        base_files = dict(ctx.files)
        if fix is not None:
            base_files.update(self._proposed[fix.description])
        is_editable = _editable(ctx)
        usage = {"tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}
        transcript: list[str] = []
        repair: list[tuple[str, str]] = []
        answers: list[str] = []
        view = ctx if fix is None else _with_files(ctx, base_files)
        idea_path, idea = ctx.ideas[0] if ctx.ideas and fix is None else (None, None)
        system_in_user = self.system_in_user(client)
        error, overflows, requests = "", 0, 0
        stats: dict[str, Any] = {"mode": mode, "rounds": 0}

        def finish(outcome: str) -> dict[str, Any]:
            return {
                **stats,
                "seconds": round(time.monotonic() - started, 3),
                "tokens_in": usage["tokens_in"],
                "tokens_out": usage["tokens_out"],
                "outcome": outcome,
            }

        while len(answers) <= self.spec.repair_rounds and requests < self.spec.repair_rounds + 6:
            requests += 1
            window, source = self.window(client)
            budget = plan(window, self.spec.max_tokens, self.spec.context_tokens, mode)
            style = self.style(client, mode)
            if mode == "edit":
                system, messages = build_messages(
                    view,
                    budget_tokens=budget.prompt,
                    fix=fix,
                    repair=repair,
                    idea=idea,
                    count=self.counter,
                    json_answer=bool(style),
                )
            else:
                system, messages = build_compact(
                    ctx, budget_tokens=budget.prompt, repair=repair, count=self.counter
                )
            self._calibrate_once(client, system, messages)
            size = prompt_tokens(system, messages, self.counter)
            if (
                mode == "edit"
                and size > budget.prompt
                and self.spec.mode == "auto"
                and knob_table(ctx)
                and not repair
            ):
                mode, fix = "compact", None  # the edit prompt cannot fit this window
                stats["mode"] = mode
                transcript.append(
                    f"## note\nthe edit prompt ({size} tokens) is over the budget of {budget.prompt} ({window}-token window, {source}): compact mode"
                )
                continue
            fmt = self._format(mode, style, ctx, view.files, window)
            max_tokens = budget.answer_for(size)
            if not transcript or not transcript[0].startswith("## system"):
                transcript.insert(0, f"## system\n{system}")
            transcript.append(
                f"## user ({size} tokens estimated, max_tokens {max_tokens}, window {window} "
                f"from {source}, {mode} mode, answer {style or 'free text'}"
                f"{', system prompt in the user turn' if system_in_user else ''})\n"
                f"{messages[-1]['content']}"
            )
            try:
                reply = client.complete(
                    system,
                    messages,
                    max_tokens=max_tokens,
                    answer_format=fmt,
                    system_in_user=system_in_user,
                )
            except FormatRefused as e:
                transcript.append(f"## server refused the answer format\n{e}")
                self._refused(style)
                continue
            except ContextOverflow as e:
                overflows += 1
                learned = self._learn_overflow(e, window, system, messages)
                transcript.append(f"## context overflow\n{e}")
                if learned and overflows <= MAX_OVERFLOWS:
                    continue
                return self._invalid(
                    f"the prompt does not fit the model's window: {e}",
                    "prompt over the model's window",
                    usage,
                    transcript,
                    finish("never"),
                )
            self._count(usage, reply)
            self._learn_usage(reply, system, messages)
            stats["rounds"] = len(answers) + 1
            transcript.append(
                f"## assistant ({reply.model}, {reply.tokens_in}+{reply.tokens_out} tokens, "
                f"{reply.seconds:.1f} s{', truncated' if reply.truncated else ''})\n{reply.text}"
            )
            if reply.text.strip() and reply.text.strip() in answers:
                error += " (then the model repeated that answer word for word)"
                transcript.append("## error\nthe same answer again, word for word: no more rounds")
                break
            answers.append(reply.text.strip())
            try:
                if mode == "compact":
                    answer, changed = parse_compact(reply.text, ctx)
                    description = answer.description
                else:
                    parsed = parse_answer(reply.text)
                    changed = apply_answer(base_files, parsed, is_editable)
                    description = parsed.description
            except EditError as e:
                error = str(e)
                if reply.truncated:
                    error = (
                        f"your answer was cut off at the limit of {max_tokens} tokens before "
                        f"it was complete ({error}); answer again, much shorter: no "
                        "explanation, just the answer"
                    )
                repair.append((reply.text, error))
                transcript.append(f"## error\n{error}")
                continue
            files = {
                **{k: v for k, v in base_files.items() if v != ctx.files.get(k)},
                **changed,
            }
            self._proposed[description] = {**base_files, **changed}
            meta: dict[str, Any] = {
                "usage": usage,
                "log": "\n\n".join(transcript),
                "model": reply.model,
                "proposal": finish("first try" if len(answers) == 1 else "after repair"),
            }
            if fix is not None:
                meta["fixes"] = fix.experiment_id
            if idea_path is not None:
                meta["idea"] = idea  # the person's words stay in the ledger
                _retire(idea_path)
            return Proposal(description, files, self.name, meta=meta)
        tries = len(answers)
        return self._invalid(
            f"the model's answer could not be applied after {tries} tries: {error}",
            f"malformed answer ({tries} tries)",
            usage,
            transcript,
            finish("never"),
        )

    def _invalid(
        self,
        reason: str,
        description: str,
        usage: dict[str, Any],
        transcript: list[str],
        stats: dict[str, Any],
    ) -> Proposal:
        return Proposal(
            description,
            {},
            self.name,
            meta={
                "invalid": reason,
                "usage": usage,
                "log": "\n\n".join(transcript),
                "proposal": stats,
            },
        )

    def _format(
        self, mode: str, style: str, ctx: Context, files: Mapping[str, str], window: int
    ) -> AnswerFormat | None:
        if not style:
            return None
        if mode == "compact":
            schema = compact_schema(list(knob_table(ctx)))
            return AnswerFormat("knob_change", schema, cast(Style, style), "One knob, new value")
        # A model with a small window is a small model: bind `search` to the files' lines.
        schema = edit_schema(files, exact_lines=window < EXACT_LINES_BELOW)
        return AnswerFormat(
            "experiment", schema, cast(Style, style), "The experiment: description, edits"
        )

    def _calibrate_once(
        self, client: ChatClient, system: str, messages: list[dict[str, str]]
    ) -> None:
        """Count the first prompt with the server's tokenizer, when it has one at hand."""
        info = self.server(client)
        if not info.tokenizer or self._tokenizer_used:
            return
        self._tokenizer_used = True
        text = system + "".join(m["content"] for m in messages)
        tokens = count_with_server(client, info, text)
        if tokens:
            self.counter.calibrate(len(text), tokens)

    def _learn_overflow(
        self, e: ContextOverflow, window: int, system: str, messages: list[dict[str, str]]
    ) -> bool:
        """Take what a context-length error says; True when there is something new to try."""
        learned = False
        if e.prompt_tokens:
            chars = len(system) + sum(len(m["content"]) for m in messages)
            before = self.counter.chars_per_token
            self.counter.calibrate(chars, e.prompt_tokens)
            learned = self.counter.chars_per_token < before * 0.98
        if e.window and e.window != window:
            self._learned_window = e.window
            learned = True
        elif not e.window and not e.prompt_tokens:
            # The server named no figure: assume half the window and try again.
            self._learned_window = max(512, window // 2)
            learned = True
        return learned

    def _learn_usage(self, reply: Reply, system: str, messages: list[dict[str, str]]) -> None:
        """Calibrate the token estimate from the server's own count of the prompt."""
        if reply.tokens_in > 0 and not reply.estimated:
            chars = len(system) + sum(len(m["content"]) for m in messages)
            self.counter.calibrate(chars, reply.tokens_in)

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        """Nothing to learn in-process: the next prompt carries the history from the ledger."""

    def _count(self, usage: dict[str, Any], reply: Reply) -> None:
        usage["tokens_in"] += reply.tokens_in
        usage["tokens_out"] += reply.tokens_out
        usage["cost_usd"] += (
            reply.tokens_in * self.spec.price_in + reply.tokens_out * self.spec.price_out
        ) / 1e6

    def _fix_for(self, ctx: Context) -> Fix | None:
        """A fix attempt when the last experiment was our own crash with fixes left."""
        if not ctx.history or self.spec.fix_attempts <= 0:
            return None
        last = ctx.history[-1]
        if (
            last.proposer != self.name
            or last.verdict not in FAILED
            or last.description not in self._proposed
        ):
            return None
        if _fix_depth(ctx.history, last) >= self.spec.fix_attempts:
            return None
        crashed = self._proposed[last.description]
        shown = "\n\n".join(
            f"{path}:\n{text}" for path, text in crashed.items() if text != ctx.files.get(path)
        )
        return Fix(last.experiment_id, last.description, shown, last.log_tail or last.reason)


def _retire(path: Path) -> None:
    """Move a used idea file to `queue/done/` (never over another file)."""
    done = path.parent / "done"
    done.mkdir(exist_ok=True)
    target, n = done / path.name, 1
    while target.exists():
        target, n = done / f"{n}-{path.name}", n + 1
    with contextlib.suppress(FileNotFoundError):  # another proposer took it first
        path.replace(target)


def _fix_depth(history: Any, item: HistoryItem) -> int:
    """How many fix attempts in a row led to `item` (0 for an original idea)."""
    by_id = {h.experiment_id: h for h in history}
    depth, cur = 0, item
    while "fixes" in cur.meta and cur.meta["fixes"] in by_id:
        depth += 1
        cur = by_id[cur.meta["fixes"]]
    return depth


def _editable(ctx: Context) -> Callable[[str], bool]:
    globs = tuple(ctx.editable) or tuple(ctx.files)
    return lambda path: any(fnmatchcase(path, g) for g in globs)


def _with_files(ctx: Context, files: Mapping[str, str]) -> Context:
    from dataclasses import replace

    return replace(ctx, files=dict(files))

"""The "llm" proposer: a chat model as the researcher. Owns: one proposal = one conversation.

Each proposal is a fresh conversation (so the context never bloats): the prompt from
`prompt.py` (program.md, the editable files, the harness API, a history sized to a token
budget), the answer parsed and applied by `edits.py` before any compute is spent. A
malformed or non-applying answer gets `repair_rounds` more turns with the error shown
to the model; if it still fails, the proposal carries `meta["invalid"]` and the
supervisor records it as `invalid` and goes on. After one of its own proposals crashed,
the next proposal may be a fix attempt (up to `fix_attempts` in a row), built on the
crashed files with the traceback tail, and linked to the experiment it fixes.

Transport faults are the client's business (`llmclient.py`: retries, backoff, pausing
through an outage). Keys never leave the client: nothing here stores or logs one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from rsilab.config import LLMSpec, TaskSpec
from rsilab.proposers.base import Context, HistoryItem, register
from rsilab.proposers.edits import EditError, apply_answer, parse_answer
from rsilab.proposers.llmclient import ChatClient, Reply, Stopped, configured, from_spec
from rsilab.proposers.prompt import Fix, build_messages
from rsilab.results import Proposal

FAILED = ("crash", "timeout")


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

    @classmethod
    def from_task(cls, task: TaskSpec, model: str = "", **options: Any) -> LLMProposer:
        """The proposer of `task`'s `[llm]` section (`model`: another model than its own);
        `options` are the constructor's (a `spec` replaces the section)."""
        spec = dataclasses.replace(task.llm, model=model) if model else task.llm
        return cls(**{"spec": spec, **options})

    def _client(self, ctx: Context) -> ChatClient:
        options = {"notify": ctx.notify, "should_stop": ctx.should_stop, **self.client_options}
        return from_spec(self.spec, self.env, **options)

    def propose(self, ctx: Context) -> Proposal | None:
        fix = self._fix_for(ctx)
        base_files = dict(ctx.files)
        if fix is not None:
            base_files.update(self._proposed[fix.description])
        is_editable = _editable(ctx)
        usage = {"tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}
        transcript: list[str] = []
        repair: list[tuple[str, str]] = []
        view = ctx if fix is None else _with_files(ctx, base_files)
        idea_path, idea = ctx.ideas[0] if ctx.ideas and fix is None else (None, None)
        error = ""
        with self._client(ctx) as client:
            for _ in range(self.spec.repair_rounds + 1):
                system, messages = build_messages(
                    view, budget_tokens=self.spec.context_tokens, fix=fix, repair=repair, idea=idea
                )
                if not transcript:
                    transcript.append(f"## system\n{system}")
                transcript.append(f"## user\n{messages[-1]['content']}")
                try:
                    reply = client.complete(system, messages)
                except Stopped:
                    return None  # the supervisor is stopping; nothing was decided
                self._count(usage, reply)
                transcript.append(
                    f"## assistant ({reply.model}, {reply.tokens_in}+{reply.tokens_out} tokens)\n{reply.text}"
                )
                try:
                    answer = parse_answer(reply.text)
                    changed = apply_answer(base_files, answer, is_editable)
                except EditError as e:
                    error = str(e)
                    repair.append((reply.text, error))
                    transcript.append(f"## error\n{error}")
                    continue
                files = {
                    **{k: v for k, v in base_files.items() if v != ctx.files.get(k)},
                    **changed,
                }
                self._proposed[answer.description] = {**base_files, **changed}
                meta: dict[str, Any] = {
                    "usage": usage,
                    "log": "\n\n".join(transcript),
                    "model": reply.model,
                }
                if fix is not None:
                    meta["fixes"] = fix.experiment_id
                if idea_path is not None:
                    meta["idea"] = idea  # the person's words stay in the ledger
                    _retire(idea_path)
                return Proposal(answer.description, files, self.name, meta=meta)
        rounds = self.spec.repair_rounds + 1
        return Proposal(
            f"malformed answer ({rounds} tries)",
            {},
            self.name,
            meta={
                "invalid": f"the model's answer could not be applied after {rounds} tries: {error}",
                "usage": usage,
                "log": "\n\n".join(transcript),
            },
        )

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

"""The proposer protocol and its registry. Owns: Context, HistoryItem, Proposer, register/create.

A proposer turns a `Context` (the incumbent's editable files, the metric, what was tried)
into a `Proposal`, and learns from every judged result through `observe`. Every proposer,
built-in or plugin, is registered here under a name: the built-ins with `@register(...)`,
plugins through the `rsilab.proposers` entry-point group (a factory, or a module that calls
`register` when imported). `create(name, task=..., **options)` is the one way to get a
proposer: a factory with a `from_task(task, **options)` classmethod reads its own settings
from the task (its `rsilab.toml` section, like executors do), `options` overriding them.

Not covered here: deciding, recording or applying anything (the supervisor does that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from rsilab.errors import ConfigError
from rsilab.notify import Notify, silent
from rsilab.registry import Registry, check_call, qualname
from rsilab.results import Metric, Proposal

if TYPE_CHECKING:
    from rsilab.config import TaskSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rsilab.proposers"
# Modules of rsilab that register built-in proposers; imported on first use, so that
# `import rsilab.proposers` stays cheap (the tuner pulls in optuna, the llm one httpx).
_BUILTIN_MODULES = ("tuner", "queue", "llm", "agent")


@dataclass(frozen=True)
class HistoryItem:
    """One decided experiment, as a proposer sees it."""

    experiment_id: int
    description: str
    knobs: Mapping[str, Any]
    verdict: str
    metric: float | None
    proposer: str
    reason: str = ""  # the judge's one-line reason
    log_tail: str = ""  # last lines of the first failed run's log (crashes), else ""
    meta: Mapping[str, Any] = field(default_factory=dict)  # the proposal's meta
    diff: str = ""  # the change against its parent (git diff), "" when unknown

    def to_proposal(self) -> Proposal:
        """The proposal rebuilt for a warm-start `observe` (its files are not kept)."""
        return Proposal(
            self.description, {}, self.proposer, knobs=dict(self.knobs), meta=dict(self.meta)
        )


@dataclass(frozen=True)
class Context:
    """What a proposer may look at when it proposes."""

    files: Mapping[str, str]  # the incumbent's editable files: relative path -> content
    metric: Metric  # name + direction
    incumbent_metric: float | None
    history: Sequence[HistoryItem]  # every decided experiment so far, oldest first
    in_flight: Sequence[Proposal]  # proposals being run now (do not propose them again)
    preset: str = "cpu"  # which knob preset is active (see knobs.py)
    program: str = ""  # the task's research instructions (program.md)
    editable: Sequence[str] = ()  # globs of the files a proposal may change
    limits: Sequence[str] = ()  # what one run may use (TaskSpec.limits), for prompts
    # What the judge measured, for prompts: the sd of one run's metric around the
    # incumbent (the noise floor), the smallest gain it keeps from a change confirmed by
    # all its runs (judge.keep_threshold), and the incumbent's run summary (means of the
    # `key: value` figures train.py printed: steps, tokens/s, loss, ...). None / {}: unknown.
    noise_sd: float | None = None
    keep_gain: float | None = None
    incumbent_summary: Mapping[str, float] = field(default_factory=dict)
    # A fresh checkout of the incumbent that becomes this experiment's worktree. A proposer
    # may edit it in place (coding-agent CLIs do) instead of returning files; the
    # supervisor checks and commits whatever differs, exactly as for returned files.
    workdir: Path | None = None
    # Free-text ideas a person queued for LLM proposers (`.rsilab/queue/*.idea.md`), oldest
    # first: (path, text). A proposer that uses one moves its file to `queue/done/`.
    ideas: Sequence[tuple[Path, str]] = ()
    # Tells the person watching what the proposer waits for (an API outage, say).
    notify: Notify = field(default=silent)
    # True once the supervisor wants to stop: a proposer waiting on something gives up.
    should_stop: Callable[[], bool] = field(default=lambda: False)


@runtime_checkable
class Proposer(Protocol):
    name: str

    def propose(self, ctx: Context) -> Proposal | None:
        """A new proposal, or None when there is nothing to propose now."""
        ...

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        """Learn from a judged result (also called at start-up to replay history)."""
        ...


REGISTRY: Registry[Proposer] = Registry(
    "proposer", "rsilab.proposers", _BUILTIN_MODULES, ENTRY_POINT_GROUP
)
F = TypeVar("F", bound=Callable[..., Proposer])


def register(name: str) -> Callable[[F], F]:
    """Decorator: register a proposer factory (usually the class) under `name`."""
    return REGISTRY.register(name)


def available() -> list[str]:
    """Names of every registered proposer, sorted."""
    return REGISTRY.available()


def create(name: str, *, task: TaskSpec | None = None, **options: Any) -> Proposer:
    """Build the proposer registered as `name`. With `task`, a factory that has a `from_task`
    classmethod builds it from the task's settings, `options` overriding them; otherwise
    `options` are the factory's keywords."""
    factory = REGISTRY.get(name)
    from_task = getattr(factory, "from_task", None) if task is not None else None
    if from_task is not None:
        proposer = check_call("proposer", name, from_task, task, **options)(task, **options)
    else:
        proposer = check_call("proposer", name, factory, **options)(**options)
    if not isinstance(proposer, Proposer):
        raise ConfigError(f"proposer {name!r}: {qualname(factory)} did not build a proposer")
    return proposer


def warm_start(proposer: Proposer, history: Sequence[HistoryItem]) -> None:
    """Replay decided experiments into a fresh proposer, oldest first."""
    for item in history:
        proposer.observe(item.to_proposal(), item.verdict, item.metric)

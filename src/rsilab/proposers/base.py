"""The proposer protocol and its registry. Owns: Context, HistoryItem, Proposer, register/create.

A proposer turns a `Context` (the incumbent's editable files, the metric, what was tried)
into a `Proposal`, and learns from every judged result through `observe`. Every proposer,
built-in or plugin, is registered here under a name: the built-ins with `@register(...)`,
plugins through the `rsilab.proposers` entry-point group (a factory, or a module that calls
`register` when imported). `create(name, **options)` is the one way to get a proposer.

Not covered here: deciding, recording or applying anything (the supervisor does that).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from rsilab.errors import ConfigError
from rsilab.types import Metric, Proposal

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

    def to_proposal(self) -> Proposal:
        """The proposal rebuilt for a warm-start `observe` (its files are not kept)."""
        return Proposal(self.description, {}, self.proposer, knobs=dict(self.knobs))


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
    # A fresh checkout of the incumbent that becomes this experiment's worktree. A proposer
    # may edit it in place (coding-agent CLIs do) instead of returning files; the
    # supervisor checks and commits whatever differs, exactly as for returned files.
    workdir: Path | None = None
    # Free-text ideas a person queued for LLM proposers (`.rsilab/queue/*.idea.md`), oldest
    # first: (path, text). A proposer that uses one moves its file to `queue/done/`.
    ideas: Sequence[tuple[Path, str]] = ()
    # Tells the person watching what the proposer waits for (an API outage, say).
    notify: Callable[[str], None] = field(default=lambda message: None)
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


Factory = Callable[..., Proposer]
F = TypeVar("F", bound=Factory)

_registry: dict[str, Factory] = {}
_plugin_errors: dict[str, str] = {}  # entry-point name -> why it failed to load
_loaded = False


def register(name: str) -> Callable[[F], F]:
    """Decorator: register a proposer factory (usually the class) under `name`."""

    def deco(factory: F) -> F:
        old = _registry.get(name)
        if old is not None and _qualname(old) != _qualname(factory):
            raise ValueError(f"proposer {name!r} is already registered by {_qualname(old)}")
        _registry[name] = factory
        return factory

    return deco


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load() -> None:
    """Import the built-ins and the entry-point plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        full = f"{__package__}.{mod}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the built-ins down with it
            _plugin_errors[ep.name] = f"{type(e).__name__}: {e}"
            log.warning("proposer plugin %r (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if ep.name not in _registry and callable(obj) and not inspect.ismodule(obj):
            register(ep.name)(obj)


def available() -> list[str]:
    """Names of every registered proposer, sorted."""
    _load()
    return sorted(_registry)


def create(name: str, **options: Any) -> Proposer:
    """Build the proposer registered as `name` with `options` (its constructor's keywords)."""
    _load()
    factory = _registry.get(name)
    if factory is None:
        if name in _plugin_errors:
            raise ConfigError(f"proposer {name!r} failed to load: {_plugin_errors[name]}")
        raise ConfigError(f"unknown proposer {name!r} (known: {', '.join(available())})")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise ConfigError(f"proposer {name!r}: bad options {sorted(options)}: {e}") from None
    except ValueError:  # no signature to check (some builtins); let the call decide
        pass
    proposer = factory(**options)
    if not isinstance(proposer, Proposer):
        raise ConfigError(f"proposer {name!r}: {_qualname(factory)} did not build a proposer")
    return proposer


def warm_start(proposer: Proposer, history: Sequence[HistoryItem]) -> None:
    """Replay decided experiments into a fresh proposer, oldest first."""
    for item in history:
        proposer.observe(item.to_proposal(), item.verdict, item.metric)

"""The one plugin mechanism. Owns: named factories of a kind (proposers, executors).

A registry maps names to factories. The built-ins register with `@registry.register(name)`
like any plugin; third-party packages add theirs through an entry-point group (a factory,
or a module that registers when imported). Built-in modules and entry points load once,
on first use, so importing rsilab stays cheap. A broken plugin is recorded, not fatal:
asking for it by name says why it failed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from rsilab.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Factories of one kind (`kind` names it in messages) from built-ins and entry points."""

    def __init__(self, kind: str, package: str, builtins: Sequence[str], group: str) -> None:
        self.kind, self.package, self.builtins, self.group = kind, package, tuple(builtins), group
        self._factories: dict[str, Callable[..., T]] = {}
        self._errors: dict[str, str] = {}  # entry-point name -> why it failed to load
        self._loaded = False

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register a factory (usually the class) under `name`."""

        def deco(factory: F) -> F:
            old = self._factories.get(name)
            if old is not None and qualname(old) != qualname(factory):
                raise ValueError(f"{self.kind} {name!r} is already registered by {qualname(old)}")
            self._factories[name] = factory
            return factory

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtins:
            full = f"{self.package}.{mod}"
            if importlib.util.find_spec(full) is not None:
                importlib.import_module(full)
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not take the built-ins down with it
                self._errors[ep.name] = f"{type(e).__name__}: {e}"
                log.warning("%s plugin %r (%s) failed to load: %s", self.kind, ep.name, ep.value, e)
                continue
            if ep.name not in self._factories and callable(obj) and not inspect.ismodule(obj):
                self.register(ep.name)(obj)

    def available(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as `name`; ConfigError when there is none or it failed to load."""
        self._load()
        factory = self._factories.get(name)
        if factory is None:
            if name in self._errors:
                raise ConfigError(f"{self.kind} {name!r} failed to load: {self._errors[name]}")
            raise ConfigError(
                f"unknown {self.kind} {name!r} (known: {', '.join(self.available())})"
            )
        return factory

    def factory(self, name: str, *args: Any, **options: Any) -> Callable[..., T]:
        """The factory of `name`, checked against its arguments; ConfigError names what is wrong."""
        factory = self.get(name)
        return check_call(self.kind, name, factory, *args, **options)


def check_call(
    kind: str, name: str, fn: Callable[..., T], *args: Any, **options: Any
) -> Callable[..., T]:
    """`fn` if it accepts these arguments; else a ConfigError that names `kind` `name`."""
    try:
        inspect.signature(fn).bind(*args, **options)
    except TypeError as e:
        raise ConfigError(f"{kind} {name!r}: bad options {sorted(options)}: {e}") from None
    except ValueError:  # no signature to check (some builtins); let the call decide
        pass
    return fn

"""Shared fixtures: every test, and every test module's own fixtures, get their own
RSILAB_HOME, so no test touches ~/.cache and none inherits another's state there (a noise
prior carried from an earlier baseline would shorten the next baseline)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """RSILAB_HOME for a module's module-scoped fixtures (set up before them: autouse)."""
    home = tmp_path_factory.mktemp("rsilab-module-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSILAB_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def rsilab_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("rsilab-home")
    monkeypatch.setenv("RSILAB_HOME", str(home))
    return home


@pytest.fixture
def sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler, whatever this process inherited (a test suite started as a
    background job of a script has SIGINT ignored, and then `_thread.interrupt_main` and
    `signal.raise_signal(SIGINT)` do nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

"""Shared fixtures: every test gets its own RSILAB_HOME, so no test touches ~/.cache."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


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

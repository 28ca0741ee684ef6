"""Shared fixtures: every test gets its own RSILAB_HOME, so no test touches ~/.cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def rsilab_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("rsilab-home")
    monkeypatch.setenv("RSILAB_HOME", str(home))
    return home

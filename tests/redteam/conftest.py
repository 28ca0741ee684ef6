"""Red-team fixtures (a host TCP server to aim at) and the results table at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hostnet import tcp_listener
from redteam_lab import REPORT, ROWS, table


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""
    with tcp_listener() as served:
        yield served


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("red team")
    terminalreporter.write_line(table())
    try:  # merged with the file's table: CI's default run and its slow run each add rows
        previous = REPORT.read_text().split("\n\n", 1)[-1] if REPORT.is_file() else ""
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text("# Red-team results\n\n" + table(previous) + "\n")
    except OSError:
        pass  # a read-only checkout: the terminal table is enough

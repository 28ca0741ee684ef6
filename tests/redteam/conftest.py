"""Red-team fixtures (a host TCP server to aim at) and the results table at the end of the session."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redteam_lab import REPORT, ROWS, table


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.1)
    hits: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], hits
    stop.set()
    thread.join()
    srv.close()


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

"""A TCP server on the host's 127.0.0.1 for network-escape tests (sandbox, red team)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def tcp_listener() -> Iterator[tuple[int, list[int]]]:
    """(port, hits): the list counts the connections the server accepted."""
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
    try:
        yield srv.getsockname()[1], hits
    finally:
        stop.set()
        thread.join()
        srv.close()

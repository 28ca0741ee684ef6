"""What the memory watchdog charges a run (rsilab.run.memory): memory held outside RSS
(a memfd never mapped) counts, memory its processes share counts once, and the watchdog
kills a run past its cap on that figure."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsilab.run.memory import held_bytes
from rsilab.run.process import members_of, run_process, scan

MB = 1 << 20


def _holding(code: str, processes: int = 1) -> Iterator[subprocess.Popen[str]]:
    """Run `code` (which holds memory, then prints one line per process ready) until the
    test is done with it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(processes):
            assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture()
def memfd_holder() -> Iterator[subprocess.Popen[str]]:
    yield from _holding("""\
        import os, time
        fd = os.memfd_create("held")
        for _ in range(200):
            os.write(fd, b"x" * (1 << 20))
        print("ready", flush=True)
        time.sleep(60)
        """)


@pytest.fixture()
def forked_sharers() -> Iterator[subprocess.Popen[str]]:
    """A parent and 3 forked children sharing 200 MB of copy-on-write pages."""
    yield from _holding(
        """\
        import os, time
        data = bytearray(b"x" * (200 << 20))
        for _ in range(3):
            if os.fork() == 0:
                break
        os.write(1, b"ready\\n")  # one write each: lines from 4 processes never interleave
        time.sleep(60)
        """,
        processes=4,
    )


def test_a_memfd_never_mapped_is_counted(memfd_holder: subprocess.Popen[str]) -> None:
    members = members_of(scan(), memfd_holder.pid)
    assert sum(m.rss for m in members) < 100 * MB  # RSS does not see it
    assert held_bytes(members) >= 200 * MB


def test_pages_shared_by_forked_processes_count_once(
    forked_sharers: subprocess.Popen[str],
) -> None:
    members = members_of(scan(), forked_sharers.pid)
    assert len(members) == 4
    assert sum(m.rss for m in members) > 700 * MB  # RSS counts them 4 times
    assert 200 * MB <= held_bytes(members) < 350 * MB


def test_watchdog_kills_a_run_past_its_cap_on_memfd_memory(tmp_path: Path) -> None:
    code = textwrap.dedent("""\
        import os, time
        fd = os.memfd_create("held")
        for _ in range(300):
            os.write(fd, b"x" * (1 << 20))
        time.sleep(30)
        """)
    outcome = run_process(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={},
        log=tmp_path / "log",
        timeout=20,
        memory_cap_gb=0.2,
    )
    assert outcome.oom and outcome.returncode is None
    assert outcome.seconds < 15
    assert outcome.peak_rss_gb > 0.2

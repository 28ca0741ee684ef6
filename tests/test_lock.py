"""One supervisor per workspace (rsilab.loop.lock): a second holder is refused in one line
that names the first; the lock is re-entrant in its thread, refused to another thread; a
holder killed with SIGKILL leaves nothing that stops the next one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsilab.errors import WorkspaceError
from rsilab.loop import lock


@pytest.fixture()
def other_holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of the state folder tmp_path."""
    code = textwrap.dedent(f"""\
        import time
        from pathlib import Path
        from rsilab.loop import lock
        with lock.hold(Path({str(tmp_path)!r}), Path("ws")):
            print("held", flush=True)
            time.sleep(60)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_holder_is_refused_naming_the_first(
    tmp_path: Path, other_holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(WorkspaceError) as refused, lock.hold(tmp_path, Path("ws")):
        pytest.fail("held twice")
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {other_holder.pid} on " in message and "since" in message
    assert "rsilab stop ws" in message


def test_lock_left_by_sigkill_is_taken_over(
    tmp_path: Path, other_holder: subprocess.Popen[str]
) -> None:
    other_holder.kill()
    other_holder.wait()
    with lock.hold(tmp_path, Path("ws")):
        assert f'"pid": {other_holder.pid}' not in (tmp_path / lock.LOCK_FILE).read_text()


def test_reentrant_in_its_process_and_released_after(tmp_path: Path) -> None:
    with lock.hold(tmp_path, Path("ws")), lock.hold(tmp_path, Path("ws")):
        pass
    code = textwrap.dedent(f"""\
        from pathlib import Path
        from rsilab.loop import lock
        with lock.hold(Path({str(tmp_path)!r}), Path("ws")):
            pass
        """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # free again


def test_another_thread_of_the_holder_is_refused(tmp_path: Path) -> None:
    errors: list[Exception] = []

    def second() -> None:
        try:
            with lock.hold(tmp_path, Path("ws")):
                pass
        except WorkspaceError as e:
            errors.append(e)

    with lock.hold(tmp_path, Path("ws")):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=30)
    assert len(errors) == 1 and "another supervisor" in str(errors[0])


def test_creating_waits_for_the_creator_and_leaves_no_empty_folder(tmp_path: Path) -> None:
    new = tmp_path / "a" / "ws"
    code = textwrap.dedent(f"""\
        from pathlib import Path
        from rsilab.loop import lock
        with lock.creating(Path({str(new)!r})):
            print("waited", flush=True)
        """)
    with lock.creating(new):
        assert new.is_dir()
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:  # it cannot get past the flock while this one is creating
            other.wait(timeout=1.0)
            pytest.fail("a second creator did not wait")
        except subprocess.TimeoutExpired:
            pass
        (new / "made").write_text("")
    assert other.communicate(timeout=30)[0] == "waited\n"
    assert (new / "made").is_file()  # not empty: kept
    (new / "made").unlink()
    with lock.creating(new):
        pass
    assert new.is_dir()  # existed before: kept
    gone = tmp_path / "b" / "ws"
    with lock.creating(gone):
        pass
    assert not (tmp_path / "b").exists()  # made here and still empty: removed

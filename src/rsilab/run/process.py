"""A process and its watchdogs. Owns: starting a command in its own session, the wall-clock
limit, the memory and process-count watchdogs over its whole tree, and killing it.

`run_process` runs one command to the end and returns a `ProcessOutcome` (never raises for
what the command does): past `timeout` it gets SIGTERM, then SIGKILL after GRACE_SECONDS
(before that, optionally, a "wrap up now" signal to the command alone: `signal_command`);
the watchdogs read /proc every WATCH_SECONDS and kill the session past `memory_cap_gb`
(the memory every member holds, in or out of a sandbox, shared and memfd memory included:
memory.py) or `max_procs` tasks. Every process started here asks the kernel to kill it
when its parent dies (`die_with_parent`), so `kill -9` of rsilab takes its runs down with it.

Not covered: what a run is (runner.py) or how it is isolated (sandbox.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rsilab.fsio import tail_regular
from rsilab.run.memory import held_bytes

GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05
TAIL_LINES = 25
TAIL_LINE_CHARS = 500  # a log line longer than this is cut in a log tail
TAIL_BYTES = 256 * 1024  # how much of the end of a log is read for its tail and summary


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int | None  # None: killed by us
    seconds: float
    timed_out: bool
    oom: bool
    peak_rss_gb: float
    too_many_procs: bool = False  # past the task's max_procs (a fork bomb)
    # CPU time of the whole process tree, user + system, as the kernel counted it: what the
    # waited-for tree reported to wait4, or, when more, the most the watchdog saw at one
    # look: each member's own time plus the children it waited for (a sandbox's PID 1 does
    # not pass its children's times up to wait4; the last WATCH_SECONDS may be missed).
    cpu_seconds: float = 0.0


WATCH_SECONDS = 0.5  # how often the watchdogs read /proc


@dataclass(frozen=True)
class _Proc:
    """One line of /proc/<pid>/stat, the fields the watchdogs use."""

    pid: int
    ppid: int
    sid: int
    state: str
    threads: int  # tasks: what RLIMIT_NPROC counts
    rss: int  # bytes
    start: int  # start time in clock ticks after boot: tells a pid from a reused one
    cpu: int = 0  # user + system time so far, in clock ticks
    children_cpu: int = 0  # the same of its children it has waited for (cutime + cstime)


def scan() -> dict[int, _Proc]:
    """Every process on the machine, in one pass over /proc (empty without /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    out: dict[int, _Proc] = {}
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return out
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()  # fields[i] is field i + 3 of proc(5)
            pid = int(entry.name)
            out[pid] = _Proc(
                pid,
                int(fields[1]),
                int(fields[3]),
                fields[0],
                int(fields[17]),
                int(fields[21]) * page,
                int(fields[19]),
                int(fields[11]) + int(fields[12]),
                int(fields[13]) + int(fields[14]),
            )
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return out


def members_of(procs: dict[int, _Proc], root: int, *, zombies: bool = False) -> list[_Proc]:
    """The live processes of the run started as `root`: its session (without a sandbox) and
    every descendant (a sandbox puts the run in sessions and a PID namespace of its own, but
    the tree stays below `root`; orphans there are adopted by the sandbox's PID 1). With
    `zombies`, the exited ones not yet reaped too (their CPU time is final)."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found = {pid for pid, p in procs.items() if p.sid == root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.add(root)
    dead = () if zombies else ("Z", "X")
    return [procs[pid] for pid in found if pid in procs and procs[pid].state not in dead]


def _finish(root: int, seen: dict[int, int], deadline: float) -> None:
    """SIGKILL what is left of the run (its session, and every member a watchdog saw, if
    still the same process) and wait, until `deadline`, for it to be gone: a killed process
    keeps its memory (and its GPU) until its exit completes, and a run must not overlap the
    next one on its slot."""
    kill_group(root, signal.SIGKILL)
    while time.monotonic() < deadline:
        alive = [
            p
            for p in scan().values()
            if p.state not in ("Z", "X") and (p.sid == root or seen.get(p.pid) == p.start)
        ]
        if not alive:
            return
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS / 5)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _live_members(sid: int) -> list[int]:
    """Pids in session `sid` that have not exited (a zombie has; its parent reaps it)."""
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []  # no /proc (macOS): the group kill is all we can do
    pids = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):  # field 3: state
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_session(sid: int, deadline: float) -> None:
    """SIGKILL what is left of the run's session and wait, until `deadline`, for it to be
    gone: a killed process keeps its memory (and its GPU) until its exit completes, and a
    run must not overlap the next one on its slot."""
    kill_group(sid, signal.SIGKILL)
    while (alive := _live_members(sid)) and time.monotonic() < deadline:
        for pid in alive:  # also any that moved to another process group of the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS / 5)


def _wait_until(pid: int, deadline: float) -> int | None:
    """Poll for `pid` to exit until `deadline`; its wait status, or None if still running."""
    while time.monotonic() < deadline:
        done, status, _ = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status
        time.sleep(POLL_SECONDS)
    return None


# Signals a run may be sent to wrap up (TaskSpec.wrap_up_signal): a child starts with them at
# their defaults. A supervisor started in the background by a shell (`rsilab run ... &` in
# a script, nohup) has SIGINT ignored, and an ignored signal stays ignored across exec: a
# foreign loop's KeyboardInterrupt handler would never see the wrap-up SIGINT.
DEFAULT_IN_CHILD = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the supervisor dies (even by kill -9),
    so no training process outlives the supervisor that owns its budget (Linux only); and
    the wrap-up signals at their defaults (DEFAULT_IN_CHILD)."""
    for sig in DEFAULT_IN_CHILD:
        signal.signal(sig, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the process group is still killed when the run ends


def run_process(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    timeout: float,
    memory_cap_gb: float = 0.0,
    max_procs: int = 0,
    wrap_up: tuple[float, int] | None = None,
) -> ProcessOutcome:
    """Run `cmd` in its own session with output to `log`; enforce wall time, memory (what
    the run's processes hold: memory.held_bytes) and, when `max_procs` > 0, the number of
    its tasks. `wrap_up` (seconds, signal): that signal goes once to the command itself
    (`signal_command`) that many seconds after its start, before the `timeout` kill."""
    start = time.monotonic()
    proc = spawn(cmd, cwd=cwd, env=env, log=log)
    if isinstance(proc, ProcessOutcome):
        return proc
    return watch(
        proc,
        start=start,
        timeout=timeout,
        memory_cap_gb=memory_cap_gb,
        max_procs=max_procs,
        wrap_up=wrap_up,
    )


WRAPPERS = ("bwrap", "unshare")  # sandbox processes above the command (see sandbox.wrap)


def signal_command(root: int, sig: int) -> list[int]:
    """Send `sig` to the command a run started as `root`: the topmost processes of its tree
    that are not a sandbox wrapper (bwrap, unshare), never to the wrappers (a signal they do
    not handle would end the sandbox) nor to the command's own children (a worker that does
    not handle it would die). Returns the pids signalled."""
    procs = scan()
    members = {m.pid: m for m in members_of(procs, root)}

    def comm(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return ""

    wrappers = {pid for pid in members if comm(pid) in WRAPPERS}
    top = [
        m.pid
        for m in members.values()
        if m.pid not in wrappers and (m.ppid not in members or m.ppid in wrappers)
    ]
    for pid in top:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return top


def spawn(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes] | ProcessOutcome:
    """Start `cmd` in its own session, output appended to `log`; an outcome if it cannot start."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            return subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as e:  # no such command, or its folder (a worktree) is gone: a result
            out.write(f"rsilab: cannot start {cmd[0]} in {cwd}: {e.strerror or e}\n".encode())
            return ProcessOutcome(127, 0.0, False, False, 0.0)


def watch(
    proc: subprocess.Popen[bytes],
    *,
    start: float,
    timeout: float,
    memory_cap_gb: float = 0.0,
    max_procs: int = 0,
    wrap_up: tuple[float, int] | None = None,
) -> ProcessOutcome:
    """Wait for `proc` (a session leader from `spawn`), enforcing `timeout` seconds from
    `start` (a time.monotonic() reading) and the watchdogs; then kill what is left of it.
    `wrap_up`: see `run_process`."""
    pgid = proc.pid
    timed_out = oom = too_many = False
    peak = 0
    next_check = 0.0
    seen: dict[int, int] = {}  # pid -> start time of every member the watchdogs saw
    # The tree's CPU ticks at the busiest look: every member's own time plus what it has
    # waited for. A child is in its own count while it exists (zombie included) and in its
    # parent's once reaped, never in both; so short-lived workers a member waited for count
    # even when no look saw them.
    cpu = 0
    status: int | None = None
    usage: resource.struct_rusage | None = None

    def look() -> list[_Proc]:
        nonlocal cpu
        everyone = members_of(scan(), pgid, zombies=True)
        cpu = max(cpu, sum(m.cpu + m.children_cpu for m in everyone))
        members = [m for m in everyone if m.state not in ("Z", "X")]
        seen.update((m.pid, m.start) for m in members)
        return members

    try:
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status = wait_status
                peak = max(peak, usage.ru_maxrss * 1024)
                break
            now = time.monotonic()
            if wrap_up is not None and now - start >= wrap_up[0]:
                signal_command(pgid, wrap_up[1])
                wrap_up = None  # once
            if now - start > timeout:
                timed_out = True
                look()  # so that _finish also gets what runs in the sandbox's own sessions
                kill_group(pgid, signal.SIGTERM)
                status = _wait_until(proc.pid, now + GRACE_SECONDS)
                if status is None:
                    kill_group(pgid, signal.SIGKILL)
                    _, status, _ = os.wait4(proc.pid, 0)
                break
            if now >= next_check:
                next_check = now + WATCH_SECONDS
                members = look()
                held = held_bytes(members) if memory_cap_gb > 0 else sum(m.rss for m in members)
                peak = max(peak, held)
                oom = memory_cap_gb > 0 and held > memory_cap_gb * 2**30
                too_many = (
                    not oom and max_procs > 0 and sum(m.threads for m in members) >= max_procs
                )
                if oom or too_many:
                    kill_group(pgid, signal.SIGKILL)
                    for m in members:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(m.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
            time.sleep(POLL_SECONDS)
    except BaseException:
        # Ctrl-C (or any error) in the supervisor: the run must not outlive it.
        kill_and_reap(proc, seen)
        raise
    # Kill leftovers (a grandchild that outlived its parent) and wait for them to be gone.
    _finish(pgid, seen, time.monotonic() + GRACE_SECONDS)
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -9
    rc = None if (timed_out or oom or too_many) else proc.returncode
    waited = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
    sampled = cpu / os.sysconf("SC_CLK_TCK")
    return ProcessOutcome(
        rc,
        time.monotonic() - start,
        timed_out,
        oom,
        peak / 2**30,
        too_many,
        cpu_seconds=max(waited, sampled),
    )


def kill_and_reap(proc: subprocess.Popen[bytes], seen: dict[int, int]) -> None:
    """SIGKILL the session `proc` leads, reap it, and wait for `seen` members to be gone."""
    kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.wait4(proc.pid, 0)
    proc.returncode = -9  # reaped: its pid may be reused, nobody must signal it again
    _finish(proc.pid, seen, time.monotonic() + GRACE_SECONDS)


def tail(path: Path, n: int = TAIL_LINES, *, base: Path | None = None) -> str:
    """The last `n` lines of a log, each cut to TAIL_LINE_CHARS; "" when it is missing or
    not a regular file. Only the end of the file is read: a run may print gigabytes (until
    the disk is full), and the tail goes into the ledger and into proposers' prompts. Read
    with `tail_regular` (no symlink followed below `base`, default the log's folder): the
    run wrote that folder and could have left a link to a secret in place of its log."""
    data = tail_regular(path, TAIL_BYTES, base=base)
    if data is None:
        return ""
    lines = data.decode(errors="replace").splitlines()
    return "\n".join(
        line if len(line) <= TAIL_LINE_CHARS else line[:TAIL_LINE_CHARS] + " [...]"
        for line in lines[-n:]
    )


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1

"""Red team: memory a run holds where the RSS watchdog did not look, and an evaluator with no
memory cap. Each attack goes through the real loop on the toy task with `memory_gb` at
0.5 and holds 0.8 GB (1.5 GB through the evaluator) for a few seconds; then, if nothing
stopped it, it trains an honest but poor model (so an uncaught attack ends `discard`, not
`oom`). Caught: the experiment ends a crash with an `oom` run, the branch and incumbent
unchanged.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest
from redteam_lab import Attack, Lab, check, run_attacks

from rsilab.paths import bundled_tasks_dir
from rsilab.run import sandbox
from rsilab.workspace import Workspace, init_workspace

SANDBOX = sandbox.bwrap_problem() is None
TOY = (bundled_tasks_dir() / "toy" / "train.py").read_text()
POOR = TOY.replace("STEPS = 300 ", "STEPS = 1   ")  # an honest but poor model
assert POOR != TOY
OVERRIDES: list[tuple[str, object]] = [
    ("budget", 8),
    ("overhead", 4),
    ("memory_gb", 0.5),
    ("max_procs", 64),
    ("env.TOY_NOISE", "0"),
]
HOLD = textwrap.dedent("""\
    import ctypes, os, time
    N = 800 << 20  # bytes held: over the 0.5 GB cap
    def fill(fd):
        os.ftruncate(fd, N)
        chunk = b"x" * (1 << 20)
        for _ in range(N >> 20):
            os.write(fd, chunk)
    """)
WAIT = "time.sleep(4)  # held; a watchdog that counts it kills the run here\n"


def _attacks() -> list[Attack]:
    mapped = (
        HOLD
        + textwrap.dedent("""\
        fd = os.memfd_create("held")
        fill(fd)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        addr = libc.mmap(None, N, 3, 1, fd, 0)  # PROT_READ | PROT_WRITE, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value)
        ctypes.c_char.from_address(addr).value  # one page resident: RSS sees 4 KiB
        os.close(fd)  # held by the mapping alone
        """)
        + WAIT
    )
    tmp_file = (
        HOLD
        + textwrap.dedent("""\
        fd = os.open("/tmp/held", os.O_RDWR | os.O_CREAT)
        fill(fd)
        os.close(fd)  # held by the sandbox's /tmp (a tmpfs) with no process holding it
        """)
        + WAIT
    )
    sparse = textwrap.dedent("""\
        import numpy as np
        from rsilab import harness
        n = 3 << 26  # 1.5 GiB of float64 when loaded; 0 bytes on disk
        with open(harness.artifact_dir() / "weights.npy", "wb") as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (n,)}
            np.lib.format.write_array_header_1_0(f, header)
            f.truncate(f.tell() + n * 8)
        harness.print_summary({"num_steps": 0})
        """)
    return [
        Attack(
            "memory held in a memfd never mapped",
            {"train.py": HOLD + 'fill(os.memfd_create("held"))\n' + WAIT + POOR},
            ("crash",),
            "^oom: over the memory cap",
        ),
        Attack(
            "memory held in a memfd mapped by one page, fd closed",
            {"train.py": mapped + POOR},
            ("crash",),
            "^oom: over the memory cap",
        ),
        Attack(
            "memory held in files of the sandbox's /tmp",
            {"train.py": tmp_file + POOR},
            ("crash",),
            "^oom: over the memory cap",
            needs_sandbox=True,  # without a sandbox /tmp is the host's (its disk, here)
        ),
        Attack(
            "evaluator expands memory (a sparse weights.npy)",
            {"train.py": sparse},
            ("crash",),
            "^oom: evaluation over the memory cap",
        ),
    ]


ATTACKS = {a.cls: a for a in _attacks()}


@pytest.fixture(scope="module")
def memory_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("redteam-memory")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSILAB_HOME", str(root / "rsilab-home"))
        (root / "rsilab-home").mkdir()
        init_workspace(root / "ws", bundled_tasks_dir() / "toy", "rt")
        attacks = [a for a in ATTACKS.values() if SANDBOX or not a.needs_sandbox]
        lab = run_attacks(Workspace(root / "ws", "rt"), attacks, overrides=OVERRIDES)
        yield lab
        lab.ledger.close()


@pytest.mark.parametrize("cls", list(ATTACKS))
def test_memory_attack_is_caught(memory_lab: Lab, cls: str) -> None:
    attack = ATTACKS[cls]
    if attack.needs_sandbox and not SANDBOX:
        pytest.skip("needs bubblewrap here")
    out = check(memory_lab, attack)
    # Killed while holding it, not after: the watchdog saw the memory, not the end of the run.
    run = out.runs[0]
    if "evaluator" in cls:
        assert run.eval_seconds < 30
    else:
        assert run.train_seconds < 4 + 3, run.train_seconds

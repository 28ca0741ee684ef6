"""Tests for rsilab.run.sandbox through the real runner: real bubblewrap, real processes, a real
workspace (git worktrees, a ledger file, prepared data under RSILAB_HOME).

A probe task's train.py and its frozen evaluator try what a cheating run would try (open
a socket, read the validation split or the ledger, write outside the worktree, ...) and
record each outcome in a JSON file in the run folder; the tests read it and check the
host side too. The bwrap tests are skipped where bubblewrap cannot run; the fallback
tests force the probe to fail and run anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hostnet import tcp_listener

import rsilab
from rsilab.cli import main
from rsilab.config import TaskSpec
from rsilab.data import prepare
from rsilab.errors import RsilabError
from rsilab.results import RunResult, Status
from rsilab.run import runner, sandbox
from rsilab.workspace import Workspace, git, init_workspace

needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_problem() is not None,
    reason=f"bubblewrap not usable here: {sandbox.bwrap_problem()}",
)

# Attempts shared by train.py and the evaluator: name -> outcome ("ok" or the error).
PROBE_LIB = """
import glob, json, os, socket, sys
T = json.loads({targets!r})
out = {{}}

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except BaseException as e:
        out[name] = f"{{type(e).__name__}}: {{e}}"

def read(path):
    def go():
        if not open(path, "rb").read(1):
            raise EOFError(f"{{path}} reads empty")
    return go

def write(path):
    def go():
        with open(path, "a") as f:
            f.write("pwned\\n")
    return go

def found_val():
    hits = glob.glob(os.path.join(T["rsilab_home"], "data", "*", "val.bin")) + glob.glob(T["val"])
    if hits:
        raise AssertionError(f"found {{hits}}")
    raise FileNotFoundError("no val.bin visible")

attempt("connect_host", lambda: socket.create_connection(("127.0.0.1", T["port"]), timeout=3).close())
attempt("resolve", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("read_val", read(T["val"]))
attempt("find_val", found_val)
attempt("read_train", read(T["train"]))
attempt("read_ledger", read(T["ledger"]))
attempt("read_decoy", read(T["decoy"]))
attempt("read_home", read(os.path.join(T["home"], ".rsilab-secret-" + T["tag"])))
attempt("write_home", write(os.path.join(T["home"], "pwned-" + T["tag"])))
attempt("write_rsilab_home", write(os.path.join(T["rsilab_home"], "pwned")))
attempt("write_decoy", write(T["decoy"]))
attempt("write_ledger", write(T["ledger"]))
attempt("write_ref", write(os.path.join(T["gitdir"], "refs", "heads", "pwned")))
attempt("write_ws_root", write(os.path.join(T["ws"], "train.py")))
attempt("write_frozen_in_cwd", write("evaluate.py"))
attempt("write_tmp", write("/tmp/marker-" + T["tag"]))
attempt("write_cwd", write("scratch.txt"))
attempt("write_artifact", write(os.path.join(T["artifact"], "written.txt")))
out["tmp"] = sorted(os.listdir("/tmp"))
out["uid"] = os.getuid()
out["pids_seen"] = len([p for p in os.listdir("/proc") if p.isdigit()])
"""

TRAIN = """
from rsilab import harness
{lib}
with open(harness.artifact_dir() / "train_probe.json", "w") as f:
    json.dump(out, f)
harness.print_summary({{"probe": 1.0}})
"""

EVALUATE = """
import argparse
{lib}
p = argparse.ArgumentParser()
for a in ("--artifact", "--val", "--out", "--seed", "--threads"):
    p.add_argument(a, default="")
args = p.parse_args()
attempt("read_given_val", read(args.val))
attempt("see_worktree", lambda: os.listdir(T["worktree"]))
with open(args.out, "w") as f:
    json.dump({{"val_loss": 1.0, "probe": out}}, f)
"""


@dataclass
class Lab:
    ws: Workspace
    task: TaskSpec
    worktree: Path
    decoy: Path
    train: Path
    val: Path
    hits: list[int]
    tag: str

    def run(self, k: int = 0, **options: object) -> RunResult:
        return runner.run(
            self.task,
            self.worktree,
            self.ws.run_dir(1, k),
            seed=k,
            train_data=self.train,
            val_data=self.val,
            **options,
        )  # type: ignore[arg-type]

    def probe(self, k: int = 0, name: str = "train_probe.json") -> dict[str, object]:
        loaded: dict[str, object] = json.loads(
            (self.ws.run_dir(1, k) / "artifact" / name).read_text()
        )
        return loaded


@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""
    with tcp_listener() as served:
        yield served


def make_lab(
    tmp_path: Path,
    rsilab_home: Path,
    port: int,
    hits: list[int],
    *,
    train: str | None = None,
    home: Path | None = None,
    **settings: object,
) -> Lab:
    """A workspace of the probe task with one worktree to run in and one decoy worktree.
    `home` is what the probes treat as $HOME (the real one only where bwrap hides it)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    data = prepare(str(corpus), home=rsilab_home / "data")
    ws_dir = tmp_path / "ws"
    tag = uuid.uuid4().hex[:8]
    targets = {
        "port": port,
        "val": str(data.val_path),
        "train": str(data.train_path),
        "tag": tag,
        "ledger": str(ws_dir / ".rsilab" / "ledger.db"),
        "decoy": str(ws_dir / ".rsilab" / "worktrees" / "exp-2" / "train.py"),
        "home": str(home or tmp_path / "home"),
        "rsilab_home": str(rsilab_home),
        "gitdir": str(ws_dir / ".git"),
        "ws": str(ws_dir),
        "worktree": str(ws_dir / ".rsilab" / "worktrees" / "exp-1"),
        "artifact": str(ws_dir / ".rsilab" / "runs" / "exp-0001" / "run-0" / "artifact"),
    }
    lib = PROBE_LIB.format(targets=json.dumps(targets))
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "train.py").write_text(train if train is not None else TRAIN.format(lib=lib))
    (task_dir / "evaluate.py").write_text(EVALUATE.format(lib=lib))
    keys = {"budget": 10, "overhead": 20, "eval_timeout": 60, "max_procs": 64, **settings}
    (task_dir / "rsilab.toml").write_text(
        "\n".join(
            [
                'name = "probe"',
                'editable = ["train.py"]',
                'frozen = ["rsilab.toml", "evaluate.py"]',
                'train = "python train.py"',
                'evaluator = "script:evaluate.py"',
                'data = "none"',
                *(f"{k} = {v}" for k, v in keys.items()),
                "[metric]",
                'name = "val_loss"',
                'direction = "min"',
            ]
        )
        + "\n"
    )
    init_workspace(ws_dir, task_dir, "t")
    ws = Workspace(ws_dir, "t")
    ws.ledger_path.write_text("LEDGER")
    head = ws.incumbent_commit()
    worktree = ws.create_worktree("exp-1", head)
    decoy = ws.create_worktree("exp-2", head)
    return Lab(
        ws, ws.load_task(), worktree, decoy / "train.py", data.train_path, data.val_path, hits, tag
    )


@pytest.fixture
def lab(tmp_path: Path, rsilab_home: Path, listener: tuple[int, list[int]]) -> Lab:
    """The probe lab; its probes write only below tmp_path, even without a sandbox."""
    return make_lab(tmp_path, rsilab_home, *listener)


@pytest.fixture
def home_lab(tmp_path: Path, rsilab_home: Path, listener: tuple[int, list[int]]) -> Iterator[Lab]:
    """The probe lab aimed at the real $HOME (a secret file placed there for the test): only
    for bwrap, which hides it."""
    lab = make_lab(tmp_path, rsilab_home, *listener, home=Path.home())
    secret = Path.home() / f".rsilab-secret-{lab.tag}"
    secret.write_text("secret")
    yield lab
    secret.unlink()
    (Path.home() / f"pwned-{lab.tag}").unlink(missing_ok=True)


def _failed(outcome: object) -> bool:
    return isinstance(outcome, str) and outcome != "ok"


# --- bwrap -----------------------------------------------------------------------------


@pytest.fixture
def probed(home_lab: Lab) -> tuple[Lab, RunResult]:
    lab = home_lab
    result = lab.run()
    assert result.status is Status.OK, f"{result.reason}\n{result.log_tail}"
    return lab, result


@needs_bwrap
def test_run_records_its_isolation_level(probed: tuple[Lab, RunResult]) -> None:
    _, result = probed
    assert result.isolation == "bwrap"


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback(probed: tuple[Lab, RunResult]) -> None:
    lab, result = probed
    out = lab.probe()
    assert _failed(out["connect_host"]) and _failed(out["resolve"]), out
    assert lab.hits == []  # the host's server never saw a connection
    assert _failed(result.evaluation["probe"]["connect_host"])


@needs_bwrap
def test_training_cannot_see_validation_data_ledger_or_other_worktrees(
    probed: tuple[Lab, RunResult],
) -> None:
    lab, _ = probed
    out = lab.probe()
    assert out["read_train"] == "ok"  # the training split is bound in, read-only
    for name in ("read_val", "find_val", "read_ledger", "read_decoy", "read_home"):
        assert _failed(out[name]), (name, out[name])
    assert "FileNotFoundError" in str(out["read_val"]) and "FileNotFoundError" in str(
        out["read_ledger"]
    )


@needs_bwrap
def test_writes_outside_the_worktree_and_run_folder_fail_and_leave_the_host_untouched(
    probed: tuple[Lab, RunResult],
) -> None:
    lab, _ = probed
    out = lab.probe()
    for name in (
        "write_home",
        "write_rsilab_home",
        "write_decoy",
        "write_ledger",
        "write_ref",
        "write_ws_root",
        "write_frozen_in_cwd",
    ):
        assert _failed(out[name]), (name, out[name])
    assert out["write_cwd"] == out["write_artifact"] == out["write_tmp"] == "ok"
    assert lab.ws.ledger_path.read_text() == "LEDGER"
    assert not (Path.home() / f"pwned-{lab.tag}").exists()
    assert not (lab.ws.root / ".git" / "refs" / "heads" / "pwned").exists()
    for tree in (lab.ws.root, lab.decoy.parent, lab.worktree):  # all as committed
        assert git(tree, "status", "--porcelain", "--untracked-files=all") == "", tree
    # What the run wrote into its worktree (scratch.txt) is gone: the next run starts clean.


@needs_bwrap
def test_private_tmp(probed: tuple[Lab, RunResult]) -> None:
    lab, _ = probed
    out = lab.probe()
    assert out["write_tmp"] == "ok"
    assert not Path(f"/tmp/marker-{lab.tag}").exists()  # it went to the sandbox's own /tmp
    # Only its marker and the mount points of folders bound in from below the host's /tmp:
    # the run's own folders (pytest's tmp) and, when the checkout lives in /tmp (a CI clone),
    # the interpreter and the rsilab source.
    bound = [Path(sys.prefix), Path(rsilab.__file__).resolve().parent]
    mounts = {"pytest-of-root"} | {
        p.relative_to("/tmp").parts[0] for p in bound if p.is_relative_to("/tmp")
    }
    allowed = mounts | {f"marker-{lab.tag}"}
    assert isinstance(out["tmp"], list) and set(out["tmp"]) <= allowed, out["tmp"]
    assert not (set(os.listdir("/tmp")) - allowed) & set(out["tmp"])  # nothing of the host's own


@needs_bwrap
def test_run_is_alone_in_its_pid_namespace_and_drops_root(probed: tuple[Lab, RunResult]) -> None:
    lab, _ = probed
    out = lab.probe()
    assert (
        isinstance(out["pids_seen"], int) and out["pids_seen"] <= 5
    )  # init, launcher's exec, python
    if os.geteuid() == 0 and sandbox.uid_drop_works():
        assert out["uid"] != 0


@needs_bwrap
def test_evaluator_sees_the_validation_split_but_not_training_data_nor_the_worktree(
    probed: tuple[Lab, RunResult],
) -> None:
    lab, result = probed
    evaluator = result.evaluation["probe"]
    assert evaluator["read_given_val"] == "ok"
    for name in (
        "read_train",
        "see_worktree",
        "write_artifact",
        "write_cwd",
        "read_ledger",
        "write_ledger",
    ):
        assert _failed(evaluator[name]), (name, evaluator[name])


@needs_bwrap
def test_a_runs_writes_do_not_reach_the_next_run(lab: Lab) -> None:
    (lab.worktree / "train.py").write_text(
        textwrap.dedent("""\
        import os
        from pathlib import Path
        from rsilab import harness
        carried = Path("state.txt").exists()
        Path("state.txt").write_text("from the previous run")
        Path("train.py").write_text("raise SystemExit('rewritten by the previous run')")
        harness.print_summary({"carried": float(carried)})
        """)
    )
    results = [lab.run(k) for k in range(2)]
    assert [r.summary.get("carried") for r in results] == [0.0, 0.0], [r.reason for r in results]
    assert not (lab.worktree / "state.txt").exists()


@needs_bwrap
@pytest.mark.skipif(
    os.geteuid() == 0 and not sandbox.uid_drop_works(),
    reason="as root, RLIMIT_NPROC only holds through the sandbox's uid drop",
)
def test_fork_bomb_is_contained(
    tmp_path: Path, rsilab_home: Path, listener: tuple[int, list[int]]
) -> None:
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    lab = make_lab(tmp_path, rsilab_home, *listener, train=bomb, max_procs=32)
    t0 = time.monotonic()
    result = lab.run()
    assert result.status in (Status.CRASH, Status.TIMEOUT, Status.OOM), result.reason
    assert "max_procs" in result.reason or result.status is not Status.CRASH
    assert time.monotonic() - t0 < 20
    assert _running_in(lab.worktree) == []


def _running_in(folder: Path) -> list[int]:
    """Host pids of live processes whose working folder is `folder` (what a contained run
    must not leave behind)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/cwd") == str(folder.resolve()):
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _with_marker(marker: str) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


@needs_bwrap
def test_a_detached_process_does_not_outlive_the_run(
    tmp_path: Path, rsilab_home: Path, listener: tuple[int, list[int]]
) -> None:
    marker = f"rsilab-detached-{uuid.uuid4().hex[:8]}"
    daemon = textwrap.dedent(f"""\
        import os, sys, time
        from rsilab import harness
        late = harness.artifact_dir() / "late.txt"
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c",
                         "import time, sys; time.sleep(2); open(sys.argv[1], 'w').write('x'); time.sleep(60)",
                         str(late), "{marker}"])
            os._exit(0)
        time.sleep(0.5)
        harness.print_summary({{"spawned": 1.0}})
        """)
    lab = make_lab(tmp_path, rsilab_home, *listener, train=daemon)
    result = lab.run()
    assert result.summary.get("spawned") == 1.0, result.reason
    assert _with_marker(marker) == []
    time.sleep(2.5)
    assert not (lab.ws.run_dir(1, 0) / "artifact" / "late.txt").exists()


# --- fallbacks (run anywhere) ----------------------------------------------------------


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "forced off by the test")
    monkeypatch.setattr(sandbox, "uid_drop_works", lambda: False)


def test_without_bwrap_auto_falls_back_and_records_it(
    no_bwrap: None, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "netns_prefix", lambda: None)
    result = lab.run()
    # Nothing stops the probe's writes now; the runner still catches the frozen file it changed.
    assert (
        result.status is Status.INVALID
        and result.reason == "invalid: the run changed the frozen file evaluate.py"
    )
    assert result.isolation == "none"
    assert lab.probe()["connect_host"] == "ok" and lab.hits == [
        1
    ]  # no sandbox: the network is open
    assert sandbox.describe("none") == "none (runs are not isolated: forced off by the test)"


def test_require_refuses_before_running_anything(no_bwrap: None, lab: Lab) -> None:
    with pytest.raises(RsilabError) as err:
        lab.run(isolation="require")
    assert str(err.value) == (
        "--require-sandbox: bubblewrap is not usable here: forced off by the test; "
        "install bubblewrap or drop --require-sandbox"
    )
    assert not lab.ws.run_dir(1, 0).exists()


def test_cli_require_sandbox_is_a_one_line_error(no_bwrap: None, tmp_path: Path) -> None:
    for args in (
        ["train", "--task", "toy", "--require-sandbox"],
        ["run", str(tmp_path / "ws"), "--task", "toy", "--require-sandbox"],
    ):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 2, out.output
        assert (
            "--require-sandbox: bubblewrap is not usable here: forced off by the test" in out.output
        )
    assert not (tmp_path / "ws").exists()  # refused before the workspace was created


@pytest.mark.skipif(sandbox.netns_prefix() is None, reason="unshare --net does not work here")
def test_netns_fallback_still_blocks_the_network(no_bwrap: None, lab: Lab) -> None:
    result = lab.run()
    assert result.status is Status.INVALID, result.reason  # files are not isolated (see above)
    assert result.isolation == "netns"
    assert _failed(lab.probe()["connect_host"]) and lab.hits == []


def test_wrap_mount_order_puts_children_on_top_of_hidden_parents(tmp_path: Path) -> None:
    hidden, inside = tmp_path / "state", tmp_path / "state" / "worktrees" / "w"
    inside.mkdir(parents=True)
    args = sandbox._mounts([], [inside], [hidden])
    assert args.index("--tmpfs") < args.index("--bind")
    assert args[-2:] == ["--remount-ro", str(hidden.resolve())]


def test_unknown_isolation_is_a_clear_error() -> None:
    with pytest.raises(
        RsilabError, match="sandbox 'docker': use one of auto, require, bwrap, netns, none"
    ):
        sandbox.resolve("docker")


@needs_bwrap
def test_sandboxed_python_can_import_the_harness(tmp_path: Path) -> None:
    cmd, level = sandbox.wrap(
        [sys.executable, "-c", "import rsilab.harness, numpy; print('ok')"],
        workdir=tmp_path,
        readonly=[],
        writable=[tmp_path],
        hidden=[],
        max_procs=64,
    )
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        sandbox.reclaim([tmp_path])
    assert level == "bwrap" and out.stdout.strip() == "ok", out.stderr


@needs_bwrap
def test_private_tmp_stays_writable_when_the_supervisor_runs_a_script_from_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script in /tmp puts /tmp on sys.path; binding it read-only over the sandbox's
    private /tmp made torch's import fail there ("No usable temporary directory")."""
    monkeypatch.setattr(sys, "path", ["/tmp", *sys.path])
    # A hidden path below /tmp (the tests' RSILAB_HOME) would keep /tmp out by another rule.
    monkeypatch.setenv("RSILAB_HOME", str(Path.home() / ".cache" / "rsilab"))
    probe = "import tempfile; print(tempfile.gettempdir())"
    cmd, _ = sandbox.wrap(
        [sys.executable, "-c", probe],
        workdir=tmp_path,
        readonly=[],
        writable=[tmp_path],
        hidden=[],
        max_procs=64,
    )
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        sandbox.reclaim([tmp_path])
    assert out.returncode == 0 and out.stdout.strip() == "/tmp", out.stderr[-500:]


def test_logs_planted_as_links_are_never_followed(lab: Lab, tmp_path: Path) -> None:
    """A run may write its run folder: a link in place of a log would make the runner read
    (into the ledger and the next prompt) or append to a file of the supervisor's user."""
    secret, victim = tmp_path / "secret.txt", tmp_path / "victim.txt"
    secret.write_text("the supervisor's secret\n")
    victim.write_text("untouched\n")
    plant = textwrap.dedent("""\
        import os
        from rsilab import harness
        run_dir = harness.artifact_dir().parent
        os.symlink({target!r}, run_dir / {name!r})
        harness.print_summary({{"planted": 1.0}})
        """)
    (lab.worktree / "train.py").write_text(plant.format(target=str(victim), name="eval.log"))
    appended = lab.run(0)
    assert appended.status is Status.OK, (
        appended.reason
    )  # the link was removed before the evaluator
    assert victim.read_text() == "untouched\n"
    os.remove(
        lab.worktree / "train.py"
    )  # (restored from the commit by the run; written again below)
    (lab.worktree / "train.py").write_text(
        plant.format(target=str(secret), name="train.log").replace(
            "os.symlink", "os.remove(run_dir / 'train.log'); os.symlink"
        )
    )
    leaked = lab.run(1)
    assert leaked.status is Status.INVALID and "replaced or removed its log" in leaked.reason
    assert "secret" not in leaked.log_tail and "secret" not in json.dumps(leaked.summary)

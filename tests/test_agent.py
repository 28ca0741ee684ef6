"""Tests for the "agent" proposer: real subprocesses, fake `claude` / `codex` executables.

The fakes parse their argv like the real CLIs, read the prompt file named in the
instruction, edit `train.py` in their working directory, write the description file and
print the real output shape. A real workspace of the bundled toy task gives the worktree,
so the supervisor's own check (`Workspace.check`) judges what the fakes did.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from rsilab.config import resolve_task_dir
from rsilab.errors import ConfigError
from rsilab.proposers.agent import AgentProposer, build_prompt, parse_codex
from rsilab.proposers.base import Context, HistoryItem, create
from rsilab.results import Metric
from rsilab.workspace import Workspace, init_workspace

# Shared by the fakes: find the two paths, edit train.py, misbehave on request.
COMMON = r"""
import json, os, re, subprocess, sys, time
from pathlib import Path

RECORD = Path(os.environ["FAKE_RECORD"])
MODE = os.environ.get("FAKE_MODE", "ok")


def paths(instruction):
    found = re.findall(r"(/\S+?\.(?:md|txt))\b", instruction)
    prompt = next(p for p in found if p.endswith(".md"))
    desc = next(p for p in found if p.endswith(".txt"))
    return Path(prompt), Path(desc)


def work(prompt, desc, extra):
    record = {"argv": sys.argv, "cwd": os.getcwd(), "prompt": prompt.read_text(),
              "env": sorted(os.environ), **extra}
    if MODE == "hang":
        child = subprocess.Popen(["sleep", "60"])
        record["pids"] = [os.getpid(), child.pid]
        RECORD.write_text(json.dumps(record))
        time.sleep(60)
    train = Path("train.py")
    train.write_text(re.sub(r"(?m)^LR = 0\.01 ", "LR = 0.02 ", train.read_text()))
    if MODE == "malicious":
        Path("evaluate.py").write_text(Path("evaluate.py").read_text() + "\n# always wins\n")
        subprocess.run(["sh", "-c", "echo trained > " + str(RECORD) + ".trained"])
    RECORD.write_text(json.dumps(record))
    if MODE == "fail":
        print("fatal: not logged in", file=sys.stderr)
        sys.exit(3)
    if MODE != "nodesc":
        desc.write_text("double the learning rate to 0.02\nmore detail\n")
"""

CLAUDE = (
    COMMON
    + r"""
import argparse
ap = argparse.ArgumentParser(prog="claude")
ap.add_argument("-p", "--print", action="store_true")
ap.add_argument("prompt")
ap.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text")
ap.add_argument("--permission-mode", default="default")
ap.add_argument("--allowedTools", nargs="+", default=[])
ap.add_argument("--disallowedTools", nargs="+", default=[])
ap.add_argument("--add-dir", nargs="+", default=[])
ap.add_argument("--model")
a = ap.parse_args()
assert a.print and a.output_format == "json", "not headless json"
prompt, desc = paths(a.prompt)
allowed = [t for s in a.allowedTools for t in s.split(",")]
denied = [t for s in a.disallowedTools for t in s.split(",")]
work(prompt, desc, {"allowed": allowed, "denied": denied, "add_dir": a.add_dir, "model": a.model,
                    "permission_mode": a.permission_mode})
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "result": "Raised LR.\nDone.", "session_id": "s1", "num_turns": 3,
                  "total_cost_usd": 0.0421,
                  "usage": {"input_tokens": 12, "cache_creation_input_tokens": 1000,
                            "cache_read_input_tokens": 2000, "output_tokens": 345}}))
"""
)

CODEX = (
    COMMON
    + r"""
import argparse
ap = argparse.ArgumentParser(prog="codex")
sub = ap.add_subparsers(dest="cmd", required=True)
ex = sub.add_parser("exec")
ex.add_argument("--json", action="store_true")
ex.add_argument("--sandbox", choices=["read-only", "workspace-write", "danger-full-access"])
ex.add_argument("--skip-git-repo-check", action="store_true")
ex.add_argument("-m", "--model")
ex.add_argument("prompt")
a = ap.parse_args()
stdin = os.path.realpath("/proc/self/fd/0") if os.path.exists("/proc/self/fd/0") else ""
piped = sys.stdin.read()  # the real codex appends a piped stdin to the prompt: must be EOF
prompt, desc = paths(a.prompt)
work(prompt, desc, {"stdin": stdin, "stdin_data": piped, "sandbox": a.sandbox, "model": a.model})
for ev in [{"type": "thread.started", "thread_id": "t1"}, {"type": "turn.started"},
           {"type": "item.completed", "item": {"id": "i0", "type": "command_execution",
                                               "command": "cat train.py", "status": "completed"}},
           {"type": "item.completed", "item": {"id": "i1", "type": "agent_message",
                                               "text": "Doubled LR in train.py"}},
           {"type": "turn.completed", "usage": {"input_tokens": 5000,
                                                "cached_input_tokens": 4000, "output_tokens": 700}}]:
    print(json.dumps(ev))
"""
)


def write_exe(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`claude` and `codex` fakes first on PATH; the file where they record what they saw."""
    bin_dir = tmp_path / "bin"
    write_exe(bin_dir, "claude", CLAUDE)
    write_exe(bin_dir, "codex", CODEX)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    return record


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return init_workspace(tmp_path / "ws", resolve_task_dir("toy"), "t")


HISTORY = [
    HistoryItem(1, "baseline", {}, "keep", 0.50, "baseline"),
    HistoryItem(2, "lower L2 to 0.01", {}, "keep", 0.40, "tuner"),
    HistoryItem(3, "huge LR", {}, "crash", None, "llm", reason="crash: loss is nan"),
    HistoryItem(4, "momentum 0.9", {}, "discard", 0.45, "agent", reason="no better than noise"),
]


def context(ws: Workspace, name: str = "x", **kw: object) -> Context:
    worktree = ws.create_worktree(name, ws.incumbent_commit())
    task = ws.load_task()
    files = ws.editable_files(task, ws.incumbent_commit())
    args: dict[str, object] = {
        "metric": Metric("val_loss", "min"),
        "incumbent_metric": 0.4,
        "history": HISTORY,
        "in_flight": [],
        "program": (ws.root / "program.md").read_text(),
        "editable": tuple(task.editable),
        "workdir": worktree,
        **kw,
    }
    return Context(files, **args)  # type: ignore[arg-type]


def test_claude_edits_the_worktree_in_place(fakes: Path, ws: Workspace) -> None:
    ctx = context(ws)
    proposal = AgentProposer(cli="claude", model="sonnet", timeout=60).propose(ctx)
    assert proposal is not None and ctx.workdir is not None
    assert proposal.description == "double the learning rate to 0.02"
    assert proposal.files == {} and proposal.proposer == "agent"
    assert proposal.meta["in_place"] is True and proposal.meta["cli"] == "claude"
    assert proposal.meta["usage"] == {"tokens_in": 3012.0, "tokens_out": 345.0, "cost_usd": 0.0421}
    assert "Raised LR." in proposal.meta["log"] and "--- prompt ---" in proposal.meta["log"]
    assert "error" not in proposal.meta and "timed_out" not in proposal.meta
    assert "LR = 0.02 " in (ctx.workdir / "train.py").read_text()
    # The supervisor's check passes: only train.py changed, nothing else left in the worktree.
    assert ws.check(ctx.workdir, ws.load_task()) is None

    seen = json.loads(fakes.read_text())
    assert Path(seen["cwd"]).resolve() == ctx.workdir.resolve()
    assert "Lower `val_loss`" in seen["prompt"]  # the program
    assert "#2 keep 0.4: lower L2 to 0.01" in seen["prompt"]  # best results
    assert "#3 crash -: huge LR (crash: loss is nan)" in seen["prompt"]  # latest, with reason
    assert "Incumbent: 0.4" in seen["prompt"] and "lower is better" in seen["prompt"]
    assert "train.py" in seen["prompt"] and "Do not run training" in seen["prompt"]
    assert seen["allowed"] == ["Read", "Edit", "Write", "Glob", "Grep"]
    assert "Bash" not in seen["allowed"] and "Bash" in seen["denied"]
    assert seen["permission_mode"] == "acceptEdits" and seen["model"] == "sonnet"
    assert not any(k.startswith("RSILAB_") for k in seen["env"])  # no data, ledger or run paths
    assert "HOME" in seen["env"] and "PATH" in seen["env"]
    # The prompt folder was outside the worktree, and it is gone afterwards.
    (add_dir,) = seen["add_dir"]
    assert not Path(add_dir).resolve().is_relative_to(ctx.workdir.resolve())
    assert not Path(add_dir).exists()


def test_codex_gets_dev_null_stdin_and_a_workspace_write_sandbox(
    fakes: Path, ws: Workspace
) -> None:
    ctx = context(ws)
    proposal = create("agent", cli="codex", model="gpt-5").propose(ctx)
    assert proposal is not None and ctx.workdir is not None
    assert proposal.description == "double the learning rate to 0.02"
    assert proposal.meta["usage"] == {"tokens_in": 5000.0, "tokens_out": 700.0}
    assert "LR = 0.02 " in (ctx.workdir / "train.py").read_text()
    seen = json.loads(fakes.read_text())
    argv = seen["argv"][1:]
    assert argv[:5] == ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    assert argv[5:7] == ["-m", "gpt-5"]
    assert seen["stdin_data"] == ""
    if seen["stdin"]:
        assert seen["stdin"] == os.devnull


def test_description_falls_back_to_the_final_message(
    fakes: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "nodesc")
    claude = AgentProposer().propose(context(ws, "a"))
    codex = AgentProposer(cli="codex").propose(context(ws, "b"))
    assert claude is not None and claude.description == "Raised LR."
    assert codex is not None and codex.description == "Doubled LR in train.py"


def test_malicious_edits_are_left_for_the_supervisor_to_flag(
    fakes: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "malicious")
    ctx = context(ws)
    proposal = AgentProposer().propose(ctx)
    assert proposal is not None and ctx.workdir is not None
    # The proposer does not judge: the frozen edit is there, and workspace.check flags it.
    assert "always wins" in (ctx.workdir / "evaluate.py").read_text()
    reason = ws.check(ctx.workdir, ws.load_task())
    assert reason is not None and "evaluate.py" in reason
    assert Path(
        str(fakes) + ".trained"
    ).exists()  # a fake can run commands; the real claude has no Bash


def test_a_failing_cli_gives_a_proposal_with_the_error(
    fakes: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "fail")
    proposal = AgentProposer().propose(context(ws))
    assert proposal is not None
    assert proposal.meta["error"] == "claude exited with code 3: fatal: not logged in"
    assert "fatal: not logged in" in proposal.meta["log"]
    assert proposal.description == "agent change"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_a_hanging_cli_is_killed_with_its_whole_group(
    fakes: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    ctx = context(ws)
    start = time.monotonic()
    proposal = AgentProposer(timeout=1.0).propose(ctx)
    assert time.monotonic() - start < 15
    assert proposal is not None and proposal.meta["timed_out"] is True
    assert proposal.description == "agent timed out" and proposal.files == {}
    assert proposal.meta["error"] == "claude timed out after 1 s"
    pids = json.loads(fakes.read_text())["pids"]
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
    assert ctx.workdir is not None and ws.check(ctx.workdir, ws.load_task()) is None


def test_should_stop_kills_the_cli_and_proposes_nothing(
    fakes: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    calls: list[float] = []

    def stop() -> bool:
        calls.append(time.monotonic())
        return fakes.exists()  # once the fake has started its child

    start = time.monotonic()
    assert AgentProposer(timeout=60).propose(context(ws, should_stop=stop)) is None
    assert time.monotonic() - start < 15 and calls
    assert not any(_alive(pid) for pid in json.loads(fakes.read_text())["pids"])


def test_a_missing_cli_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="claude not found on PATH; install Claude Code"):
        AgentProposer()
    with pytest.raises(ConfigError, match="codex not found on PATH"):
        create("agent", cli="codex")
    with pytest.raises(ConfigError, match="needs agent.command"):
        AgentProposer(cli="command")
    with pytest.raises(ConfigError, match="must be one of"):
        AgentProposer(cli="aider")


COMMAND = r"""
import argparse, json, os, re
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--prompt"); ap.add_argument("--desc"); ap.add_argument("--dir")
a = ap.parse_args()
assert "Lower `val_loss`" in Path(a.prompt).read_text()
train = Path(a.dir) / "train.py"
train.write_text(re.sub(r"(?m)^STEPS = 300 ", "STEPS = 600 ", train.read_text()))
Path(a.desc).write_text("train twice as long\n")
Path(os.environ["FAKE_RECORD"]).write_text(json.dumps({"cwd": os.getcwd(), "argv": os.sys.argv}))
print("all done")
"""


def test_command_form_substitutes_the_paths(fakes: Path, ws: Workspace, tmp_path: Path) -> None:
    script = write_exe(tmp_path / "other", "my-agent", COMMAND)
    proposer = AgentProposer(
        cli="command",
        command=[
            str(script),
            "--prompt",
            "{prompt_file}",
            "--desc={description_file}",
            "--dir",
            "{workdir}",
        ],
    )
    ctx = context(ws)
    proposal = proposer.propose(ctx)
    assert proposal is not None and ctx.workdir is not None
    assert proposal.description == "train twice as long"
    assert proposal.meta["usage"] == {} and proposal.meta["cli"] == "command"
    assert "STEPS = 600 " in (ctx.workdir / "train.py").read_text()
    seen = json.loads(fakes.read_text())
    assert seen["argv"][-1] == str(ctx.workdir) and "{" not in " ".join(seen["argv"])
    assert Path(seen["cwd"]).resolve() == ctx.workdir.resolve()


def test_without_a_worktree_the_edits_come_back_as_files(fakes: Path, ws: Workspace) -> None:
    ctx = context(ws, workdir=None)
    proposal = AgentProposer(cli="codex").propose(ctx)
    assert proposal is not None and proposal.meta["in_place"] is False
    assert list(proposal.files) == ["train.py"] and "LR = 0.02 " in proposal.files["train.py"]


def test_prompt_orders_best_results_by_the_metric_direction() -> None:
    ctx = Context({"train.py": ""}, Metric("acc", "max"), None, HISTORY, [], editable=("train.py",))
    text = build_prompt(ctx, Path("/tmp/d.txt"))
    best = text.split("Best kept results, best first:\n")[1].splitlines()
    assert best[0].startswith("- #1 keep 0.5") and best[1].startswith("- #2 keep 0.4")
    assert "Incumbent: not measured yet" in text and "higher is better" in text
    empty = build_prompt(Context({}, Metric(), None, [], []), Path("/tmp/d.txt"))
    assert "No experiments yet." in empty and "Limits" not in empty
    limited = build_prompt(
        Context({}, Metric(), None, [], [], limits=["GPU memory: 40 GB peak"]), Path("/tmp/d.txt")
    )
    assert "## Limits of one run\n\n- GPU memory: 40 GB peak\n" in limited


def test_parse_codex_tolerates_noise_and_reports_failures() -> None:
    out = "\n".join(
        [
            "not json",
            json.dumps({"type": "turn.failed", "error": {"message": "quota"}}),
            json.dumps([1, 2]),
        ]
    )
    assert parse_codex(out) == ("", {}, "codex: quota")

"""The "agent" proposer: a coding-agent CLI as the researcher. Owns: one CLI run per proposal.

Each `propose` starts one fresh, non-interactive run of a coding-agent CLI (so its context
never grows) inside `ctx.workdir`, the new experiment's worktree, and lets it edit the files
there. The supervisor then checks and commits whatever changed, exactly as for returned
files (only editable files, frozen hashes intact): this module never judges the edits.

- `claude`: `claude -p INSTRUCTION --output-format json --permission-mode acceptEdits
  --allowedTools Read,Edit,Write,Glob,Grep --disallowedTools Bash,... --add-dir TMP [--model M]`.
  `--allowedTools` only pre-approves tools, so Bash (which could start training) and the web
  tools are also removed with `--disallowedTools`; `--add-dir` lets it read the prompt file
  and write the description file, both in a temporary folder outside the worktree.
- `codex`: `codex exec --json --sandbox workspace-write --skip-git-repo-check [-m M]
  INSTRUCTION`, stdin from /dev/null (codex reads a piped stdin as extra input). Its sandbox
  still lets it run commands in the folder; the prompt forbids training.
- `command`: any other CLI: an argv with `{prompt_file}`, `{description_file}` and `{workdir}`
  substituted; the last line of its stdout stands in for a final message.

The description is the first line of the description file, else the first line of the CLI's
final message, else "agent change".

The prompt (program, metric, incumbent, compact history, rules) is a file in a temporary
folder, never in the worktree (a file there would be an unexpected change). The CLI gets the
environment minus every `RSILAB_*` variable (it keeps HOME and PATH, so it finds its login;
it never gets the data folder, the ledger or a run's paths).

Failures are values: a CLI that exits non-zero gives a Proposal with `meta["error"]`; one that
runs past `timeout` is killed with its whole session and gives a Proposal with
`meta["timed_out"] = True` (description "agent timed out" unless it wrote one), so the
supervisor records "changes nothing" unless it had already edited files, which are then
judged like any others. When `ctx.should_stop()` turns true the CLI is killed and `propose`
returns None. A CLI that is not installed is a ConfigError at construction.

Not covered: whether the edits are allowed (workspace.check) or good (the judge).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsilab.errors import ConfigError
from rsilab.fsio import read_regular
from rsilab.proposers.base import Context, HistoryItem, register
from rsilab.results import Proposal
from rsilab.run.process import GRACE_SECONDS, die_with_parent, kill_group, kill_session

if TYPE_CHECKING:
    from rsilab.config import TaskSpec

CLIS = ("claude", "codex", "command")
CLAUDE_TOOLS = "Read,Edit,Write,Glob,Grep"
CLAUDE_DENIED = "Bash,WebFetch,WebSearch,Task,Agent,NotebookEdit"
HISTORY_BEST = 5  # best results shown in the prompt
HISTORY_LAST = 15  # latest experiments shown in the prompt
LOG_CHARS = 200_000  # per stream kept in the proposal log (the tail)
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class CliRun:
    """How one CLI invocation ended (returncode None: killed by us)."""

    returncode: int | None
    timed_out: bool
    stopped: bool
    stdout: str
    stderr: str
    seconds: float


@register("agent")
class AgentProposer:
    """A coding-agent CLI that edits the experiment's worktree (see the module docstring)."""

    name = "agent"

    def __init__(
        self,
        cli: str = "claude",
        command: Sequence[str] = (),
        model: str = "",
        timeout: float = 900.0,
    ) -> None:
        if cli not in CLIS:
            raise ConfigError(f"agent.cli {cli!r}: must be one of {', '.join(CLIS)}")
        if cli == "command" and not command:
            raise ConfigError(
                'agent.cli = "command" needs agent.command (an argv with {prompt_file})'
            )
        if cli != "command" and command:
            raise ConfigError(f'agent.command is set but agent.cli is {cli!r}; set cli = "command"')
        if timeout <= 0:
            raise ConfigError(f"agent.timeout must be > 0 seconds, got {timeout}")
        exe = command[0] if cli == "command" else cli
        found = shutil.which(exe)
        if found is None:
            hint = {"claude": "install Claude Code", "codex": "install the Codex CLI"}.get(
                cli, "fix agent.command"
            )
            raise ConfigError(f"{exe} not found on PATH; {hint} or use --proposer llm/tuner")
        self.cli, self.model, self.timeout = cli, model, float(timeout)
        self.command = [found, *command[1:]] if cli == "command" else [found]

    @classmethod
    def from_task(cls, task: TaskSpec, **options: Any) -> AgentProposer:
        """The agent of `task`'s `[agent]` section; `options` override its keys."""
        a = task.agent
        return cls(
            **{
                "cli": a.cli,
                "command": a.command,
                "model": a.model,
                "timeout": a.timeout,
                **options,
            }
        )

    def argv(self, prompt_file: Path, description_file: Path, workdir: Path) -> list[str]:
        """The command line for one run."""
        if self.cli == "command":
            subs = {
                "{prompt_file}": str(prompt_file),
                "{description_file}": str(description_file),
                "{workdir}": str(workdir),
            }
            out = []
            for arg in self.command:
                for key, value in subs.items():
                    arg = arg.replace(key, value)
                out.append(arg)
            return out
        instruction = (
            f"Read {prompt_file} and follow it: it describes one ML research experiment "
            f"on the code in the current folder. Edit only the files it allows, then write "
            f"a one-line description of your change to {description_file}."
        )
        if self.cli == "claude":
            argv = [
                *self.command,
                "-p",
                instruction,
                "--output-format",
                "json",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                CLAUDE_TOOLS,
                "--disallowedTools",
                CLAUDE_DENIED,
                "--add-dir",
                str(prompt_file.parent),
            ]
            return argv + (["--model", self.model] if self.model else [])
        argv = [
            *self.command,
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "--skip-git-repo-check",
        ]
        return argv + (["-m", self.model] if self.model else []) + [instruction]

    def propose(self, ctx: Context) -> Proposal | None:
        with tempfile.TemporaryDirectory(prefix="rsilab-agent-") as tmp:
            folder = Path(tmp)
            workdir = ctx.workdir
            if workdir is None:  # no worktree (a standalone use): a copy of the editable files
                workdir = folder / "work"
                for rel, content in ctx.files.items():
                    (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
                    (workdir / rel).write_text(content)
            prompt_file, description_file = folder / "prompt.md", folder / "description.txt"
            prompt = build_prompt(ctx, description_file)
            prompt_file.write_text(prompt)
            argv = self.argv(prompt_file, description_file, workdir)
            ctx.notify(f"waiting for {self.cli} (up to {self.timeout:.0f} s)")
            run = run_cli(argv, workdir, folder, self.timeout, ctx.should_stop)
            if run.stopped:
                return None
            # The agent wrote this file: never read through a link it may have left there.
            described = read_regular(description_file)
            written = _first_line(described.decode(errors="replace")) if described else ""
            files = {} if ctx.workdir is not None else _changed(workdir, ctx.files)
        final, usage, error = (
            parse_claude(run.stdout)
            if self.cli == "claude"
            else parse_codex(run.stdout)
            if self.cli == "codex"
            else (_last_line(run.stdout), {}, "")
        )
        meta: dict[str, Any] = {
            "in_place": ctx.workdir is not None,
            "cli": self.cli,
            "usage": usage,
            "seconds": round(run.seconds, 1),
            "log": _log(argv, prompt, run),
        }
        if run.timed_out:
            meta["timed_out"] = True
            error = f"{self.cli} timed out after {self.timeout:.0f} s"
        elif run.returncode != 0:
            last = error or _last_line(run.stderr) or _last_line(run.stdout)
            error = f"{self.cli} exited with code {run.returncode}" + (
                f": {last[:200]}" if last else ""
            )
        if error:
            meta["error"] = error
        fallback = "agent timed out" if run.timed_out else _first_line(final) or "agent change"
        return Proposal(written or fallback, files, self.name, meta=meta)

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        """Nothing to learn: each run is fresh and reads the history from the context."""


def build_prompt(ctx: Context, description_file: Path) -> str:
    """The prompt file: program, goal, compact history and the rules."""
    metric = ctx.metric
    better = "lower" if metric.direction == "min" else "higher"
    inc = "not measured yet" if ctx.incumbent_metric is None else f"{ctx.incumbent_metric:.6g}"
    editable = ", ".join(ctx.editable) or ", ".join(sorted(ctx.files)) or "(none)"
    parts = [
        "# One rsilab experiment: you are the researcher",
        "",
        "## Research program",
        "",
        ctx.program.strip() or "(none given)",
        "",
        "## Goal",
        "",
        f"Metric: {metric.name} ({better} is better). Incumbent: {inc}.",
        "The current folder is a fresh checkout of the incumbent. Make ONE focused change that "
        "you expect to improve the metric; it is kept only if it beats the incumbent beyond "
        "the run-to-run noise.",
        "",
        *(
            ["## Limits of one run", "", *(f"- {line}" for line in ctx.limits), ""]
            if ctx.limits
            else []
        ),
        "## History",
        "",
        *_history(ctx.history, ctx),
        "",
        "## Rules",
        "",
        f"- Edit only files matching: {editable}. Any other change makes the experiment invalid.",
        "- Do not run training, evaluation or any long command: the supervisor trains and "
        "scores your change under its own budget after you finish.",
        "- Do not use git, and do not read or write anything outside the current folder "
        "except this file and the description file below.",
        f"- Finish by writing ONE line describing your change to: {description_file}",
        "",
    ]
    return "\n".join(parts)


def _history(history: Sequence[HistoryItem], ctx: Context) -> list[str]:
    if not history:
        return ["No experiments yet."]

    def line(h: HistoryItem) -> str:
        value = "-" if h.metric is None else f"{h.metric:.6g}"
        reason = f" ({h.reason[:160]})" if h.reason else ""
        return f"- #{h.experiment_id} {h.verdict} {value}: {h.description[:160]}{reason}"

    kept = [(h.metric, h) for h in history if h.verdict == "keep" and h.metric is not None]
    best = [h for _, h in sorted(kept, key=lambda mh: ctx.metric.gain(mh[0], 0.0), reverse=True)]
    out = ["Best kept results, best first:", *map(line, best[:HISTORY_BEST])] if best else []
    last = history[-HISTORY_LAST:]
    out += [f"Last {len(last)} of {len(history)} experiments (oldest first):", *map(line, last)]
    return out


def run_cli(
    argv: list[str],
    cwd: Path,
    folder: Path,
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> CliRun:
    """Run `argv` in its own session, stdin from /dev/null, output to files in `folder`;
    past `timeout` or once `should_stop()` is true, kill the whole session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSILAB_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the worktree if it runs python
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    timed_out = stopped = False
    try:
        while proc.poll() is None:
            timed_out = time.monotonic() - start > timeout
            stopped = not timed_out and bool(should_stop())
            if timed_out or stopped:
                kill_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(GRACE_SECONDS)
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(POLL_SECONDS)
    except BaseException:  # Ctrl-C in the supervisor: the CLI must not outlive it
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:  # leftovers of the session (a child that outlived the CLI), waited for
        kill_session(proc.pid, time.monotonic() + GRACE_SECONDS)
    rc = None if (timed_out or stopped) else proc.returncode
    return CliRun(
        rc,
        timed_out,
        stopped,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        time.monotonic() - start,
    )


def parse_claude(stdout: str) -> tuple[str, dict[str, float], str]:
    """(final message, usage, error) from `claude -p --output-format json`'s result object."""
    data: Any = None
    for chunk in [stdout, *reversed(stdout.splitlines())]:
        with contextlib.suppress(ValueError):
            data = json.loads(chunk)
            if isinstance(data, dict) and data.get("type") == "result":
                break
        data = None
    if data is None:
        return "", {}, ""
    u = data.get("usage") or {}
    # Cached prompt tokens are input too (Claude Code caches most of its context).
    tokens_in = sum(
        _num(u.get(k))
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    usage = {
        "tokens_in": tokens_in,
        "tokens_out": _num(u.get("output_tokens")),
        "cost_usd": _num(data.get("total_cost_usd")),
    }
    result = str(data.get("result") or "")
    error = (
        f"claude: {data.get('subtype', 'error')}: {_first_line(result)}"
        if data.get("is_error")
        else ""
    )
    return result, usage, error


def parse_codex(stdout: str) -> tuple[str, dict[str, float], str]:
    """(final message, usage, error) from `codex exec --json` events, best effort."""
    final, error, tokens_in, tokens_out = "", "", 0.0, 0.0
    for raw in stdout.splitlines():
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        kind, item = ev.get("type"), ev.get("item") or {}
        if kind == "turn.completed":
            u = ev.get("usage") or {}
            tokens_in += _num(u.get("input_tokens"))  # cached_input_tokens is a part of these
            tokens_out += _num(u.get("output_tokens"))
        elif (
            kind == "item.completed"
            and isinstance(item, dict)
            and item.get("type") in ("agent_message", "assistant_message")
        ):
            final = str(item.get("text") or final)
        elif kind in ("turn.failed", "error"):
            msg = ev.get("message") or (ev.get("error") or {}).get("message", "")
            error = f"codex: {_first_line(str(msg)) or kind}"
    usage = {"tokens_in": tokens_in, "tokens_out": tokens_out} if tokens_in or tokens_out else {}
    return final, usage, error


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _first_line(text: str) -> str:
    return next((s.strip() for s in text.splitlines() if s.strip()), "")[:200]


def _last_line(text: str) -> str:
    return next((s.strip() for s in reversed(text.splitlines()) if s.strip()), "")[:200]


def _changed(workdir: Path, files: Mapping[str, str]) -> dict[str, str]:
    """Editable files whose content differs in `workdir` (the no-worktree fallback). A file
    the agent turned into a link or special file is read as unchanged, never followed."""
    out = {}
    for rel, old in files.items():
        raw = read_regular(workdir / rel, base=workdir)
        new = raw.decode(errors="replace") if raw is not None else old
        if new != old:
            out[rel] = new
    return out


def _log(argv: list[str], prompt: str, run: CliRun) -> str:
    """The proposal log: the command, the prompt, how it ended, its stdout and stderr (tails)."""
    end = "timed out" if run.timed_out else f"exit code {run.returncode}"
    return "\n".join(
        [
            f"$ {' '.join(argv)}",
            "--- prompt ---",
            prompt.rstrip(),
            f"--- stdout ({end} after {run.seconds:.1f} s) ---",
            run.stdout[-LOG_CHARS:].rstrip(),
            "--- stderr ---",
            run.stderr[-LOG_CHARS:].rstrip(),
            "",
        ]
    )

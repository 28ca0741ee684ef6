"""`rsilab doctor`. Owns: telling, in plain words, what this machine and configuration can do.

Checks the interpreter, torch and its device, git, the sandbox tool, the prepared data,
the LLM configuration (one tiny call, max 1 output token, when one is configured; then
the model's window and which structured answer format its server takes) and
the coding-agent CLIs on PATH. Never prints a key: only whether its variable is set.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from rsilab.config import TaskSpec


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else None


def checks(
    task: TaskSpec, env: Mapping[str, str] = os.environ, *, ping: bool = True
) -> list[Check]:
    """Every check, in the order a person reads them."""
    from rsilab import __version__

    out = [Check("rsilab", True, f"{__version__} on Python {platform.python_version()}")]
    try:
        import torch

        if torch.cuda.is_available():
            dev = f"CUDA: {torch.cuda.get_device_name(0)} (preset gpu)"
        else:
            dev = f"CPU, {os.cpu_count()} cores (preset cpu; no GPU found)"
        out.append(Check("torch", True, f"{torch.__version__}, {dev}"))
    except ImportError as e:
        out.append(Check("torch", False, f"not importable: {e}"))
    git = _version(["git", "--version"])
    out.append(Check("git", git is not None, git or "not found: install git"))
    from rsilab.run import sandbox

    level = sandbox.resolve()
    out.append(Check("sandbox", level == "bwrap", sandbox.describe(level)))
    if task.data != "none":
        from rsilab.data import load_prepared
        from rsilab.errors import RsilabError

        try:
            d = load_prepared(task.data)
            out.append(Check("data", True, f"{d.dataset_id} prepared and verified in {d.root}"))
        except RsilabError as e:
            out.append(Check("data", False, str(e)))
    out.append(_llm_check(task, env, ping=ping))
    for cli in ("claude", "codex"):
        v = _version([cli, "--version"]) if shutil.which(cli) else None
        out.append(Check(f"agent {cli}", v is not None, v or f"{cli} not on PATH"))
    return out


def _llm_check(task: TaskSpec, env: Mapping[str, str], *, ping: bool) -> Check:
    from rsilab.errors import RsilabError
    from rsilab.proposers.llmclient import configured, from_spec

    if not configured(env) and not task.llm.base_url and not task.llm.model:
        return Check(
            "llm",
            False,
            "not configured: set OPENAI_BASE_URL (any compatible server) or "
            "OPENAI_API_KEY / ANTHROPIC_API_KEY; the tuner works without",
        )
    try:
        client = from_spec(task.llm, env, max_attempts=1, max_tokens=1)
    except RsilabError as e:
        return Check("llm", False, str(e))
    where = f"{task.llm.api} API at {client.base_url}, model {client.model}"
    if not ping:
        return Check("llm", True, f"{where} (not contacted)")
    try:
        reply = client.complete("Reply with one word.", [{"role": "user", "content": "ping"}])
    except RsilabError as e:
        return Check("llm", False, f"{where}: {e}")
    finally:
        client.close()
    detail = (
        f"{where}: answered in {reply.seconds:.1f} s ({reply.tokens_in}+{reply.tokens_out} tokens)"
    )
    return Check("llm", True, detail + "; " + _llm_abilities(task, env))


def _llm_abilities(task: TaskSpec, env: Mapping[str, str]) -> str:
    """The model's window and the structured answer format its server takes (a few tiny
    requests), as the llm proposer finds them."""
    from rsilab.errors import RsilabError
    from rsilab.proposers.llm import LLMProposer
    from rsilab.proposers.llmclient import from_spec

    proposer = LLMProposer(task.llm, env=env)
    with from_spec(proposer.spec, env, max_attempts=1) as client:
        window, source = proposer.window(client)
        shown = "assumed: set llm.window_tokens" if source == "assumed" else f"from {source}"
        parts = [f"window {window} tokens ({shown})"]
        try:
            style = proposer.probe_structured(client)
            parts.append(f"structured answers: {style or 'refused (free text)'}")
        except RsilabError as e:
            parts.append(f"structured answers not checked: {e}")
        if proposer.system_in_user(client):
            parts.append("the system prompt goes in the first user turn")
    return "; ".join(parts)

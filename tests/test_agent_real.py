"""The `agent` proposer against the real coding-agent CLIs from npm: Claude Code
(`@anthropic-ai/claude-code`) pointed at a local server that speaks Anthropic's streaming
Messages wire and scripts the tool calls (Read, then Edit, then a final text), and Codex
(`@openai/codex`) pointed, through its CODEX_HOME config, at a local server that speaks the
streaming Responses wire (an apply_patch call, then a final message). The flags and the
transcript parsing are checked against the real tools. Each test skips only when its
binary is not found (on PATH, or in `$RSILAB_AGENT_BIN`, e.g. an npm prefix's
node_modules/.bin)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rsilab.proposers.agent import AgentProposer
from rsilab.proposers.base import Context
from rsilab.results import Metric

BIN = os.environ.get("RSILAB_AGENT_BIN", "")
CLAUDE = shutil.which(
    "claude", path=os.pathsep.join(p for p in (BIN, os.environ.get("PATH", "")) if p)
)

TRAIN = "LR = 0.01            # learning rate\nSTEPS = 300          # SGD steps\n"


def _events(blocks: list[dict[str, Any]], stop: str) -> bytes:
    """One streamed Messages reply: message_start, each block, message_delta, message_stop."""
    out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1}}})]  # fmt: skip
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            out.append(("content_block_start", {"type": "content_block_start", "index": i,
                        "content_block": {"type": "text", "text": ""}}))  # fmt: skip
            out.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": block["text"]}}))  # fmt: skip
        else:
            out.append(("content_block_start", {"type": "content_block_start", "index": i,
                        "content_block": {"type": "tool_use", "id": f"toolu_{i}{block['name']}",
                                          "name": block["name"], "input": {}}}))  # fmt: skip
            out.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": json.dumps(block["input"])}}))  # fmt: skip
        out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(("message_delta", {"type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 7}}))  # fmt: skip
    out.append(("message_stop", {"type": "message_stop"}))
    return "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in out).encode()


class ScriptedClaude:
    """Answers the main conversation (the request with tools) by how many tool results it
    holds: Read the file, then Edit it, then say it is done; anything else gets "ok"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                body = json.loads(
                    self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}"
                )
                outer.bodies.append((self.path, body))
                payload = outer.reply(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, body: dict[str, Any]) -> bytes:
        names = {t.get("name") for t in body.get("tools") or []}
        if "Edit" not in names:
            return _events([{"type": "text", "text": "ok"}], "end_turn")
        results = sum(
            1
            for m in body.get("messages", [])
            if isinstance(m.get("content"), list)
            for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"
        )
        if results == 0:
            return _events([{"type": "tool_use", "name": "Read",
                             "input": {"file_path": str(self.path)}}], "tool_use")  # fmt: skip
        if results == 1:
            edit = {"file_path": str(self.path), "old_string": "STEPS = 300 ",
                    "new_string": "STEPS = 600 "}  # fmt: skip
            return _events([{"type": "tool_use", "name": "Edit", "input": edit}], "tool_use")
        return _events([{"type": "text", "text": "Done: more SGD steps."}], "end_turn")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedClaude]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    fake = ScriptedClaude(work / "train.py")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in (BIN, os.environ["PATH"]) if p))
    for key, value in {
        "HOME": str(home), "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-fake",
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    yield fake
    fake.close()


@pytest.mark.skipif(CLAUDE is None, reason="the claude binary is not installed")
def test_the_real_claude_code_edits_the_worktree(scripted: ScriptedClaude) -> None:
    work = scripted.path.parent
    ctx = Context({"train.py": TRAIN}, Metric("val_loss", "min"), 0.5, [], [],
                  editable=("train.py",), workdir=work)  # fmt: skip
    proposal = AgentProposer(cli="claude", timeout=120).propose(ctx)
    assert proposal is not None, scripted.bodies
    assert "STEPS = 600" in scripted.path.read_text(), proposal.meta
    main = [b for p, b in scripted.bodies if "/v1/messages" in p and b.get("tools")]
    assert len(main) == 3  # Read, Edit, the final text: the real tool loop ran
    assert "invalid" not in proposal.meta, proposal.meta


CODEX = shutil.which(
    "codex", path=os.pathsep.join(p for p in (BIN, os.environ.get("PATH", "")) if p)
)
PATCH = (
    "*** Begin Patch\n*** Update File: train.py\n@@\n-STEPS = 300          # SGD steps\n"
    "+STEPS = 600          # SGD steps\n*** End Patch\n"
)


def _responses(items: list[dict[str, Any]]) -> bytes:
    """One streamed Responses reply: each output item done, then the response completed."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"type": "response.created", "response": {"id": "resp_fake"}})
    ]
    for i, item in enumerate(items):
        out.append(("response.output_item.done",
                    {"type": "response.output_item.done", "output_index": i, "item": item}))  # fmt: skip
    out.append(("response.completed", {"type": "response.completed", "response": {
        "id": "resp_fake", "usage": {"input_tokens": 12, "input_tokens_details": None,
                                     "output_tokens": 7, "output_tokens_details": None,
                                     "total_tokens": 19}}}))  # fmt: skip
    return "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in out).encode()


class ScriptedCodex(ScriptedClaude):
    """Codex's Responses wire: an apply_patch custom tool call, then a final message."""

    def reply(self, body: dict[str, Any]) -> bytes:
        done = any(
            isinstance(i, dict) and i.get("type", "").endswith("call_output")
            for i in body.get("input") or []
        )
        if not done:
            call = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1",
                    "name": "apply_patch", "input": PATCH, "status": "completed"}  # fmt: skip
            return _responses([call])
        text = {"type": "message", "role": "assistant", "id": "msg_1",
                "content": [{"type": "output_text", "text": "Done: more SGD steps."}]}  # fmt: skip
        return _responses([text])


@pytest.mark.skipif(CODEX is None, reason="the codex binary is not installed")
def test_the_real_codex_edits_the_worktree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Codex's workspace-write sandbox fails with its home or TMPDIR under the system temp
    # folder: both go under the user's cache instead (removed after).
    base = Path.home() / ".cache" / f"rsilab-codex-test-{os.getpid()}"
    work, codex_home, tmp = base / "work", base / "codex", base / "tmp"
    for d in (work, codex_home, tmp):
        d.mkdir(parents=True, exist_ok=True)
    (work / "train.py").write_text(TRAIN)
    fake = ScriptedCodex(work / "train.py")
    try:
        (codex_home / "config.toml").write_text(
            'model = "gpt-5.5"\nmodel_provider = "fake"\n\n[model_providers.fake]\nname = "fake"\n'
            f'base_url = "{fake.url}/v1"\nwire_api = "responses"\nenv_key = "OPENAI_API_KEY"\n'
        )
        monkeypatch.setenv("PATH", os.pathsep.join(p for p in (BIN, os.environ["PATH"]) if p))
        monkeypatch.setenv("CODEX_HOME", str(codex_home))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
        monkeypatch.setenv("TMPDIR", str(tmp))
        ctx = Context({"train.py": TRAIN}, Metric("val_loss", "min"), 0.5, [], [],
                      editable=("train.py",), workdir=work)  # fmt: skip
        proposal = AgentProposer(cli="codex", timeout=120).propose(ctx)
        assert proposal is not None, fake.bodies
        assert "STEPS = 600" in (work / "train.py").read_text(), (proposal.meta, fake.bodies)
        assert sum("/responses" in p for p, _ in fake.bodies) >= 2  # the patch, then the text
        assert "invalid" not in proposal.meta, proposal.meta
    finally:
        fake.close()
        shutil.rmtree(base, ignore_errors=True)

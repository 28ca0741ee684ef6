"""The LLM proposer against servers with small windows, templates that drop the system
message, truncated and repeated answers, structured answers and the compact mode: each
against the local fake server speaking the real wire format (tests/fake_llm.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_llm import FakeLLM, Scripted

from rsilab.config import LLMSpec, resolve_task_dir
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.proposers.base import Context
from rsilab.proposers.llm import LLMProposer
from rsilab.proposers.llmclient import ChatClient, ContextOverflow, FormatRefused
from rsilab.record.ledger import Ledger
from rsilab.results import Metric
from rsilab.run.bench import Bench
from rsilab.workspace import init_workspace

TOY = resolve_task_dir("toy")
TRAIN = (TOY / "train.py").read_text()
GOOD = """DESCRIPTION: lower weight decay 0.1 -> 0.01

train.py
<<<<<<< SEARCH
L2 = 0.1             # weight decay
=======
L2 = 0.01            # weight decay
>>>>>>> REPLACE
"""
GOOD_JSON = json.dumps(
    {
        "description": "lower weight decay 0.1 -> 0.01",
        "edits": [
            {
                "path": "train.py",
                "search": "L2 = 0.1             # weight decay\n",
                "replace": "L2 = 0.01            # weight decay\n",
            }
        ],
    }
)
NO_FORMAT = "Sure! Weight decay could be lowered, I think."


def ctx(**kw: Any) -> Context:
    return Context(
        {"train.py": TRAIN},
        Metric("val_loss", "min"),
        0.5,
        [],
        [],
        program=(TOY / "program.md").read_text(),
        editable=("train.py",),
        limits=["training budget: 10 s of wall clock per run (`harness.budget_seconds()`)"],
        **kw,
    )


def proposer(fake: FakeLLM, **spec: Any) -> LLMProposer:
    return LLMProposer(
        LLMSpec(base_url=fake.url_openai, model=spec.pop("model", "m"), **spec),
        env={},
        sleep=lambda s: None,
    )


def l2_of(files: dict[str, str]) -> str:
    return next(line for line in files["train.py"].splitlines() if line.startswith("L2 ="))


# -- context that always fits ----------------------------------------------------------


@pytest.mark.parametrize("flavour", ["llama-cpp-python", "llama.cpp"])
def test_a_context_length_400_is_learnt_from_and_the_prompt_refitted(flavour: str) -> None:
    """No window known: the first request (max_tokens 4096) overflows a 3000-token server;
    the proposer takes the window from the error, shrinks the prompt, clamps max_tokens."""
    with FakeLLM(n_ctx=3000, flavour=flavour) as fake:
        fake.queue(GOOD)
        p = proposer(fake, mode="edit", structured="off")
        proposal = p.propose(ctx())
        requests = list(fake.requests)
    assert proposal is not None and "invalid" not in proposal.meta, proposal
    assert l2_of(dict(proposal.files)) == "L2 = 0.01            # weight decay"
    assert fake.overflows == 1 and len(requests) == 2
    assert requests[0].json["max_tokens"] == 4096
    second = requests[1].json
    assert fake.prompt_tokens(second) + second["max_tokens"] <= 3000
    assert "context length" in proposal.meta["log"] or "context size" in proposal.meta["log"]


def test_a_window_from_props_and_the_servers_tokenizer_fit_the_first_request() -> None:
    """llama.cpp tells its window (/props) and counts tokens (/tokenize): the first request
    fits, with max_tokens clamped to what the prompt leaves (the server counts more tokens
    than characters / 3.1 would: the count is calibrated on the server's tokenizer)."""
    with FakeLLM(n_ctx=2600, flavour="llama.cpp", props={"n_ctx": 2600}, tokenizer=True) as fake:
        fake.queue(GOOD)
        proposal = proposer(fake, mode="edit", structured="off").propose(ctx())
        body = fake.requests[0].json
        probes = [r.path for r in fake.probes]
    assert proposal is not None and "invalid" not in proposal.meta
    assert fake.overflows == 0
    assert fake.prompt_tokens(body) + body["max_tokens"] <= 2600 and body["max_tokens"] < 4096
    assert probes == ["/props", "/tokenize"]


def test_an_unfittable_window_is_one_invalid_experiment_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    """A 200-token server: no prompt fits. `rsilab run` records invalid experiments with a
    hint and ends normally at its limit instead of dying on the HTTP 400."""
    ws = init_workspace(tmp_path / "ws", TOY, "llm")
    with FakeLLM(n_ctx=200) as fake:
        llm = proposer(fake)
        ledger = Ledger(ws.ledger_path)
        Supervisor(
            ws,
            ledger,
            Bench(ws.load_task()),
            [create("queue", queue_dir=ws.queue_dir), llm],
            limits=Limits(max_experiments=2),
        ).run()
    exps = [e for e in ledger.experiments() if e.kind != "baseline"]
    assert [e.status for e in exps] == ["invalid", "invalid"]
    assert "window" in exps[0].reason and "n_ctx" in exps[0].reason  # the hint
    costs = ledger.proposal_costs()
    assert [c["outcome"] for c in costs] == ["never", "never"]
    assert all(c["experiment_id"] == e.id for c, e in zip(costs, exps, strict=True))


# -- templates and truncation ----------------------------------------------------------


def _needs_format(seen: list[dict[str, Any]]) -> str:
    """A model that follows the answer format only when it can see it."""
    text = "\n".join(str(m.get("content", "")) for m in seen)
    return GOOD if "## Answer format" in text else NO_FORMAT


@pytest.mark.parametrize(
    "server, model",
    [
        (
            {
                "props": {
                    "n_ctx": 16384,
                    "chat_template": "{% for m in messages %}{{m.content}}{% endfor %}",
                }
            },
            "m",
        ),
        ({}, "gemma-3-270m"),
    ],
)
def test_a_template_that_drops_the_system_message_gets_it_in_the_user_turn(
    server: dict[str, Any], model: str
) -> None:
    with FakeLLM(drop_system=True, **server) as fake:
        fake.queue(Scripted(respond=_needs_format))
        proposal = proposer(fake, model=model, structured="off").propose(ctx())
        body = fake.requests[0].json
    assert proposal is not None and "invalid" not in proposal.meta
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"].startswith("You are an ML researcher")


def test_without_detection_the_dropped_system_message_loses_the_format() -> None:
    """The failure the detection prevents: told to keep the system role, the model never
    sees the format, and every round fails."""
    with FakeLLM(drop_system=True) as fake:
        fake.queue(*[Scripted(respond=_needs_format)] * 3)
        proposal = proposer(fake, system_prompt="system", structured="off").propose(ctx())
    assert proposal is not None and "invalid" in proposal.meta


def test_the_format_is_repeated_at_the_end_of_the_user_turn() -> None:
    with FakeLLM() as fake:
        fake.queue(GOOD)
        proposer(fake, structured="off").propose(ctx())
        user = fake.requests[0].json["messages"][-1]["content"]
    assert user.rstrip().endswith("`>>>>>>> REPLACE`.")
    assert "format of the system prompt" not in user


def test_a_truncated_answer_is_told_as_truncated_and_quoted_short() -> None:
    rambling = "Let me think about this. " * 400
    with FakeLLM() as fake:
        fake.queue(Scripted(text=rambling, finish="length"), GOOD)
        proposal = proposer(fake, structured="off").propose(ctx())
        second = fake.requests[1].json["messages"]
    assert proposal is not None and proposal.meta["proposal"]["outcome"] == "after repair"
    assert "cut off at the limit of" in second[-1]["content"]
    assert len(second[-2]["content"]) < 2000 < len(rambling)  # the repair quotes only a part


def test_an_answer_repeated_word_for_word_ends_the_repair_rounds() -> None:
    with FakeLLM() as fake:
        fake.queue(NO_FORMAT, NO_FORMAT, GOOD, GOOD)
        proposal = proposer(fake, repair_rounds=3, structured="off").propose(ctx())
        n = len(fake.requests)
    assert n == 2
    assert proposal is not None and "repeated" in proposal.meta["invalid"]
    assert proposal.meta["proposal"]["outcome"] == "never"


# -- structured answers ----------------------------------------------------------------


def test_openai_json_schema_is_asked_and_a_json_answer_applies() -> None:
    with FakeLLM() as fake:
        fake.queue(GOOD_JSON)
        proposal = proposer(fake, mode="edit").propose(ctx())
        body = fake.requests[0].json
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["description", "edits"]
    assert proposal is not None and proposal.description == "lower weight decay 0.1 -> 0.01"
    assert proposal.meta["proposal"]["outcome"] == "first try"


def test_a_refused_json_schema_falls_back_to_json_object_and_is_remembered() -> None:
    """llama-cpp-python takes only {"type": "json_object", "schema": ...} and answers
    json_schema with an HTTP 500 validation error: not an outage to wait out."""
    with FakeLLM(refuse_formats=("json_schema",)) as fake:
        fake.queue(GOOD_JSON, GOOD_JSON)
        p = proposer(fake, mode="edit")
        first = p.propose(ctx())
        second = p.propose(ctx())
        types = [r.json.get("response_format", {}).get("type") for r in fake.requests]
    assert types == ["json_schema", "json_object", "json_object"]
    assert fake.requests[1].json["response_format"]["schema"]["required"] == [
        "description",
        "edits",
    ]
    assert first is not None and second is not None and "invalid" not in first.meta


def test_anthropic_tool_use_is_the_structured_answer() -> None:
    with FakeLLM() as fake:
        fake.queue(Scripted(tool_input=json.loads(GOOD_JSON)))
        spec = LLMSpec(api="anthropic", base_url=fake.url_anthropic, model="c", mode="edit")
        proposal = LLMProposer(spec, env={}, sleep=lambda s: None).propose(ctx())
        body = fake.requests[0].json
    assert body["tool_choice"] == {"type": "tool", "name": "experiment"}
    assert body["tools"][0]["input_schema"]["required"] == ["description", "edits"]
    assert proposal is not None and l2_of(dict(proposal.files)).startswith("L2 = 0.01")


def test_vendor_hosts_get_free_text_by_default() -> None:
    llm = LLMProposer(LLMSpec(model="gpt-x"), env={"OPENAI_API_KEY": "k"})
    client = ChatClient("openai", "https://api.openai.com/v1", "gpt-x", "k")
    assert llm.style(client, "edit") == "" and llm.style(client, "compact") == "json_schema"
    client.close()


# -- compact mode ----------------------------------------------------------------------


def test_a_small_window_gets_the_compact_knob_mode() -> None:
    answer = {"description": "less weight decay", "knob": "L2", "value": "0.01"}
    with FakeLLM(n_ctx=1024, flavour="llama.cpp", props={"n_ctx": 1024}, tokenizer=True) as fake:
        fake.queue(json.dumps(answer))
        proposal = proposer(fake).propose(ctx())
        body = fake.requests[0].json
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["knob"]["enum"][:3] == ["LR", "STEPS", "BATCH_SIZE"]
    assert fake.prompt_tokens(body) + body["max_tokens"] <= 1024 and fake.overflows == 0
    assert "L2 = 0.1" in body["messages"][-1]["content"]  # the knob table
    assert proposal is not None and proposal.meta["proposal"]["mode"] == "compact"
    assert l2_of(dict(proposal.files)) == "L2 = 0.01            # weight decay"
    assert "L2 0.1 -> 0.01" in proposal.description


def test_a_compact_answer_naming_no_knob_is_repaired() -> None:
    with FakeLLM(props={"n_ctx": 2048}) as fake:
        fake.queue(
            json.dumps({"description": "x", "knob": "DEPTH", "value": "3"}),
            json.dumps({"description": "more steps", "knob": "STEPS", "value": "600"}),
        )
        proposal = proposer(fake).propose(ctx())
        repair = fake.requests[1].json["messages"][-1]["content"]
    assert "'DEPTH' is not a knob" in repair and "STEPS" in repair
    assert proposal is not None and "STEPS = 600" in proposal.files["train.py"]


# -- the client's view of the errors ---------------------------------------------------


@pytest.mark.parametrize("flavour", ["llama-cpp-python", "vllm", "llama.cpp"])
def test_context_overflow_carries_the_servers_figures(flavour: str) -> None:
    with FakeLLM(n_ctx=100, flavour=flavour) as fake:
        client = ChatClient("openai", fake.url_openai, "m", None, max_attempts=1)
        with pytest.raises(ContextOverflow) as e:
            client.complete("s" * 500, [{"role": "user", "content": "u"}], max_tokens=50)
        client.close()
    assert e.value.window == 100
    assert e.value.prompt_tokens == fake.count("s" * 500) + fake.count("u") + 16
    assert "--n_ctx" in str(e.value)


def test_a_refused_format_is_not_retried_as_an_outage() -> None:
    from rsilab.proposers.llmclient import AnswerFormat

    with FakeLLM(refuse_formats=("json_schema",)) as fake:
        client = ChatClient("openai", fake.url_openai, "m", None)
        with pytest.raises(FormatRefused):
            client.complete(
                "s", [{"role": "user", "content": "u"}], answer_format=AnswerFormat("a", {})
            )
        client.close()
    assert len(fake.requests) == 1


# -- doctor ----------------------------------------------------------------------------


def test_doctor_reports_the_window_and_the_structured_format() -> None:
    import dataclasses

    from rsilab.config import load_task
    from rsilab.doctor import _llm_check

    task = load_task(TOY)
    with FakeLLM(refuse_formats=("json_schema",), props={"n_ctx": 4096}) as fake:
        fake.queue("pong", '{"ok": true}')
        spec = dataclasses.replace(task.llm, base_url=fake.url_openai, model="gemma-3")
        check = _llm_check(dataclasses.replace(task, llm=spec), {}, ping=True)
        types = [r.json.get("response_format", {}).get("type") for r in fake.requests]
    assert check.ok, check
    assert "window 4096 tokens (from llama.cpp /props)" in check.detail
    assert "structured answers: json_object" in check.detail
    assert "first user turn" in check.detail  # a Gemma
    assert types == [None, "json_schema", "json_object"]


def test_edit_schema_binds_search_to_the_files_lines() -> None:
    from rsilab.proposers.edits import edit_schema

    files = {"train.py": 'A = 1\nB = "x"\nA = 1\nC = 2\n'}
    item = edit_schema(files, exact_lines=True)["properties"]["edits"]["items"]  # type: ignore[index]
    assert item["properties"]["search"]["enum"] == ["C = 2"]  # once only, no quotes
    assert item["properties"]["path"]["enum"] == ["train.py"]
    free = edit_schema(files)["properties"]["edits"]["items"]  # type: ignore[index]
    assert free["properties"]["search"] == {"type": "string"}


def test_a_fraction_for_a_whole_number_knob_is_refused_before_a_run() -> None:
    """SmolLM2 set BATCH_SIZE 8 -> 1.25 in a real run, which crashed: now a repair turn."""
    with FakeLLM(props={"n_ctx": 2048}) as fake:
        fake.queue(
            json.dumps({"description": "smaller batches", "knob": "BATCH_SIZE", "value": 1.25}),
            json.dumps({"description": "smaller batches", "knob": "BATCH_SIZE", "value": 4}),
        )
        proposal = proposer(fake).propose(ctx())
        repair = fake.requests[1].json["messages"][-1]["content"]
    assert "BATCH_SIZE takes a whole number, not 1.25" in repair
    assert proposal is not None and "BATCH_SIZE = 4 " in proposal.files["train.py"]


# -- a prompt worth reading ------------------------------------------------------------


def test_the_prompt_has_the_judges_figures_the_real_limits_and_the_tasks_own_api() -> None:
    from rsilab.proposers.base import HistoryItem
    from rsilab.proposers.prompt import build_messages

    diff = "--- a/train.py\n+++ b/train.py\n-LR = 0.01            # learning rate\n+LR = 0.03            # learning rate\n"
    history = [
        HistoryItem(1, "baseline", {}, "keep", 0.5, "baseline"),
        HistoryItem(2, "raise lr", {}, "discard", 0.52, "llm", reason="no gain", diff=diff),
        *[
            HistoryItem(i, "malformed answer (3 tries)", {}, "invalid", None, "llm")
            for i in range(3, 9)
        ],
    ]
    c = ctx(noise_sd=0.0049, keep_gain=0.0112, incumbent_summary={"num_steps": 300.0})
    c = Context(**{**c.__dict__, "history": history})
    system, messages = build_messages(c, budget_tokens=20_000)
    user = messages[0]["content"]
    assert "varies by about 0.0049 (sd)" in user and "gain at least 0.0112" in user
    assert "reach about 0.4888" in user and "num_steps 300" in user
    assert "these hold" in user and "10 s of wall clock" in user
    assert "#2 discard 0.5200 (+0.0200) raise lr [LR 0.01 -> 0.03]: no gain" in user
    assert "6 unusable answers (#3-#8)" in user and user.count("malformed answer") == 0
    assert "harness.artifact_dir()" in system and "train_batches(batch_size" not in system


class _Server:
    """A server's introspection answers, by (method, path)."""

    def __init__(self, model: str, answers: dict[tuple[str, str], Any]) -> None:
        self.model, self.answers = model, answers

    def probe(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        return self.answers.get((method, path))


@pytest.mark.parametrize(
    "answers, window, source",
    [
        (
            {("GET", "/props"): {"default_generation_settings": {"n_ctx": 4096}}},
            4096,
            "llama.cpp /props",
        ),
        (
            {("GET", "/v1/models"): {"data": [{"id": "m", "max_model_len": 32768}]}},
            32768,
            "/v1/models max_model_len",
        ),
        (
            {("POST", "/api/show"): {"modelfile": "...", "parameters": "num_ctx 8192\nstop x"}},
            8192,
            "ollama /api/show",
        ),
        ({("POST", "/api/show"): {"modelfile": "...", "parameters": ""}}, 4096, "ollama /api/show"),
        ({("POST", "/extras/tokenize/count"): {"count": 1}}, None, ""),
    ],
)
def test_each_servers_window_is_read(
    answers: dict[tuple[str, str], Any], window: int | None, source: str
) -> None:
    from rsilab.proposers.window import probe_server

    info = probe_server(_Server("m", answers))
    assert (info.window, info.source) == (window, source)

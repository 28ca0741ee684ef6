"""The `llm` proposer in the real loop, against a local fake server speaking both wire formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_llm import FakeLLM, Scripted

from rsilab.config import LLMSpec, resolve_task_dir
from rsilab.errors import ConfigError
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.proposers.llm import LLMProposer
from rsilab.record.ledger import Ledger
from rsilab.run.bench import Bench
from rsilab.workspace import init_workspace

SECRET = "sk-test-DO-NOT-LEAK-4242"

GOOD = """I think weight decay is too strong for this problem: the model is underfitting.

DESCRIPTION: lower weight decay 0.1 -> 0.01

train.py
<<<<<<< SEARCH
L2 = 0.1             # weight decay
=======
L2 = 0.01            # weight decay
>>>>>>> REPLACE
"""

MALFORMED = """DESCRIPTION: more steps

train.py
<<<<<<< SEARCH
STEPS = 3000 # this line is not in the file
=======
STEPS = 600
>>>>>>> REPLACE
"""

FIXED_AFTER_REPAIR = """Sorry, here it is with the exact line.

DESCRIPTION: more steps 300 -> 600

train.py
<<<<<<< SEARCH
STEPS = 300          # SGD steps
=======
STEPS = 600          # SGD steps
>>>>>>> REPLACE
"""

FROZEN = """DESCRIPTION: make the evaluator kinder

evaluate.py
<<<<<<< SEARCH
mse = float(np.mean((x @ w - y) ** 2))
=======
mse = 0.0
>>>>>>> REPLACE
"""

CRASHES = """DESCRIPTION: add momentum with a schedule

train.py
<<<<<<< SEARCH
MOMENTUM = 0.0       # heavy-ball momentum
=======
MOMENTUM = 0.0       # heavy-ball momentum
SCHEDULE = undefined_name
>>>>>>> REPLACE
"""

FIX = """The crash is a NameError: `undefined_name` does not exist. Define the schedule.

DESCRIPTION: add momentum with a schedule (fixed)

train.py
<<<<<<< SEARCH
SCHEDULE = undefined_name
=======
SCHEDULE = None
>>>>>>> REPLACE
"""


# A 5-run noise floor: the L2 edit's gain (about 2 sd of the toy's noise) is kept against
# others' noise (the judge never lets a candidate's own steadier runs lower its bar).
NOISE_FLOOR: list[tuple[str, object]] = [("judge.noise_runs", 5)]


def run_loop(
    tmp_path: Path, fake: FakeLLM, api: str, n: int, env: dict[str, str], **spec: object
) -> Ledger:
    ws = init_workspace(tmp_path / "ws", resolve_task_dir("toy"), "llm")
    task = ws.load_task(NOISE_FLOOR)
    url = fake.url_openai if api == "openai" else fake.url_anthropic
    llm_spec = LLMSpec(api=api, base_url=url, model="test-model", key_env="TEST_KEY", **spec)  # type: ignore[arg-type]
    waits: list[float] = []
    proposer = LLMProposer(llm_spec, env=env, sleep=waits.append)
    ledger = Ledger(ws.ledger_path)
    sup = Supervisor(
        ws,
        ledger,
        Bench(task),
        [create("queue", queue_dir=ws.queue_dir), proposer],
        limits=Limits(max_experiments=n),
    )
    sup.run()
    return ledger


def test_llm_research_in_the_loop_openai(tmp_path: Path) -> None:
    with FakeLLM() as fake:
        fake.queue(
            Scripted(text=GOOD, tokens_in=1000, tokens_out=100),
            Scripted(status=429, text="slow down", headers={"Retry-After": "2"}),
            Scripted(text=MALFORMED, tokens_in=900, tokens_out=50),
            Scripted(text=FIXED_AFTER_REPAIR, tokens_in=1100, tokens_out=60),
            Scripted(status=500, text="overloaded"),
            Scripted(text=FROZEN),
            Scripted(text=FROZEN),
            Scripted(text=FROZEN),
        )
        ledger = run_loop(
            tmp_path,
            fake,
            "openai",
            3,
            {"TEST_KEY": SECRET},
            price_in=2.0,
            price_out=10.0,
            repair_rounds=2,
        )
        requests = list(fake.requests)
    exps = ledger.experiments()
    assert [e.proposer for e in exps] == ["baseline", "llm", "llm", "llm"]
    good, repaired, frozen = exps[1:]
    assert good.status == "keep" and good.description == "lower weight decay 0.1 -> 0.01"
    assert repaired.description == "more steps 300 -> 600" and repaired.status in (
        "keep",
        "discard",
    )
    assert frozen.status == "invalid" and "evaluate.py" in frozen.reason
    assert ledger.runs(frozen.id) == []  # nothing was trained for it
    # Tokens and money per experiment, from the usage the server reported.
    costs = ledger.costs(good.id)
    assert (costs["tokens_in"], costs["tokens_out"], costs["cost_usd"]) == (
        1000.0,
        100.0,
        pytest.approx(0.003),
    )
    assert costs["compute"] > 0
    assert ledger.costs(repaired.id)["tokens_in"] == 2000.0
    # The wire: OpenAI chat completions with a bearer key; the repair shows the model its error.
    assert all(r.path == "/v1/chat/completions" for r in requests)
    assert requests[0].headers["authorization"] == f"Bearer {SECRET}"
    repair_turns = requests[3].json["messages"]
    assert repair_turns[-2]["role"] == "assistant" and "STEPS = 3000" in repair_turns[-2]["content"]
    assert "does not match" in repair_turns[-1]["content"]
    assert "program" in requests[0].json["messages"][1]["content"].lower()
    # The transcript is kept as the experiment's proposal log.
    log = (tmp_path / "ws" / ".rsilab" / "runs" / f"exp-{good.id:04d}" / "proposal.log").read_text()
    assert "lower weight decay" in log


def test_llm_anthropic_wire_and_fix_attempt(tmp_path: Path) -> None:
    with FakeLLM() as fake:
        fake.queue(
            Scripted(text=CRASHES, tokens_in=10, tokens_out=5),
            Scripted(text=FIX, tokens_in=20, tokens_out=7),
        )
        ledger = run_loop(tmp_path, fake, "anthropic", 2, {"TEST_KEY": SECRET}, fix_attempts=1)
        requests = list(fake.requests)
    exps = ledger.experiments()
    crash, fix = exps[1], exps[2]
    assert crash.status == "crash" and "NameError" in ledger.runs(crash.id)[0].log_tail
    assert fix.meta.get("fixes") == crash.id and fix.status in ("keep", "discard")
    assert "SCHEDULE = None" in fix.diff and "undefined_name" not in fix.diff.split("+++")[
        -1
    ].replace("-SCHEDULE", "")
    assert requests[0].path == "/v1/messages" and requests[0].headers["x-api-key"] == SECRET
    assert requests[0].headers["anthropic-version"] == "2023-06-01"
    assert "NameError" in requests[1].json["messages"][-1]["content"]  # the traceback tail is shown


def test_outage_pauses_and_resumes_by_itself(tmp_path: Path) -> None:
    with FakeLLM() as fake:
        fake.queue(
            *[Scripted(status=503, text="down")] * 6, Scripted(drop=True), Scripted(text=GOOD)
        )
        ledger = run_loop(tmp_path, fake, "openai", 1, {"TEST_KEY": SECRET})
    assert [e.status for e in ledger.experiments()] == ["keep", "keep"]


def test_keys_never_reach_the_ledger_logs_or_reports(tmp_path: Path, rsilab_home: Path) -> None:
    with FakeLLM() as fake:
        fake.queue(GOOD, FROZEN, FROZEN, FROZEN)
        ledger = run_loop(tmp_path, fake, "openai", 2, {"TEST_KEY": SECRET})
        ledger.export_json(tmp_path / "ws" / "results.json")
        ledger.export_tsv(tmp_path / "ws" / "results.tsv")
        ledger.close()
    leaked = [
        p
        for root in (tmp_path, rsilab_home)
        for p in root.rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert leaked == []


def test_missing_key_for_a_vendor_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LLMProposer(LLMSpec(), env={})
    with pytest.raises(ConfigError, match="MY_KEY"):
        LLMProposer(LLMSpec(key_env="MY_KEY", base_url="http://127.0.0.1:9/v1"), env={})
    # A local server (ollama, vLLM) needs no key; an Anthropic key alone selects that API.
    LLMProposer(LLMSpec(base_url="http://127.0.0.1:9/v1"), env={})
    assert LLMProposer(LLMSpec(), env={"ANTHROPIC_API_KEY": "x"}).spec.api == "anthropic"


def test_a_persons_free_text_idea_reaches_the_model_once(tmp_path: Path) -> None:
    from rsilab.loop.controls import queue_idea

    ws_dir = tmp_path / "ws"
    init_workspace(ws_dir, resolve_task_dir("toy"), "llm")
    idea_file = queue_idea(ws_dir / ".rsilab" / "queue", "try much less weight decay")
    assert idea_file.name.endswith(".idea.md")
    with FakeLLM() as fake:
        fake.queue(GOOD, FIXED_AFTER_REPAIR)
        ledger = run_loop_in(ws_dir, fake, 2)
        requests = list(fake.requests)
    first, second = (r.json["messages"][-1]["content"] for r in requests[:2])
    assert "try much less weight decay" in first and "try much less weight decay" not in second
    assert ledger.experiments()[1].meta["idea"].strip() == "try much less weight decay"
    assert not idea_file.exists() and (idea_file.parent / "done" / idea_file.name).exists()


def run_loop_in(ws_dir: Path, fake: FakeLLM, n: int) -> Ledger:
    from rsilab.workspace import open_workspace

    ws = open_workspace(ws_dir)
    spec = LLMSpec(base_url=fake.url_openai, model="test-model")
    proposer = LLMProposer(spec, env={}, sleep=lambda s: None)
    ledger = Ledger(ws.ledger_path)
    Supervisor(
        ws,
        ledger,
        Bench(ws.load_task(NOISE_FLOOR)),
        [create("queue", queue_dir=ws.queue_dir), proposer],
        limits=Limits(max_experiments=n),
    ).run()
    return ledger

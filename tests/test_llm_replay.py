"""Real models' answers, replayed: what SmolLM2 (and Gemma) really answered through
llama-cpp-python's server (recorded by benchmarks/local_llm.py into
tests/fixtures/llm_answers/) goes again through the parser and the repair loop, from the
local fake server, and must come out as it did: usable on the first try, after repair, or
never, with the same description."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_llm import FakeLLM

from rsilab.config import LLMSpec, load_task, resolve_task_dir
from rsilab.proposers.base import Context
from rsilab.proposers.compact import parse_compact
from rsilab.proposers.edits import EditError, parse_answer
from rsilab.proposers.llm import LLMProposer

FIXTURES = Path(__file__).parent / "fixtures" / "llm_answers"
MODES = {
    "edit/text": {"mode": "edit", "structured": "off"},
    "edit/json": {"mode": "edit", "structured": "auto"},
    "compact/text": {"mode": "compact", "structured": "off"},
    "compact/json": {"mode": "compact", "structured": "auto"},
}


# Answers that applied when they were recorded and are refused now: a fraction for a
# whole-number knob (BATCH_SIZE 8 -> 0.5, MLP_RATIO 4 -> 3.4), refused since a real run
# crashed on BATCH_SIZE 8 -> 1.25. Each must now be refused for that very reason.
REFUSED_NOW = {
    "smollm2-135m-instruct-toy-compact/json-0",
    "smollm2-135m-instruct-toy-compact/json-1",
    "smollm2-135m-instruct-gpt-compact/json-1",
}


def recorded() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        for cell in data["cells"]:
            for i, row in enumerate(cell["rows"]):
                out.append((f"{path.stem}-{cell['task']}-{cell['mode']}-{i}", data, cell, row))
    return out


CASES = recorded()


def test_real_answers_are_recorded() -> None:
    assert len(CASES) >= 8
    assert {c[2]["mode"] for c in CASES} == set(MODES)


def context(task: str) -> Context:
    root = resolve_task_dir(task)
    spec = load_task(root)
    files = {p: (root / p).read_text() for p in spec.editable_files()}
    return Context(files, spec.metric_obj, None, [], [], editable=tuple(spec.editable))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_recorded_answer_replays_to_its_outcome(
    case: tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    name, data, cell, row = case
    if name in REFUSED_NOW:
        with pytest.raises(EditError, match="takes a whole number"):
            parse_compact(row["answers"][-1], context(cell["task"]))
        return
    with FakeLLM() as fake:
        fake.queue(*row["answers"])
        spec = LLMSpec(
            base_url=fake.url_openai,
            model=data["model"],
            max_tokens=data["max_tokens"],
            window_tokens=data["n_ctx"],
            repair_rounds=2,
            **MODES[cell["mode"]],  # type: ignore[arg-type]
        )
        llm = LLMProposer(spec, env={}, sleep=lambda s: None, max_attempts=1)
        proposal = llm.propose(context(cell["task"]))
        served = len(fake.requests)
    assert proposal is not None
    assert proposal.meta["proposal"]["outcome"] == row["outcome"]
    assert served == len(row["answers"])
    if row["outcome"] != "never":
        assert proposal.description == row["description"]
        assert proposal.files  # applied: a real change to the files


def test_prose_then_a_block_is_an_answer() -> None:
    """aider's own style, which a strict parser refused for lacking DESCRIPTION:."""
    text = (
        "I will lower the learning rate so that training is steadier.\n\n"
        "train.py\n<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.005\n>>>>>>> REPLACE\n"
    )
    answer = parse_answer(text)
    assert answer.description == "I will lower the learning rate so that training is steadier."
    with pytest.raises(EditError, match="no DESCRIPTION line"):
        parse_answer("train.py\n<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.005\n>>>>>>> REPLACE\n")

"""Tests for the offline proposers ("tuner", "random") and the proposer registry.

Real Optuna throughout; the "training" is a synthetic objective over the knobs.
"""

from __future__ import annotations

import importlib.metadata
import math
import statistics
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from rsilab.errors import ConfigError
from rsilab.proposers import base
from rsilab.proposers.base import Context, HistoryItem, available, create, warm_start
from rsilab.proposers.knobs import format_value, parse_knobs
from rsilab.proposers.tuner import RandomSearch, Tuner
from rsilab.results import Metric, Proposal

TRAIN = """\
import math

LR = 0.001               # peak learning rate
BATCH_SIZE = 16          # sequences per step
WARMUP = 0.1             # warm-up fraction
DEPTH = 4                # blocks
ACT = "gelu"             # one of: gelu, relu, swiglu
TIE = True               # tie embeddings
RUN = "base"             # a free string: never tuned
PRESET = "cpu"
if PRESET == "gpu":
    BATCH_SIZE = 64
"""
FILES = {"train.py": TRAIN, "README.md": "not python"}
MIN = Metric("val_bpb", "min")


def bowl(knobs: Mapping[str, Any]) -> float:
    """A quadratic bowl in log-LR (optimum 0.004) and log-batch (optimum 32)."""
    return (math.log10(knobs["LR"]) - math.log10(0.004)) ** 2 + 0.2 * (
        math.log2(knobs["BATCH_SIZE"]) - 5
    ) ** 2


def ctx(files: Mapping[str, str] = FILES, **kw: Any) -> Context:
    args: dict[str, Any] = {"metric": MIN, "incumbent_metric": None, "history": [], "in_flight": []}
    return Context(files, **{**args, **kw})


def search(
    proposer: Tuner, steps: int, objective: Callable[[Mapping[str, Any]], float] = bowl
) -> tuple[float, list[Proposal]]:
    """The supervisor's loop in miniature: keep a proposal when it beats the incumbent."""
    files = dict(FILES)
    incumbent = objective({k: v.value for k, v in parse_knobs(TRAIN).items()})
    best, seen = incumbent, []
    for _ in range(steps):
        p = proposer.propose(ctx(files, incumbent_metric=incumbent))
        assert p is not None
        value = objective(p.knobs)
        verdict = "keep" if value < incumbent else "discard"
        proposer.observe(p, verdict, value)
        seen.append(p)
        best = min(best, value)
        if verdict == "keep":
            files.update(p.files)
            incumbent = value
    return best, seen


def test_proposals_change_one_to_three_knobs_in_range() -> None:
    tuner = Tuner(seed=3)
    incumbent = parse_knobs(TRAIN, "cpu")
    for _ in range(25):
        p = tuner.propose(ctx())
        assert p is not None and p.proposer == "tuner"
        changed = {n for n, v in p.knobs.items() if v != incumbent[n].value}
        assert 1 <= len(changed) <= 3 and set(p.meta["changed"]) == changed
        assert set(p.knobs) == {"LR", "BATCH_SIZE", "WARMUP", "DEPTH", "ACT", "TIE"}
        assert list(p.files) == ["train.py"]
        assert parse_knobs(p.files["train.py"])["RUN"].value == "base"
        for name in changed:
            assert f"{name} " in p.description
        for name, value in p.knobs.items():
            dist = tuner.space[name]
            if isinstance(dist, CategoricalDistribution):
                assert value in dist.choices
            else:
                assert isinstance(dist, FloatDistribution | IntDistribution)
                assert dist.low <= value <= dist.high
        tuner.observe(p, "discard", 1.0)
    space = tuner.space
    assert space["LR"] == FloatDistribution(0.0001, 0.01, log=True)
    assert space["WARMUP"] == FloatDistribution(0.01, 1.0, log=True)  # a fraction stays <= 1
    assert space["BATCH_SIZE"] == IntDistribution(4, 64, log=True)
    assert space["ACT"] == CategoricalDistribution(("gelu", "relu", "swiglu"))
    assert "RUN" not in space and "PRESET" not in space


def test_a_fraction_near_one_is_searched_as_its_complement() -> None:
    # Adam's beta2 = 0.95: the tuner searches 1 - beta2 log-uniformly over 0.005..0.5, so a
    # draw is a beta2 in 0.5..0.995 (not 0.095..1, where half the draws were under 0.31).
    files = {"train.py": "BETA2 = 0.95    # AdamW beta2\nLR = 0.001\n"}
    tuner = Tuner(seed=1, max_knobs=2)
    betas = []
    for _ in range(40):
        p = tuner.propose(ctx(files, incumbent_metric=1.0))
        assert p is not None
        assert parse_knobs(p.files["train.py"])["BETA2"].value == p.knobs["BETA2"]
        betas.append(p.knobs["BETA2"])
        tuner.observe(p, "discard", 1.0 + (0.95 - p.knobs["BETA2"]) ** 2)
    assert tuner.space["BETA2"] == FloatDistribution(0.005, 0.5, log=True)
    # What the study learned is in coordinates: a trial of beta2 = b holds 1 - b.
    assert tuner.study is not None
    taught = [
        t.params["BETA2"]
        for t in tuner.study.trials
        if t.state is TrialState.COMPLETE and "BETA2" in t.params
    ]
    assert sorted(taught) == sorted(round(1 - b, 12) for b in betas if b != 0.95)
    moved = [b for b in betas if b != 0.95]
    assert len(moved) >= 10 and all(0.5 <= b <= 0.995 for b in moved)
    assert statistics.median(moved) > 0.8
    assert all(b == float(f"{b:.3g}") for b in moved)  # readable values: 0.997, not 0.99729...


def test_description_and_files_match() -> None:
    p = Tuner(seed=0).propose(ctx())
    assert p is not None
    before, after = parse_knobs(TRAIN), parse_knobs(p.files["train.py"])
    parts = p.description.split(", ")
    assert [part.split(" ")[0] for part in parts] == p.meta["changed"]
    for part in parts:
        name, old, arrow, new = part.split(" ")
        assert (arrow, old, new) == (
            "->",
            format_value(before[name].value),
            format_value(p.knobs[name]),
        )
        assert after[name].value == p.knobs[name]


def test_never_repeats_a_setting_and_runs_out() -> None:
    src = 'TIE = True  # tie\nACT = "gelu"  # one of: gelu, relu, swiglu\n'
    tuner = Tuner(seed=1, max_knobs=2)
    seen = set()
    for _ in range(5):  # 2 x 3 settings, minus the incumbent
        p = tuner.propose(ctx({"t.py": src}))
        assert p is not None
        key = tuple(sorted(p.knobs.items()))
        assert key not in seen
        seen.add(key)
        tuner.observe(p, "discard", 1.0)
    assert tuner.propose(ctx({"t.py": src})) is None


def test_skips_what_is_in_flight() -> None:
    src = 'TIE = True  # tie\nACT = "gelu"  # one of: gelu, relu, swiglu\n'
    tuner = Tuner(seed=1)
    running: list[Proposal] = []
    for _ in range(5):
        p = tuner.propose(ctx({"t.py": src}, in_flight=running))
        assert p is not None and p.knobs not in [q.knobs for q in running]
        running.append(p)
    assert tuner.propose(ctx({"t.py": src}, in_flight=running)) is None


def test_options_exclude_and_max_knobs() -> None:
    tuner = Tuner(seed=0, max_knobs=1, exclude=["LR", "ACT"])
    for _ in range(10):
        p = tuner.propose(ctx())
        assert p is not None and len(p.meta["changed"]) == 1
        assert "LR" not in p.knobs and "ACT" not in p.knobs
        tuner.observe(p, "discard", 1.0)
    with pytest.raises(ConfigError):
        Tuner(max_knobs=0)


def test_gpu_preset_edits_the_preset_line() -> None:
    tuner = Tuner(seed=0, max_knobs=1, exclude=["LR", "WARMUP", "DEPTH", "ACT", "TIE"])
    p = tuner.propose(ctx(preset="gpu"))
    assert p is not None and p.meta["from"] == {"BATCH_SIZE": 64}
    out = p.files["train.py"]
    assert parse_knobs(out, "cpu")["BATCH_SIZE"].value == 16
    assert parse_knobs(out, "gpu")["BATCH_SIZE"].value == p.knobs["BATCH_SIZE"]


def test_deterministic_for_a_seed() -> None:
    _, a = search(Tuner(seed=7), 15)
    _, b = search(Tuner(seed=7), 15)
    _, c = search(Tuner(seed=8), 15)
    assert [p.description for p in a] == [p.description for p in b]
    assert [p.files for p in a] == [p.files for p in b]
    assert [p.description for p in a] != [p.description for p in c]


def test_history_replay_gives_the_live_next_proposal() -> None:
    live = Tuner(seed=5)
    history: list[HistoryItem] = []
    incumbent = bowl({"LR": 0.001, "BATCH_SIZE": 16})
    for i in range(14):  # past the random start-up, so TPE is modelling
        p = live.propose(ctx(history=history, incumbent_metric=incumbent))
        assert p is not None
        verdict, value = ("crash", None) if i % 5 == 3 else ("discard", bowl(p.knobs))
        live.observe(p, verdict, value)
        history.append(
            HistoryItem(i, p.description, p.knobs, verdict, value, p.proposer, meta=p.meta)
        )
    # an experiment of another proposer that set no knobs, and one that was interrupted
    other = HistoryItem(99, "rewrite attention", {}, "discard", 0.5, "llm")
    live.observe(other.to_proposal(), other.verdict, other.metric)
    history.append(other)
    expected = live.propose(ctx(history=history, incumbent_metric=incumbent))

    replayed = Tuner(seed=5)
    warm_start(replayed, history)
    got = replayed.propose(ctx(history=history, incumbent_metric=incumbent))
    assert got is not None and expected is not None
    assert got.description == expected.description and got.files == expected.files
    assert live.study is not None and replayed.study is not None
    done = [t for t in live.study.trials if t.state is TrialState.COMPLETE]
    assert [t.params for t in done] == [
        t.params for t in replayed.study.trials if t.state is TrialState.COMPLETE
    ]
    assert sum(t.value == math.inf for t in done) == 3  # crashes: worse than anything
    assert len(done) == 14  # every result of its own taught the study; the llm one did not


def test_a_result_credits_the_moved_knobs_with_the_change_against_the_parent() -> None:
    tuner = Tuner(seed=3)
    p = tuner.propose(ctx(incumbent_metric=2.0))
    assert p is not None and p.meta["parent_metric"] == 2.0
    tuner.observe(p, "discard", 2.25)
    # A result recorded without its parent's metric (another proposer's, or an older
    # ledger) cannot say what the move did: it teaches nothing, a failure still does.
    tuner.observe(Proposal("x", {}, "tuner", knobs=dict(p.knobs)), "discard", 1.0)
    tuner.observe(
        Proposal("y", {}, "tuner", knobs=dict(p.knobs), meta={"changed": ["LR"]}), "crash", None
    )
    assert tuner.study is not None
    done = [t for t in tuner.study.trials if t.state is TrialState.COMPLETE]
    assert [t.value for t in done] == [0.25, math.inf]
    assert set(done[0].params) == set(p.meta["changed"])  # not the knobs it left alone
    assert set(done[1].params) == {"LR"}


def test_max_direction_tells_failures_as_minus_infinity() -> None:
    tuner = Tuner(seed=0)
    p = tuner.propose(ctx(metric=Metric("accuracy", "max")))
    assert p is not None
    tuner.observe(p, "timeout", None)
    tuner.observe(p, "interrupted", None)  # teaches nothing
    assert tuner.study is not None
    values = [t.value for t in tuner.study.trials if t.state is TrialState.COMPLETE]
    assert values == [-math.inf]


def test_tuner_beats_random_on_a_bowl() -> None:
    start = bowl({"LR": 0.001, "BATCH_SIZE": 16})
    tuned = [search(Tuner(seed=s), 30)[0] for s in range(5)]
    rand = [search(RandomSearch(seed=s), 30)[0] for s in range(5)]
    assert statistics.mean(tuned) < 0.1 * start
    assert statistics.mean(tuned) < statistics.mean(rand)


def test_random_proposer_does_not_learn() -> None:
    rnd = create("random", seed=0)
    assert isinstance(rnd, RandomSearch) and rnd.name == "random"
    _, seen = search(rnd, 10)
    assert rnd.study is not None
    assert not [t for t in rnd.study.trials if t.state is TrialState.COMPLETE]
    assert len({tuple(sorted(p.knobs.items())) for p in seen}) == 10


def test_registry() -> None:
    assert {"tuner", "random", "queue"} <= set(available())
    tuner = create("tuner", seed=2, max_knobs=2, exclude=["LR"])
    assert isinstance(tuner, Tuner) and tuner.max_knobs == 2
    with pytest.raises(ConfigError, match=r"unknown proposer 'nope' \(known: .*queue.*tuner"):
        create("nope")
    with pytest.raises(ConfigError, match="bad options"):
        create("tuner", temperature=0.5)


def test_plugins_come_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rsilab_echo_plugin.py").write_text(
        textwrap.dedent(
            """
            class Echo:
                name = "echo"
                def __init__(self, word: str = "hi") -> None:
                    self.word = word
                def propose(self, ctx):
                    return None
                def observe(self, proposal, verdict, metric):
                    pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        importlib.metadata.EntryPoint("echo", "rsilab_echo_plugin:Echo", base.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "no_such_module_x:Y", base.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
    fresh = base.Registry(
        "proposer", "rsilab.proposers", base._BUILTIN_MODULES, base.ENTRY_POINT_GROUP
    )
    fresh._factories.update(base.REGISTRY._factories)
    monkeypatch.setattr(base, "REGISTRY", fresh)
    echo = create("echo", word="yo")
    assert echo.name == "echo" and "echo" in available()
    with pytest.raises(ConfigError, match="'broken' failed to load"):
        create("broken")
    sys.modules.pop("rsilab_echo_plugin", None)

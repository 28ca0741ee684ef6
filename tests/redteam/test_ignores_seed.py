"""Red team: the ignores-seed flag evaded (issue 20, class 6), through the real loop.

A candidate that pins its own random seed gets the same training run whatever harness seed
it is given; with a tiny seed-dependent wobble added, its runs are no longer identical, so
an "are they identical" check misses it, and its near-constant runs, pooled into the noise
estimate, lower the bar it is judged against. Each attack here pins the seed, adds a
wobble, and makes a real change (so its first run shows a gain and it gets judged on more
than one seed); it must end flagged, never kept. The pooling half is checked on the
supervisor's `_noise_groups` directly: the candidate's runs (and those of earlier tries of
the same change) never reach the noise estimate it is judged against.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from redteam_lab import Attack, Lab, check, run_attacks

from rsilab.config import JudgeSpec
from rsilab.loop.supervisor import Supervisor
from rsilab.paths import bundled_tasks_dir
from rsilab.record.ledger import Ledger
from rsilab.results import Metric, RunResult, Status, Verdict
from rsilab.workspace import Workspace, init_workspace

TOY = (bundled_tasks_dir() / "toy" / "train.py").read_text()
# No evaluator noise: the run-to-run noise is the training's own (sd ~0.04 on ~0.53).
OVERRIDES: list[tuple[str, object]] = [
    ("budget", 2),
    ("overhead", 4),
    ("memory_gb", 0.5),
    ("env.TOY_NOISE", "0"),
]


def pinned(wobble: float) -> str:
    """train.py with its seed pinned to 0, a better L2, and weights scaled by 1 plus a
    harness-seeded wobble of relative size `wobble` (so the metric moves by ~wobble)."""
    code = TOY.replace("np.random.default_rng(harness.seed())", "np.random.default_rng(0)")
    code = code.replace("L2 = 0.1 ", "L2 = 0.01")
    code = code.replace(
        'np.save(harness.artifact_dir() / "weights.npy", w)',
        f"w = w * (1 + {wobble!r} * np.random.default_rng(harness.seed()).normal())\n"
        'np.save(harness.artifact_dir() / "weights.npy", w)',
    )
    assert code.count(f"{wobble!r}") == 1 and "default_rng(0)" in code
    return code


ATTACKS = [
    Attack(
        "pinned seed plus a 1e-4 wobble",
        {"train.py": pinned(1e-4)},
        ("invalid",),
        r"barely moved under \d different harness seeds.*ignores-seed",
    ),
    Attack(
        "pinned seed plus a 1e-3 wobble",
        {"train.py": pinned(1e-3)},
        ("invalid",),
        r"(barely moved|did not move) under \d different harness seeds.*ignores-seed",
    ),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("redteam-seed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSILAB_HOME", str(root / "rsilab-home"))
        (root / "rsilab-home").mkdir()
        init_workspace(root / "ws", bundled_tasks_dir() / "toy", "rt")
        yield run_attacks(Workspace(root / "ws", "rt"), list(ATTACKS), overrides=OVERRIDES)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.cls)
def test_a_pinned_seed_with_a_wobble_is_flagged(lab: Lab, attack: Attack) -> None:
    out = check(lab, attack)
    values = [r.metric for r in out.runs if r.ok and r.metric is not None]
    assert len({r.seed for r in out.runs}) >= 2 and len(set(values)) >= 2  # not identical
    assert out.experiment.status != Verdict.KEEP.value


def _ledger_with_tries(path: Path) -> tuple[Ledger, dict[str, int]]:
    """A baseline (3 runs and a recheck), a change that won and was re-applied as a second
    experiment (whose runs are near-identical: a pinned seed), and an unrelated discard."""
    led = Ledger(path)
    ids: dict[str, int] = {}

    def exp(name: str, verdict: Verdict, values: list[float], **lineage: int | None) -> None:
        i = led.add_experiment(parent=None, commit=name, proposer="t", description=name, diff="")
        for k, v in enumerate(values):
            led.add_run(i, RunResult(Status.OK, seed=k, metric=v))
        led.add_decision(i, verdict=verdict, reason=name)
        led.add_lineage(i, parent=lineage.get("parent"), merged_onto=lineage.get("merged_onto"))
        ids[name] = i

    exp("baseline", Verdict.KEEP, [1.0, 1.04, 0.96])
    led.add_run(ids["baseline"], RunResult(Status.OK, seed=9, metric=1.01), kind="recheck")
    exp("first try", Verdict.DISCARD, [0.9, 0.900001])
    exp("re-applied", Verdict.DISCARD, [0.9, 0.900002], parent=ids["first try"],
        merged_onto=ids["baseline"])  # fmt: skip
    exp("again", Verdict.KEEP, [0.9, 0.900003], parent=ids["re-applied"],
        merged_onto=ids["baseline"])  # fmt: skip
    exp("other", Verdict.DISCARD, [1.1, 1.13])
    return led, ids


def test_a_candidates_own_runs_never_reach_its_noise_estimate(tmp_path: Path) -> None:
    led, ids = _ledger_with_tries(tmp_path / "ledger.db")
    sup = SimpleNamespace(
        ledger=led, metric=Metric(), task=SimpleNamespace(judge=JudgeSpec(noise_window=0))
    )
    sup._tries = lambda i: Supervisor._tries(sup, i)  # type: ignore[arg-type]
    # Judging the third try of the change: its own runs, the earlier tries' and the
    # incumbent's (trials and rechecks: the judge has those as the incumbent's) stay out.
    ev = Supervisor._evidence(sup, ids["again"], ids["baseline"])  # type: ignore[arg-type]
    assert ev.noise_groups == [[1.1, 1.13]]
    assert ev.incumbent == [1.0, 1.04, 0.96, 1.01] and ev.seeds == [0, 1, 2, 9]
    # For an unrelated candidate the tries are ordinary session noise.
    other = Supervisor._evidence(sup, ids["other"], ids["baseline"])  # type: ignore[arg-type]
    assert sorted(g[1] for g in other.noise_groups) == [0.900001, 0.900002, 0.900003]

"""The stop rules of one `rsilab run`: which limit is met, and the line the run ends with."""

from __future__ import annotations

from rsilab.loop.limits import Limits, reached


def test_no_limit_is_met_until_one_is() -> None:
    costs = {"cost_usd": 0.5, "tokens_in": 100.0, "tokens_out": 50.0}
    assert reached(Limits(), started=10_000, elapsed_s=1e9, costs=costs) is None
    both = Limits(max_experiments=4, hours=1.0)
    assert reached(both, started=3, elapsed_s=3599.0, costs={}) is None
    assert reached(both, started=4, elapsed_s=0.0, costs={}) == "reached --max-experiments 4"
    assert reached(both, started=0, elapsed_s=3600.0, costs={}) == "reached --hours 1.0"


def test_cost_and_tokens_count_the_whole_workspace() -> None:
    assert reached(Limits(max_cost=1.0), started=0, elapsed_s=0.0, costs={"cost_usd": 0.99}) is None
    assert (
        reached(Limits(max_cost=1.0), started=0, elapsed_s=0.0, costs={"cost_usd": 1.25})
        == "reached --max-cost 1.0 (spent $1.2500)"
    )
    tokens = {"tokens_in": 600.0, "tokens_out": 400.0}
    assert reached(Limits(max_tokens=1001), started=0, elapsed_s=0.0, costs=tokens) is None
    assert (
        reached(Limits(max_tokens=1000), started=0, elapsed_s=0.0, costs=tokens)
        == "reached --max-tokens 1000 (spent 1000)"
    )


def test_zero_experiments_means_the_baseline_only() -> None:
    assert reached(Limits(max_experiments=0), started=0, elapsed_s=0.0, costs={}) == (
        "baseline measured; no experiments asked for"
    )

"""Stop rules of one `rsilab run`. Owns: `Limits` (what the user asked for: experiments,
hours, cost, tokens) and `reached`, the one place that says when one is met.

A pure function of its inputs: the supervisor passes what it counted (experiments started in
this invocation, seconds since it started) and the workspace's costs from the ledger. The
stop file, Ctrl-C and the dashboard's stop are the supervisor's (they are requests, not
limits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Stop rules of one `rsilab run` invocation (a stop file and Ctrl-C always work)."""

    max_experiments: int | None = None  # new experiments in this invocation
    hours: float | None = None
    max_cost: float | None = None  # USD spent on proposals, whole workspace
    max_tokens: int | None = None  # tokens in + out spent on proposals, whole workspace


def reached(
    limits: Limits, *, started: int, elapsed_s: float, costs: Mapping[str, float]
) -> str | None:
    """Which limit is met, as the line `rsilab run` ends with; None while none is.

    `started`: experiments started in this invocation; `elapsed_s`: seconds since it began;
    `costs`: the workspace's cost totals by kind (`cost_usd`, `tokens_in`, `tokens_out`).
    """
    if limits.max_experiments == 0:
        return "baseline measured; no experiments asked for"
    if limits.max_experiments is not None and started >= limits.max_experiments:
        return f"reached --max-experiments {limits.max_experiments}"
    if limits.hours is not None and elapsed_s >= limits.hours * 3600:
        return f"reached --hours {limits.hours}"
    if limits.max_cost is not None and costs.get("cost_usd", 0.0) >= limits.max_cost:
        return f"reached --max-cost {limits.max_cost} (spent ${costs['cost_usd']:.4f})"
    tokens = costs.get("tokens_in", 0.0) + costs.get("tokens_out", 0.0)
    if limits.max_tokens is not None and tokens >= limits.max_tokens:
        return f"reached --max-tokens {limits.max_tokens} (spent {tokens:.0f})"
    return None

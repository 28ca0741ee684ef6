"""Seeds of foreign code. Owns: telling, at the baseline, that a task's runs do not move with
the run's seed, what that does to the judging, and what to do about it.

Code that seeds itself (a fixed `torch.manual_seed(0)`) gives the same value under every
harness seed, so the baseline measures no noise at all. The judge then decides as for a
deterministic task (a direct comparison, `judge.min_effect` the only margin), which is right
when the training really is deterministic and wrong when it has noise the seed does not
control (data-loader order, nondeterministic GPU kernels, a shuffled split). This module
only says so, once, where the baseline is reported; the judging itself is `rsilab.loop.judge`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rsilab.config import JudgeSpec
from rsilab.results import RunResult

REL_TOL = 1e-12  # values this close (relative) count as the same (as in the judge)


def baseline_seed_note(runs: Sequence[RunResult], metric: str, spec: JudgeSpec) -> str | None:
    """One line when the baseline's ok runs gave the same value under different seeds: what
    it means for the judging and what to do; None when they moved (or there is one seed)."""
    ok = [r for r in runs if r.ok and r.metric is not None]
    seeds = {r.seed for r in ok}
    if len(ok) < 2 or len(seeds) < 2:
        return None
    values = [float(r.metric) for r in ok if r.metric is not None]
    scale = max(abs(v) for v in values) or 1.0
    if max(values) - min(values) > REL_TOL * scale:
        return None
    prior = (
        f"the declared judge.noise_sd {spec.noise_sd:g} is the only noise estimate"
        if spec.noise_sd > 0
        else f"it is judged as deterministic: any gain over judge.min_effect ({spec.min_effect:g}) "
        "is kept, noise the seed does not control (data order, GPU kernels) is taken for an "
        "effect, and a candidate that ignores the seed cannot be told apart"
    )
    return (
        f"warning: the baseline's {len(ok)} runs gave the same {metric} {values[0]:.6g} under "
        f"{len(seeds)} different seeds: the training does not use the run's seed "
        f"(RSILAB_SEED, harness.seed()); {prior}. To fix: seed your RNGs from RSILAB_SEED, or "
        "declare the run-to-run noise you know as judge.noise_sd (or a judge.min_effect)"
    )

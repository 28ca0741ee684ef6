"""What the judge is shown. Owns: the noise prior a session starts from, which seeds a
candidate's runs use (the incumbent's, so that runs pair), which earlier experiments inform
the noise estimate, and the rule by which a re-check undoes a keep.

The rules are pure functions of figures, shared by the supervisor and
`benchmarks/acceptance_sim.py`, so the simulation measures the policy the program runs.
`Evidence.gather` and `since_recheck` read what they need from a ledger (never write it); `carried_prior` and
`carry_prior` read and write one small JSON file beside the data cache.

- **Prior** (`prior`): the noise a task declares (`judge.noise_sd`, `judge.noise_df`), else
  the pooled noise of earlier sessions of comparable settings on this machine
  (`carried_prior`), capped at `judge.noise_df` degrees of freedom so the session's own
  runs soon outweigh it. A session that has one starts at tens of df, not at the 2 of a
  3-run noise floor.
- **Paired seeds** (`candidate_seed`): each run of a candidate uses a seed of the
  incumbent's that it has not used yet; when there is none left and the incumbent has
  outlived PARTNER_AFTER experiments (`wants_partner`), the incumbent runs first under a
  fresh seed (a partner run, recorded as a re-check of the incumbent and reused by every
  later candidate); otherwise the run takes a fresh seed, unpaired. Under one seed two configurations share their data order and
  (when shapes agree) their initialisation, so the difference of a pair is much less noisy
  than that of two independent runs, and an inert change gives the identical value (the
  judge's "inert" rule). The incumbent's partner runs are fresh measurements of it, which
  also wear down the winner's curse of the runs that got it kept.
- **Recent noise** (`recent`): the noise groups of the last `judge.noise_window` judged
  experiments only: the noise of a tuned script can differ several times from that of the
  defaults, so old groups would misstate the bar.
- **Undoing a keep** (`undo`): after a re-check, an incumbent whose mean is no better than
  its parent's (over all their runs) is reverted to the parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.config import JudgeSpec
from rsilab.fsio import atomic_write
from rsilab.loop.judge import Noise, _pool, paired_differences
from rsilab.record.ledger import Ledger
from rsilab.results import Metric, Verdict

__all__ = [
    "Evidence",
    "candidate_seed",
    "carried_prior",
    "carry_prior",
    "prior",
    "prior_key",
    "recent",
    "since_recheck",
    "undo",
    "wants_partner",
]


def prior(spec: JudgeSpec, carried: Noise | None = None) -> Noise | None:
    """The noise prior of a session: the task's declared `judge.noise_sd` (with
    `judge.noise_df` df), else `carried` capped at `judge.noise_df` df; None without either
    (or with `judge.noise_df` = 0: no prior)."""
    if spec.noise_df <= 0:
        return None
    if spec.noise_sd > 0:
        return Noise(spec.noise_sd**2, spec.noise_df)
    if carried is not None and carried.df > 0 and carried.var > 0:
        return Noise(carried.var, min(carried.df, spec.noise_df))
    return None


def candidate_seed(incumbent_seeds: Sequence[int], used: Sequence[int]) -> int | None:
    """The seed of a candidate's next run: the first of the incumbent's seeds that the
    candidate has not used yet (`used`); None when it has used them all: then the incumbent
    runs first under a fresh seed (its partner run) and the candidate follows under it."""
    taken = set(used)
    return next((s for s in incumbent_seeds if s not in taken), None)


# Partner runs are worth their cost for an incumbent that lasts: one that has already
# outlived this many experiments (from an untuned script a new incumbent is often replaced
# within a few, and runs spent re-measuring it are experiments not run).
PARTNER_AFTER = 3


def wants_partner(judged_against: int) -> bool:
    """Whether the incumbent should run under a candidate's next seed when it has no unused
    one left (else that run takes a fresh seed, unpaired): after it has been the incumbent
    of `judged_against` >= PARTNER_AFTER decided experiments."""
    return judged_against >= PARTNER_AFTER


def recent(groups: Sequence[Sequence[float]], window: int) -> list[Sequence[float]]:
    """The last `window` groups (in the order given: oldest first); all of them for 0."""
    return list(groups[-window:]) if window > 0 else list(groups)


def undo(incumbent: Sequence[float], parent: Sequence[float], metric: Metric) -> str | None:
    """Why the incumbent should give way to its parent after a re-check, or None: its mean
    over every run so far is no better than the parent's."""
    if not incumbent or not parent:
        return None
    mine, theirs = statistics.fmean(incumbent), statistics.fmean(parent)
    if metric.gain(mine, theirs) > 0:
        return None
    return (
        f"re-checked: its mean {mine:.4f} over {len(incumbent)} runs is no better than its "
        f"parent's {theirs:.4f} over {len(parent)}"
    )


def carried_prior(store: Path, key: str) -> Noise | None:
    """The noise recorded under `key` in `store` by earlier sessions; None when there is none
    or the file cannot be read (a prior is an optimisation, never a reason to stop)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        entry = json.loads(store.read_text())[key]
        noise = Noise(float(entry["var"]), int(entry["df"]))
        if noise.var > 0 and noise.df > 0:
            return noise
    return None


def prior_key(comparable: Mapping[str, Any], tree: str) -> str:
    """The key of a carried prior: the settings that give the metric its meaning and the
    git tree of the configuration measured (the noise of another script is another noise)."""
    blob = json.dumps({"settings": comparable, "tree": tree}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def carry_prior(
    store: Path, key: str, groups: Sequence[Sequence[float]], earlier: Noise | None = None
) -> Noise | None:
    """Record the pooled noise of `groups` (repeats of one configuration each) and of what
    was `earlier` carried under `key` in `store`; returns it (None, and nothing written, when
    they hold no df). Best effort: an unwritable store is left as it is."""
    var, df = _pool(groups, earlier)
    if not df or var <= 0:
        return None
    entries: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(store.read_text())
        entries = loaded if isinstance(loaded, dict) else {}
    entries[key] = {"var": var, "df": df}
    with contextlib.suppress(OSError):
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(store, json.dumps(entries, indent=1, sort_keys=True))
    return Noise(var, df)


def since_recheck(ledger: Ledger) -> int:
    """Experiments decided since the incumbent was last re-checked (or since the session's
    first experiment): the count `judge.recheck_every` is compared with, read from the
    ledger so that it survives a stop and a resume."""
    rechecked = max((r.created_at for r in ledger.runs() if r.kind == "recheck"), default=0.0)
    return sum(
        1
        for e in ledger.experiments()
        if e.kind != "baseline" and e.decided and (e.decided_at or 0.0) > rechecked
    )


@dataclass(frozen=True)
class Evidence:
    """What the ledger holds for judging one candidate against one incumbent."""

    incumbent: list[float]  # the incumbent's ok values (trials and re-checks), in run order
    seeds: list[int]  # the harness seed of each
    noise_groups: list[list[float]]  # other judged experiments' ok values, oldest first
    paired_groups: list[list[float]]  # their differences to their incumbents, shared seeds

    @classmethod
    def gather(
        cls, ledger: Ledger, incumbent: int, exclude: set[int], metric: Metric, window: int
    ) -> Evidence:
        """From `ledger`: the groups of every judged (keep/discard) experiment with >= 2 ok
        values, but the incumbent and `exclude` (the candidate and its earlier tries), the
        last `window` of them (0: all). Crashed and invalid experiments are left out (a
        metric that ignores the seed would fake a low noise)."""
        runs: dict[int, list[tuple[int, float]]] = {}
        for r in ledger.runs():
            if r.ok and r.metric is not None:
                runs.setdefault(r.experiment_id, []).append((r.seed, r.metric))
        against = {
            e.experiment_id: e.merged_onto if e.merged_onto is not None else e.parent
            for e in ledger.lineage()
        }
        judged = [
            e.id
            for e in ledger.experiments()
            if e.status in (Verdict.KEEP.value, Verdict.DISCARD.value)
            and e.id != incumbent
            and e.id not in exclude
            and len(runs.get(e.id, [])) >= 2
        ]
        noise, paired = [], []
        for e_id in judged:
            mine = runs[e_id]
            noise.append([v for _, v in mine])
            theirs = runs.get(against.get(e_id) or -1, [])
            diffs = paired_differences(mine, theirs, metric)
            if diffs is not None and len(diffs) >= 2:
                paired.append(diffs)
        inc = runs.get(incumbent, [])
        return cls(
            [v for _, v in inc],
            [s for s, _ in inc],
            [list(g) for g in recent(noise, window)],
            [list(g) for g in recent(paired, window)],
        )

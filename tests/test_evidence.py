"""What the judge is shown (rsilab.loop.evidence) and how it uses it (rsilab.loop.judge):
the noise prior, paired seeds and partner runs, inert changes, undoing a keep, the
re-check count across a resume. Pure rules on figures first, then the real loop on the
toy task (real git, SQLite and subprocesses)."""

from __future__ import annotations

from pathlib import Path

from loop_helpers import TOY_TRAIN, assert_consistent, make_ws, queue_knobs, queue_patch, supervise

from rsilab.config import JudgeSpec
from rsilab.loop import evidence
from rsilab.loop.judge import Noise, judge, keep_threshold, paired_differences
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.record.audit import audit
from rsilab.record.ledger import Ledger
from rsilab.results import Metric, RunResult, Status, Verdict
from rsilab.run.bench import Bench
from rsilab.workspace import open_workspace

MIN = Metric("loss", "min")


def runs(*pairs: tuple[int, float]) -> list[RunResult]:
    return [RunResult(Status.OK, seed, value) for seed, value in pairs]


# -- the rules ---------------------------------------------------------------------------------


def test_prior_declared_beats_carried_and_is_capped() -> None:
    carried = Noise(0.04, 50)
    assert evidence.prior(JudgeSpec(noise_sd=0.1, noise_df=8), carried) == Noise(0.1**2, 8)
    assert evidence.prior(JudgeSpec(noise_df=10), carried) == Noise(0.04, 10)
    assert evidence.prior(JudgeSpec(noise_df=0, noise_sd=0.1), carried) is None
    assert evidence.prior(JudgeSpec(), None) is None


def test_carried_prior_round_trip_pools_sessions_and_survives_a_bad_store(tmp_path: Path) -> None:
    store = tmp_path / "noise.json"
    assert evidence.carried_prior(store, "k") is None  # nothing yet
    first = evidence.carry_prior(store, "k", [[1.0, 1.2, 1.1]])
    assert first is not None and first.df == 2
    again = evidence.carry_prior(store, "k", [[2.0, 2.2, 2.1]], first)
    assert again is not None and again.df == 4
    assert evidence.carried_prior(store, "k") == again
    assert evidence.carried_prior(store, "other") is None
    store.write_text("{not json")
    assert evidence.carried_prior(store, "k") is None  # an optimisation, never a stop
    assert evidence.carry_prior(store, "k", [[1.0, 1.0]]) is None  # no variance: nothing written


def test_a_candidate_uses_the_incumbents_unused_seeds_then_needs_a_partner() -> None:
    assert evidence.candidate_seed([7, 8, 9], []) == 7
    assert evidence.candidate_seed([7, 8, 9], [7]) == 8
    assert evidence.candidate_seed([7, 8], [7, 8]) is None


def test_undo_when_the_incumbent_is_no_better_than_its_parent() -> None:
    assert evidence.undo([1.0, 1.1], [1.2, 1.3], MIN) is None
    why = evidence.undo([1.0, 1.6], [1.2, 1.3], MIN)
    assert why is not None and "no better than its parent" in why


def test_recent_keeps_the_newest_groups() -> None:
    groups = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert evidence.recent(groups, 2) == groups[1:]
    assert evidence.recent(groups, 0) == groups


def test_paired_differences_need_a_partner_for_every_run() -> None:
    inc = [(1, 3.0), (2, 3.2)]
    assert paired_differences([(1, 2.9), (2, 3.0)], inc, MIN) == [3.0 - 2.9, 3.2 - 3.0]
    assert paired_differences([(1, 2.9), (5, 3.0)], inc, MIN) is None
    assert paired_differences([(1, 3.0)], inc, MIN) == [0.0]


def test_identical_values_under_the_same_seeds_are_an_inert_change() -> None:
    spec = JudgeSpec()
    j = judge(runs((1, 3.0)), [3.0, 3.1, 2.9], MIN, spec, incumbent_seeds=[1, 2, 3])
    assert j.verdict is Verdict.DISCARD and "inert" in j.flags
    # Unpaired (no seeds given), the same value is just no gain.
    j = judge(runs((1, 3.0)), [3.0, 3.1, 2.9], MIN, spec)
    assert j.verdict is Verdict.DISCARD and "inert" not in j.flags
    # Fewer lines and identical: the simpler code is kept.
    j = judge(runs((1, 3.0)), [3.0, 3.1], MIN, spec, incumbent_seeds=[1, 2],
              candidate_size=9, incumbent_size=10)  # fmt: skip
    assert j.verdict is Verdict.KEEP


def test_a_prior_lets_a_one_run_incumbent_be_judged_and_sets_a_finite_bar() -> None:
    spec = JudgeSpec()
    prior = Noise(0.01**2, 10)
    # Without a prior a 1-run incumbent has no noise estimate: a first run never decides.
    assert judge(runs((1, 2.5)), [3.0], MIN, spec).verdict is Verdict.MORE
    j = judge(runs((1, 2.5)), [3.0], MIN, spec, prior=prior, min_runs=1)
    assert j.verdict is Verdict.KEEP
    assert keep_threshold([3.0], MIN, spec, 1, min_runs=1) is None
    bar = keep_threshold([3.0], MIN, spec, 1, min_runs=1, prior=prior)
    assert bar is not None and 0.01 < bar < 0.1


def test_the_paired_test_is_sharper_than_the_unpaired_one() -> None:
    """A gain of 0.02 under shared seeds whose differences spread by 0.005, against a run
    noise of 0.03: unpaired it cannot be told from noise, paired it is kept."""
    spec = JudgeSpec(max_runs=3)
    inc, seeds = [3.00, 3.05, 2.95], [1, 2, 3]
    cand = runs((1, 2.98), (2, 3.031), (3, 2.928))
    # Earlier experiments' differences under shared seeds: 8 df of spread ~0.005.
    paired_groups = [[0.010, 0.015, 0.005], [-0.02, -0.025, -0.015], [0.0, 0.004, -0.004, 0.002],
                     [0.03, 0.036, 0.027]]  # fmt: skip
    unpaired = judge(cand, inc, MIN, spec, noise_groups=[[3.1, 3.14, 3.06]])
    paired = judge(cand, inc, MIN, spec, noise_groups=[[3.1, 3.14, 3.06]],
                   incumbent_seeds=seeds, paired_groups=paired_groups)  # fmt: skip
    assert unpaired.verdict is Verdict.DISCARD
    assert paired.verdict is Verdict.KEEP and paired.ci_low is not None and paired.ci_low > 0


# -- the loop ----------------------------------------------------------------------------------


def test_a_candidate_runs_on_the_incumbents_seeds_and_an_inert_patch_is_seen_at_once(
    tmp_path: Path,
) -> None:
    ws_dir = make_ws(tmp_path)
    queue_patch(ws_dir, "a", TOY_TRAIN, "# heavy-ball momentum", "# heavy-ball momentum (v2)")
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    _, ledger = supervise(ws_dir)
    base, inert, gain = ledger.experiments()
    base_seeds = [r.seed for r in ledger.runs(base.id)]
    assert [r.seed for r in ledger.runs(inert.id)] == base_seeds[:1]  # one run, paired
    assert inert.status == Verdict.DISCARD and "[inert]" in inert.reason
    # Its runs take the baseline's seeds while there are any (a 4th would be fresh: no
    # partner run for an incumbent that has not outlived evidence.PARTNER_AFTER experiments).
    assert [r.seed for r in ledger.runs(gain.id)][:3] == base_seeds[: len(ledger.runs(gain.id))][:3]
    assert gain.status == Verdict.KEEP
    assert_consistent(ws_dir)


def test_a_carried_prior_shortens_the_next_baseline_and_partner_runs_pair_the_rest(
    tmp_path: Path,
) -> None:
    first = make_ws(tmp_path / "one")
    supervise(first)  # the baseline is carried in RSILAB_HOME for comparable sessions
    second = make_ws(tmp_path / "two")
    # Three changes that do nothing (one run each: inert), so the baseline has outlived
    # evidence.PARTNER_AFTER experiments; then a gain too small for one run (a fifth of
    # the noise floor's sd): its confirmation runs need seeds the 1-run baseline does not
    # have, so the baseline gets partner runs.
    for i in range(evidence.PARTNER_AFTER):
        queue_patch(second, f"a{i}", TOY_TRAIN, "# heavy-ball momentum", f"# momentum ({i})")
    queue_knobs(second, "c", "a little less weight decay", L2=0.09)
    _, ledger = supervise(second, ("judge.max_runs", 3))
    base, *inert, cand = ledger.experiments()
    assert all("[inert]" in e.reason for e in inert)
    assert ledger.get_setting("noise_prior")["df"] == 2  # the first session's 3 runs
    trials = [r for r in ledger.runs(base.id) if r.kind == "trial"]
    partners = [r for r in ledger.runs(base.id) if r.kind == "recheck"]
    assert len(trials) == 1  # judge.prior_runs
    cand_seeds = [r.seed for r in ledger.runs(cand.id)]
    assert len(cand_seeds) >= 2 and cand_seeds[0] == trials[0].seed
    assert [r.seed for r in partners] == cand_seeds[1:]  # each later run has its partner
    assert not audit(open_workspace(second), ledger).problems


def test_a_recheck_that_finds_the_keep_no_better_undoes_it(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    supervise(ws_dir)
    ws = open_workspace(ws_dir)
    ledger = Ledger(ws.ledger_path)
    base, kept = ledger.experiments()
    assert ledger.incumbent() == kept and ws.incumbent_commit() == kept.commit
    # The incumbent re-measured far worse than its parent (as a run that was lucky would).
    worse = RunResult(Status.OK, 12345, 100.0, evaluation={"sealed": True})
    ledger.add_run(kept.id, worse, kind="recheck")
    sup = Supervisor(ws, ledger, Bench(ws.load_task()), [create("queue", queue_dir=ws.queue_dir)])
    sup._undo_if_worse(kept.id)
    inc = ledger.incumbent()
    assert inc is not None and inc.id == base.id
    assert ws.incumbent_commit() == base.commit
    undone = ledger.experiment(kept.id)
    assert undone.status == Verdict.DISCARD and undone.reason.startswith("undone: re-checked")
    assert any(e.kind == "undo" for e in ledger.events())
    # Ledger and git agree (the made-up re-check run itself has no evaluator files).
    fake = f"experiment {kept.id} run {ledger.runs(kept.id)[-1].id}:"
    assert [p for p in audit(ws, ledger).problems if not p.startswith(fake)] == []
    # A resumed run carries on from the parent.
    queue_knobs(ws_dir, "c", "momentum", MOMENTUM=0.5)
    supervise(ws_dir)
    assert ledger.experiments()[-1].parent == base.commit


def test_the_recheck_count_is_read_from_the_ledger_so_it_survives_a_resume(
    tmp_path: Path,
) -> None:
    ws_dir = make_ws(tmp_path)
    for i, lr in enumerate((0.02, 0.03)):
        queue_knobs(ws_dir, f"k{i}", f"lr {lr}", LR=lr)
    _, ledger = supervise(ws_dir, ("judge.recheck_every", 3))
    assert evidence.since_recheck(ledger) == 2
    # A new process (a resume) starts from the ledger's count: one more experiment re-checks.
    queue_knobs(ws_dir, "k2", "lr 0.04", LR=0.04)
    queue_knobs(ws_dir, "k3", "lr 0.05", LR=0.05)
    ws = open_workspace(ws_dir)
    sup = Supervisor(
        ws,
        ledger,
        Bench(ws.load_task([("judge.recheck_every", 3)])),
        [create("queue", queue_dir=ws.queue_dir)],
        limits=Limits(max_experiments=2),
    )
    assert sup._since_recheck == 2
    sup.run()
    assert any(r.kind == "recheck" for r in ledger.runs())  # due after one more experiment


def test_partner_runs_wait_until_the_incumbent_has_lasted() -> None:
    assert not evidence.wants_partner(evidence.PARTNER_AFTER - 1)
    assert evidence.wants_partner(evidence.PARTNER_AFTER)


def test_rsilab_baseline_with_a_carried_prior_runs_once_and_states_the_bar(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from rsilab.cli import main

    cli = CliRunner()
    first = cli.invoke(main, ["baseline", str(tmp_path / "one"), "--task", "toy"])
    assert first.exit_code == 0, first.output
    out = cli.invoke(main, ["baseline", str(tmp_path / "two"), "--task", "toy"])
    assert out.exit_code == 0, out.output
    assert "over 1 seed (" in out.output
    assert "with the noise prior of earlier sessions (2 df)" in out.output
    assert "on its first run (knob values only)" in out.output

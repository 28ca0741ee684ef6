"""Model collapse: the study. Owns `rsilab collapse` (the guard is rsilab.provenance).

A model trained on what models generated degrades generation after generation (Shumailov
et al., Nature 2024); keeping the real data and accumulating the synthetic data avoids it
(Gerstgrasser et al., 2024). This package lets a user see it on a task's own data:

    study.py    the generation loop: train (runner, sealed evaluator on real val.bin),
                sample (the frozen `rsilab.harness.sample` process), measure, record;
                resume after any stop
    mixes.py    the data policies: replace, accumulate, mix:p
    metrics.py  sample-side metrics: entropies, distinct-n, rare-tail survival, repetition
    report.py   mean and 95% bands over seeds, the table, CSV/JSON, the plot
    check.py    `rsilab collapse --check`: a short smoke test of the whole pipeline

    from rsilab.studies.collapse import open_study, write_report
    study = open_study(Path("study"), task_name="gpt", policies="replace,accumulate", seeds=2)
    rows = study.run()
    print(write_report(study, rows))
"""

from __future__ import annotations

from typing import Any

from rsilab.studies.collapse.study import Study, open_study


def write_report(study: Study, rows: list[dict[str, Any]]) -> str:
    """Write the study's CSV/JSON/PNG into its folder and return the table."""
    from rsilab.record.ledger import Ledger
    from rsilab.studies.collapse.report import summarize, table, write_all

    with Ledger(study.ledger_path) as ledger:
        settings = ledger.get_setting("collapse") or {}
    labels = [p.label for p in study.settings.policies]
    summary = summarize(rows, labels)
    reference = study.reference_rows()
    write_all(study.out, rows, summary, reference, settings)
    return table(summary, reference)


__all__ = ["Study", "open_study", "write_report"]

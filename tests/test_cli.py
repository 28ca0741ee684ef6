"""The command line: one-line errors for user mistakes, status, report, results.tsv round trip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsilab.config import resolve_task_dir


def rsilab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsilab.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def broken_task(tmp_path: Path, edit: str) -> Path:
    import shutil

    task = tmp_path / "task"
    shutil.copytree(resolve_task_dir("toy"), task)
    toml = task / "rsilab.toml"
    text = toml.read_text()
    old, _, new = edit.partition("=>")
    toml.write_text(text.replace(old, new) if old else text + new)
    return task


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("=>\nbogus = 1\n", "unknown key 'judge.bogus'"),
        ('name = "toy"=>nme = "toy"', "unknown key 'nme'"),
        ('budget = 10=>budget = "ten"', "key 'budget' must be a number"),
        ('editable = ["train.py"]=>editable = ["nope.py"]', "no file matches 'nope.py'"),
        ('name = "toy"=>name = ', "invalid TOML"),
        ('direction = "min"=>direction = "down"', "key 'metric.direction' must be one of"),
        (
            "max_runs = 4=>max_runs = 4\nknob_min_runs = 0",
            "key 'judge.knob_min_runs' must be >= 1, got 0",
        ),
        (
            "threads = 1=>threads = 1\ngpu_memory_gb = -8",
            "key 'gpu_memory_gb' must be >= 0, got -8",
        ),
    ],
)
def test_malformed_toml_is_a_one_line_error(tmp_path: Path, edit: str, expected: str) -> None:
    task = broken_task(tmp_path, edit)
    out = rsilab("train", "--task", str(task), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "rsilab.toml" in lines[0] and expected in lines[0]
    assert "Traceback" not in out.stderr


def test_bad_override_is_a_one_line_error(tmp_path: Path) -> None:
    out = rsilab("train", "--task", "toy", "--set", "judge.alpha=2", cwd=tmp_path)
    assert (
        out.returncode == 2
        and "judge.alpha" in out.stderr
        and len(out.stderr.strip().splitlines()) == 1
    )
    out = rsilab("train", "--task", "nosuchtask", cwd=tmp_path)
    assert out.returncode == 2 and "nosuchtask" in out.stderr


def test_train_prints_an_honest_summary(tmp_path: Path) -> None:
    out = rsilab("train", "--task", "toy", "--seed", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "status:            ok" in out.stdout
    assert "val_loss:" in out.stdout and "sealed evaluator" in out.stdout


def test_trains_started_in_the_same_second_get_their_own_run_folders(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "rsilab.cli", "train", "--task", "toy"]
    procs = [
        subprocess.Popen(
            [*cmd, "--seed", str(i)],
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = {
        line.split()[-1] for out in outs for line in out.splitlines() if line.startswith("log:")
    }
    assert len(logs) == 2 and all(Path(log).is_file() for log in logs)


def test_run_status_report_and_tsv_round_trip(tmp_path: Path) -> None:
    out = rsilab("run", "lab", "--task", "toy", "--max-experiments", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopped: reached --max-experiments 3" in out.stdout
    status = rsilab("status", "lab", cwd=tmp_path)
    assert status.returncode == 0 and "baseline (keep) and 3 experiments" in status.stdout
    assert re.search(
        r"^time: \d{4}-\d\d-\d\d \d\d:\d\d -> (\d{4}-\d\d-\d\d )?\d\d:\d\d \(\d+ min, [\d.]+ experiments/h\)$",
        status.stdout,
        re.MULTILINE,
    ), status.stdout
    rep = rsilab("report", "lab", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    png = tmp_path / "lab" / "progress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tsv = (tmp_path / "lab" / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tval_loss\tmemory_gb\tstatus\tdescription"
    assert len(tsv) == 5 and tsv[1].endswith("\tkeep\tbaseline")
    # The TSV alone (autoresearch's format) is enough to redraw the chart.
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "results.tsv"
    copy.write_text("\n".join(tsv) + "\n")
    rep2 = rsilab("report", "--from-tsv", str(copy), cwd=tmp_path)
    assert rep2.returncode == 0, rep2.stderr
    assert (tmp_path / "elsewhere" / "progress.png").stat().st_size > 1000
    from rsilab.report.progress import read_results_tsv

    metric, points = read_results_tsv(copy)
    assert metric == "val_loss" and len(points) == 4
    assert [p.status for p in points][0] == "keep"
    rows = [line.split("\t") for line in tsv[1:]]
    assert [round(p.metric or 0.0, 6) for p in points] == [float(r[1]) for r in rows]


def test_baseline_measures_the_noise_floor_and_run_goes_on_from_it(tmp_path: Path) -> None:
    out = rsilab("baseline", "lab", "--task", "toy", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "baseline run 1/3" in out.stdout and "stopped: baseline measured" in out.stdout
    from rsilab.record.ledger import Ledger

    with Ledger(tmp_path / "lab" / ".rsilab" / "ledger.db") as ledger:
        exps, values = ledger.experiments(), ledger.incumbent_values()
    assert len(exps) == 1 and len(values) == 3  # the baseline only, under judge.noise_runs seeds
    lines = out.stdout.splitlines()
    mean, sd = sum(values) / 3, float(np.std(values, ddof=1))
    assert f"baseline val_loss {mean:.4f}, sd {sd:.4f} over 3 seeds" in out.stdout
    bar = next(line for line in lines if line.startswith("to be kept"))
    from rsilab.config import JudgeSpec
    from rsilab.loop.judge import keep_threshold
    from rsilab.results import Metric

    first = keep_threshold(values, Metric("val_loss"), JudgeSpec(), 1, min_runs=1)
    assert (
        first is not None
        and f"beat it by {first:.4f} ({first / sd:.1f} sd) on its first run" in bar
    )
    assert "over 4 runs (judge.max_runs)" in bar
    # The live view says the same when the baseline lands.
    assert f"a knob change that beats it by {first:.4g} is kept on its first run" in out.stdout
    # Asked again, it only reports; `rsilab run` then researches from the same baseline.
    again = rsilab("baseline", "lab", cwd=tmp_path)
    assert again.returncode == 0 and bar in again.stdout and "baseline run" not in again.stdout
    out = rsilab("run", "lab", "--max-experiments", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    with Ledger(tmp_path / "lab" / ".rsilab" / "ledger.db") as ledger:
        # Not measured again: its trials stay 3 (a candidate's 4th run may add a partner
        # run of the baseline under its seed, a re-check).
        trials = [r for r in ledger.runs(exps[0].id) if r.kind == "trial"]
        assert len(ledger.experiments()) == 2 and len(trials) == 3


def test_an_incumbent_over_a_memory_cap_stops_the_run_and_keeps_the_baseline(
    tmp_path: Path,
) -> None:
    # A task whose train.py reports 3 GB of GPU memory, under a 2 GB cap: every candidate
    # of its size would be discarded, so `rsilab run` says so instead of researching.
    task = broken_task(tmp_path, "threads = 1=>threads = 1\ngpu_memory_gb = 2")
    train = task / "train.py"
    train.write_text(
        train.read_text().replace(
            "harness.print_summary({", 'harness.print_summary({"peak_memory_gb": 3.0, '
        )
    )
    out = rsilab("run", "lab", "--task", str(task), "--max-experiments", "1", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr
    assert (
        "peak GPU memory 3 GB over the 2 GB cap (gpu_memory_gb" in err[0]
        and "--set gpu_memory_gb=6" in err[0]
    )
    # The baseline's measurements are kept: with the cap raised the run goes on from them.
    out = rsilab("run", "lab", "--set", "gpu_memory_gb=4", "--max-experiments", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "baseline run" not in out.stdout
    status = rsilab("status", "lab", cwd=tmp_path)
    assert "baseline (keep) and 1 experiment" in status.stdout, status.stdout


def test_commands_outside_a_workspace_explain_themselves(tmp_path: Path) -> None:
    out = rsilab("status", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "rsilab init" in out.stderr and "Traceback" not in out.stderr
    out = rsilab("report", "--from-tsv", str(tmp_path / "missing.tsv"), cwd=tmp_path)
    assert out.returncode == 2 and "missing.tsv" in out.stderr


def _documented_commands() -> list[str]:
    """The rsilab command lines a newcomer copies: the code blocks of the README and of the
    docs site (docs/**/*.md), and `rsilab --help`."""
    import re

    from rsilab.cli import main

    root = Path(__file__).parents[1]
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    blocks = [
        block
        for page in pages
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    ]
    lines = [line for block in blocks for line in block.splitlines()]
    lines += re.findall(r"`(rsilab [^`]+)`", main.help or "")
    commands = []
    for line in lines:
        m = re.search(r"(?:^|\.venv/bin/|\s)rsilab ((?:[a-z]+)(?: [^#&|>]*)?)", line.split(" #")[0])
        if m:
            commands.append(m.group(1).strip())
    return commands


def test_every_documented_command_line_parses() -> None:
    """A copied example must not die with "No such option" or an unknown `--set` key (the
    top-level help once said `rsilab run --dir lab`, an option that never existed)."""
    import shlex

    import click

    from rsilab.cli import main
    from rsilab.config import ConfigError, load_task, parse_override

    commands = _documented_commands()
    assert len(commands) >= 15, commands  # the extraction itself still finds the examples
    for line in commands:
        name, *args = shlex.split(line)
        sub = main.commands.get(name)
        assert sub is not None, f"no command {name!r}: {line}"
        try:
            ctx = sub.make_context(name, args)  # parses and validates options; runs nothing
            load_task(
                resolve_task_dir("gpt"), [parse_override(o) for o in ctx.params.get("sets", ())]
            )
        except click.UsageError as e:
            pytest.fail(f"`rsilab {line}`: {e.format_message()}")
        except ConfigError as e:
            pytest.fail(f"`rsilab {line}`: {e}")

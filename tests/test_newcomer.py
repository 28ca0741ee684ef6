"""What a newcomer meets in the first hour at the terminal (issue 24): stop requests, sticky
`--set` overrides, bad options, report errors, what `rsilab run` prints, a closed stdout.
Real `rsilab` processes on the bundled toy task (a few seconds a run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rsilab.loop import controls
from rsilab.record.ledger import Ledger
from rsilab.workspace import open_workspace


def rsilab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsilab.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_stop_with_nothing_running_does_not_stop_the_next_run(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    made = rsilab("run", str(ws_dir), "--task", "toy", "--max-experiments", "0", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    ws = open_workspace(ws_dir)

    out = rsilab("stop", str(ws_dir), cwd=tmp_path)
    assert out.returncode == 0 and "nothing to stop" in out.stdout
    assert not ws.stop_file.exists()

    # Left over anyway (an older rsilab, a stop during the last seconds of a run) and from
    # the dashboard while nothing ran: both are cleared, with a word, and the run runs.
    ws.stop_file.write_text("")
    with Ledger(ws.ledger_path) as ledger:
        controls.post(ledger, "stop", {"reason": "posted while idle"}, source="dashboard@x")
    out = rsilab("run", str(ws_dir), "--max-experiments", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("cleared a stop request") == 2, out.stdout
    assert "stopped: reached --max-experiments 1" in out.stdout
    assert not ws.stop_file.exists()
    with Ledger(ws.ledger_path) as ledger:
        assert len(ledger.experiments()) == 2  # the baseline and one experiment


def test_set_adds_to_the_workspace_overrides_and_a_bad_one_is_blamed_on_set(
    tmp_path: Path,
) -> None:
    ws_dir = tmp_path / "ws"
    first = ("--set", "budget=5", "--max-experiments", "0")
    out = rsilab("run", str(ws_dir), "--task", "toy", *first, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = rsilab("run", str(ws_dir), "--set", "memory_gb=4", "--max-experiments", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr  # was: budget = 10.0 differs from this workspace's 5.0
    assert "using this workspace's overrides: budget=5 memory_gb=4" in out.stdout
    with Ledger(open_workspace(ws_dir).ledger_path) as ledger:
        assert ledger.get_setting("overrides") == ["budget=5", "memory_gb=4"]

    line = one_line_error(rsilab("run", str(ws_dir), "--set", "memory_gb=-2", cwd=tmp_path))
    assert line.startswith("rsilab: --set memory_gb=-2: "), line
    assert "rsilab.toml" not in line
    fresh = rsilab(
        "run", str(tmp_path / "new"), "--task", "toy", "--set", "budget=-1", cwd=tmp_path
    )
    line = one_line_error(fresh)
    assert line.startswith("rsilab: --set budget=-1: key 'budget' must be > 0"), line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--hours", "-1"], "'--hours': -1.0 is not in the range"),
        (["--hours", "0"], "'--hours': 0.0 is not in the range"),
        (["--max-experiments", "-3"], "'--max-experiments': -3 is not in the range"),
        (["--max-cost", "-1"], "'--max-cost'"),
        (["--tag", "-rf"], "tag '-rf': must not start with '-'"),
        (["--tag", ""], "--tag '': give a name"),
        (["--tag", "a" * 300], "(300 characters): use at most 100"),
    ],
)
def test_bad_limits_and_tags_are_refused(tmp_path: Path, args: list[str], expected: str) -> None:
    out = rsilab("run", str(tmp_path / "ws"), "--task", "toy", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr) < 400
    assert not (tmp_path / "ws").exists()


def test_report_out_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    from rsilab.report.progress import Point
    from rsilab.report.progress import tsv_ledger as make

    ws_dir = tmp_path / "ws"
    out = rsilab("init", str(ws_dir), "--task", "toy", "--tag", "t", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    make([Point(1, 1.0, "keep", "baseline")], open_workspace(ws_dir).ledger_path,
         metric="val_loss", direction="min").close()  # fmt: skip
    taken = tmp_path / "report.png"
    taken.write_text("not a folder")
    line = one_line_error(rsilab("report", str(ws_dir), "--out", str(taken), cwd=tmp_path))
    assert "--out" in line and "a file, not a folder" in line
    line = one_line_error(rsilab("report", str(ws_dir), "--out", str(taken / "sub"), cwd=tmp_path))
    assert "--out" in line and "cannot make that folder" in line
    assert rsilab("report", str(ws_dir), "--out", str(tmp_path / "r"), cwd=tmp_path).returncode == 0


TSV = """commit\tval_bpb\tmemory_gb\tstatus\tdescription
a1b2c3d\t0.997900\t44.0\tkeep\tbaseline
b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04
c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation
d4e5f6g\t0.000000\t0.0\tcrash\tdouble model width (OOM)
e5f6g7h\t0.990100\t44.1\tkeep\tmuon for matrices
"""


def test_report_from_tsv_summarises_and_writes_html(tmp_path: Path) -> None:
    tsv = tmp_path / "results.tsv"
    tsv.write_text(TSV)
    out = rsilab("report", "--from-tsv", str(tsv), "--html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 crash, 1 discard, 3 keep" in out.stdout
    assert "first kept 0.997900 -> best 0.990100 (row 5: muon for matrices" in out.stdout
    page = (tmp_path / "report.html").read_text()
    assert "muon for matrices" in page and "switch to GeLU activation" in page
    assert (tmp_path / "progress.png").stat().st_size > 1000


def test_what_run_prints_from_start_to_end(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    out = rsilab("run", str(ws_dir), "--task", "toy", "--max-experiments", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.count("stopped: reached --max-experiments 1") == 1, text
    assert "baseline (keep) and 1 experiment" in text  # not "2 experiments"
    assert "on queued" not in text and "baseline run 2/3 waits for a free slot" in text
    # Each baseline run is told as it ends (one slot: before the next one starts), not all
    # three at the end.
    ended = [text.index(f"baseline run {k}/3 ended: ok") for k in (1, 2, 3)]
    started = [text.index(f"baseline run {k}/3 on ") for k in (1, 2, 3)]
    assert min(ended) < max(started) and max(ended) < text.index("baseline val_loss"), text
    assert f"next: `rsilab report {ws_dir} --html`" in text


def test_preparing_data_is_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rsilab.cli.app import task_data

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    train, val = task_data(SimpleNamespace(data=str(corpus)))  # type: ignore[arg-type]
    assert train is not None and val is not None and train.is_file()
    said = capsys.readouterr().out
    assert "preparing the data local-" in said and "prepared local-" in said
    task_data(SimpleNamespace(data=str(corpus)))  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""  # cached: nothing to tell


def test_a_closed_stdout_does_not_interrupt_the_run(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    cmd = f"{sys.executable} -m rsilab.cli run {ws_dir} --task toy --max-experiments 2 | head -1"
    out = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("created workspace"), out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    ws = open_workspace(ws_dir)
    with Ledger(ws.ledger_path) as ledger:
        statuses = [e.status for e in ledger.experiments()]
    assert len(statuses) == 3 and "interrupted" not in statuses, statuses
    audit = rsilab("audit", str(ws_dir), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ws_dir, capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    assert len(worktrees.strip().splitlines()) == 1, worktrees


def test_the_readme_workspaces_stay_out_of_git_status() -> None:
    """The README's first command makes `lab/` in the checkout (and its overnight example
    `night/`): ignored, so `git status` of the checkout stays clean."""
    repo = Path(__file__).resolve().parent.parent
    for name in ("lab", "night"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{name}/results.tsv"], cwd=repo)
        assert ignored.returncode == 0, f"{name}/ is not ignored"

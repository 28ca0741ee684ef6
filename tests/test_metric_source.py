"""Where the metric comes from, for code that knows nothing of rsilab (issue 23, point 2):
`metric.pattern` over the training log (the last match counts, the result stays unsealed),
and the documented contract of a `script:` evaluator (its arguments, environment and files)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rsilab.config import TaskSpec, load_task
from rsilab.errors import ConfigError
from rsilab.results import Status
from rsilab.run import runner


def _task(root: Path, train: str, metric: str, evaluator: str = "in-process") -> TaskSpec:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(textwrap.dedent(train))
    (root / "rsilab.toml").write_text(
        textwrap.dedent(f"""\
        name = "foreign"
        editable = ["train.py"]
        frozen = ["rsilab.toml"]
        evaluator = "{evaluator}"
        data = "none"
        budget = 5
        overhead = 10
        [metric]
        name = "val_loss"
        """)
        + metric
    )
    return load_task(root)


LOOP = """\
import random
for epoch in range(3):
    print(f"epoch {epoch} train loss {3 - epoch:.3f}")
    print(f"epoch {epoch} val loss {2.0 / (epoch + 1):.4f}")
print("done")
"""


def _run(task: TaskSpec, tmp_path: Path) -> runner.RunResult:
    return runner.run(
        task, task.root, tmp_path / "run", seed=3, train_data=None, val_data=None, isolation="none"
    )


def test_the_last_match_of_the_pattern_is_the_metric_and_it_is_unsealed(tmp_path: Path) -> None:
    task = _task(tmp_path / "t", LOOP, "pattern = 'val loss ([0-9.]+)'\n")
    result = _run(task, tmp_path)
    assert result.status is Status.OK, result.reason
    assert result.metric == pytest.approx(2.0 / 3, abs=1e-4)  # the third epoch's, not the first
    assert result.evaluation["sealed"] is False
    assert result.summary["val_loss"] == result.metric


def test_without_a_group_the_whole_match_counts(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "t",
        'print("score=0.5")\nprint("score=0.25")\n',
        "pattern = '(?<=score=)[0-9.]+'\n",
    )
    assert _run(task, tmp_path).metric == 0.25


@pytest.mark.parametrize(
    ("train", "why"),
    [
        ('print("val loss: n/a")\n', "no line of the training log matches metric.pattern"),
        ('print("val loss 1.2.3")\n', "matched '1.2.3', which is not a number"),
        ('print("val loss nan")\n', "which is not finite"),
    ],
)
def test_no_usable_match_is_a_crash_that_says_why(tmp_path: Path, train: str, why: str) -> None:
    task = _task(tmp_path / "t", train, "pattern = 'val loss ([a-z0-9.]+)'\n")
    result = _run(task, tmp_path)
    assert result.status is Status.CRASH
    assert why in result.reason


@pytest.mark.parametrize(
    ("metric", "evaluator", "expected"),
    [
        ("pattern = 'x ([0-9.]+)'\n", "sealed", "key 'metric.pattern' reads the training log"),
        ("pattern = 'val loss ([0-9.]+'\n", "in-process", "not a regular expression"),
    ],
)
def test_a_bad_pattern_is_a_one_line_error(
    tmp_path: Path, metric: str, evaluator: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _task(tmp_path / "t", LOOP, metric, evaluator)
    assert expected in str(err.value) and "\n" not in str(err.value)


# A `script:` evaluator that checks the contract docs/own-code.md states, and says what it saw.
CONTRACT = """\
import argparse, json, os, sys
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--artifact", type=Path, required=True)
p.add_argument("--val", default="")
p.add_argument("--out", type=Path, required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--threads", type=int, required=True)
a = p.parse_args()
saw = {
    "cwd_has_train": Path("train.py").is_file(),
    "weights": json.loads((a.artifact / "w.json").read_text()),
    "seed": a.seed,
    "env_seed": os.environ.get("RSILAB_SEED"),
    "threads": a.threads,
    "train_data": "RSILAB_TRAIN_DATA" in os.environ,
    "budget": os.environ.get("RSILAB_BUDGET"),
}
if saw["weights"]["w"] < 0:
    a.out.write_text(json.dumps({"refused": "negative weights"}))
    sys.exit(3)
a.out.write_text(json.dumps({"val_loss": abs(saw["weights"]["w"] - 1.5), "saw": saw}))
"""
TRAIN = """\
import json, os
from pathlib import Path
W = 1.0
Path(os.environ["RSILAB_ARTIFACT_DIR"], "w.json").write_text(json.dumps({"w": W}))
"""


def test_a_script_evaluator_gets_what_the_contract_says(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "evaluate.py").write_text(CONTRACT)
    text = "name = 'x'\neditable = ['train.py']\nfrozen = ['rsilab.toml', 'evaluate.py']\n"
    text += "evaluator = 'script:evaluate.py'\ndata = 'none'\nbudget = 5\noverhead = 10\n"
    (root / "train.py").write_text(TRAIN)
    (root / "rsilab.toml").write_text(text + "[metric]\nname = 'val_loss'\n")
    task = load_task(root)
    result = _run(task, tmp_path)
    assert result.status is Status.OK, result.reason
    assert result.metric == 0.5 and result.evaluation["sealed"] is True
    saw = result.evaluation["saw"]
    assert saw["cwd_has_train"] and saw["weights"] == {"w": 1.0}
    assert saw["seed"] == 3 and saw["env_seed"] == "3" and saw["threads"] == 1
    assert saw["train_data"] is False and saw["budget"] == "5.0"
    (root / "train.py").write_text(TRAIN.replace("W = 1.0", "W = -1.0"))
    refused = _run(task, tmp_path / "again")
    assert refused.status is Status.INVALID and "negative weights" in refused.reason
    assert json.loads((tmp_path / "again" / "run" / "metrics.json").read_text())["refused"]


def test_the_audit_reads_the_metric_as_the_runner_did(tmp_path: Path) -> None:
    from rsilab.record.audit import run_problems

    task = _task(tmp_path / "t", LOOP, "pattern = 'val loss ([0-9.]+)'\n")
    result = _run(task, tmp_path)
    assert run_problems(task, result, tmp_path / "run") == []
    log = tmp_path / "run" / "train.log"
    log.write_text(log.read_text() + "val loss 0.1\n")  # a log changed afterwards
    assert "says val_loss 0.1" in run_problems(task, result, tmp_path / "run")[0]

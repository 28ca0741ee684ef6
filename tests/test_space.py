"""The declared search space (issue 23, point 3): knobs of any code, in Python of any case, in
TOML, YAML and JSON files and on the train command line; ranges, log scale, choices and
conditions; the tuner and `random` searching it; "nothing to tune" said at the start."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from rsilab.config import load_task, resolve_task_dir
from rsilab.errors import ConfigError
from rsilab.proposers.base import Context
from rsilab.proposers.tuner import RandomSearch, Tuner
from rsilab.results import Metric
from rsilab.space import SearchSpace, active, nothing_to_tune
from rsilab.workspace import git

CONFIG_PY = '''"""My config: lower-case module variables, and a dataclass."""
from dataclasses import dataclass

learning_rate = 3e-4  # the peak rate
batch_size = 32
optimizer = "adamw"
momentum = 0.9


@dataclass
class ModelConfig:
    n_layer: int = 4
    dropout: float = 0.1
'''
TRAIN_TOML = """# training settings
epochs = 3

[optim]
lr = 0.001   # peak
name = "adam"

[model]
width = 64
"""
TRAIN_YAML = """data:
  path: ./data
optim:
  lr: 0.001  # peak
  warmup: 100
  nesterov: false
model:
  width: 64
"""
TRAIN_JSON = '{\n  "optim": {"lr": 0.001, "betas": [0.9, 0.99]},\n  "model": {"width": 64}\n}\n'
FILES = {
    "config.py": CONFIG_PY,
    "train.toml": TRAIN_TOML,
    "train.yaml": TRAIN_YAML,
    "train.json": TRAIN_JSON,
}


def _task(tmp_path: Path, knobs: str, files: dict[str, str] | None = None) -> Any:
    for rel, text in (files or FILES).items():
        (tmp_path / rel).write_text(text)
    (tmp_path / "train.py").write_text("print('---')\n")
    editable = json.dumps(sorted(files or FILES))
    (tmp_path / "rsilab.toml").write_text(
        f'name = "mine"\neditable = {editable}\nfrozen = ["train.py", "rsilab.toml"]\n'
        f'evaluator = "in-process"\ndata = "none"\n[metric]\nname = "val_loss"\n{knobs}'
    )
    return load_task(tmp_path)


DECLARED = """
[knobs.learning_rate]
file = "config.py"
range = [1e-5, 1e-2]
log = true
[knobs.n_layer]
file = "config.py"
key = "ModelConfig.n_layer"
range = [2, 8]
[knobs.optimizer]
file = "config.py"
choices = ["adamw", "sgd"]
[knobs.momentum]
file = "config.py"
range = [0.5, 0.99]
when = { optimizer = "sgd" }
[knobs.toml_lr]
file = "train.toml"
key = "optim.lr"
range = [1e-4, 1e-1]
log = true
[knobs.yaml_lr]
file = "train.yaml"
key = "optim.lr"
range = [1e-4, 1e-1]
log = true
[knobs.nesterov]
file = "train.yaml"
key = "optim.nesterov"
[knobs.json_width]
file = "train.json"
key = "model.width"
range = [16, 256]
log = true
"""


def test_reads_declared_knobs_of_every_format(tmp_path: Path) -> None:
    task = _task(tmp_path, DECLARED)
    knobs = SearchSpace.of(task).knobs(FILES)
    values = {n: k.value for n, (_, k) in knobs.items()}
    assert values == {
        "learning_rate": 3e-4,
        "n_layer": 4,
        "optimizer": "adamw",
        "momentum": 0.9,
        "toml_lr": 0.001,
        "yaml_lr": 0.001,
        "nesterov": False,
        "json_width": 64,
    }
    lr = knobs["learning_rate"][1]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-2, True)
    assert knobs["optimizer"][1].choices == ("adamw", "sgd")
    assert knobs["momentum"][1].when == {"optimizer": ("sgd",)}


def test_writing_changes_only_the_literal_and_the_file_stays_valid(tmp_path: Path) -> None:
    space = SearchSpace.of(_task(tmp_path, DECLARED))
    new = space.set(
        FILES,
        {
            "learning_rate": 0.002,
            "n_layer": 6,
            "optimizer": "sgd",
            "toml_lr": 0.05,
            "yaml_lr": 1e-05,
            "nesterov": True,
            "json_width": 128,
        },
    )
    assert new["config.py"] == CONFIG_PY.replace("3e-4", "0.002").replace(
        "n_layer: int = 4", "n_layer: int = 6"
    ).replace('"adamw"', '"sgd"')
    assert new["train.toml"] == TRAIN_TOML.replace("lr = 0.001 ", "lr = 0.05 ")
    assert tomllib.loads(new["train.toml"])["optim"]["lr"] == 0.05
    parsed = yaml.safe_load(new["train.yaml"])
    assert parsed["optim"] == {"lr": 1e-05, "warmup": 100, "nesterov": True}
    assert new["train.yaml"].count("\n") == TRAIN_YAML.count("\n")
    assert json.loads(new["train.json"])["model"]["width"] == 128
    assert new["train.json"] == TRAIN_JSON.replace('"width": 64', '"width": 128')
    assert space.knobs({**FILES, **new})["n_layer"][1].value == 6
    with pytest.raises(ValueError, match="not one of"):
        space.set(FILES, {"optimizer": "lion"})
    with pytest.raises(ValueError, match="is a str"):
        space.set(FILES, {"n_layer": "six"})


def test_flag_knobs_follow_the_train_command(tmp_path: Path) -> None:
    knobs = '[knobs.lr]\nfile = "train.toml"\nkey = "optim.lr"\nflag = "--lr"\n'
    knobs += '[knobs.epochs]\nfile = "train.toml"\nflag = "--epochs"\n'
    task = _task(tmp_path, knobs)
    assert SearchSpace.of(task).flag_args(tmp_path) == ["--lr", "0.001", "--epochs", "3"]


def test_a_flag_knob_reaches_the_train_command_of_a_real_run(tmp_path: Path) -> None:
    from rsilab.run.runner import run

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "flags.toml").write_text("lr = 0.25\n")
    (task_dir / "train.py").write_text(
        "import sys\nlr = float(sys.argv[sys.argv.index('--lr') + 1])\n"
        "print('---')\nprint(f'val_loss: {(lr - 0.1) ** 2}')\n"
    )
    (task_dir / "rsilab.toml").write_text(
        'name = "flags"\neditable = ["flags.toml"]\nfrozen = ["train.py", "rsilab.toml"]\n'
        'evaluator = "in-process"\ndata = "none"\nbudget = 5\noverhead = 10\n'
        '[metric]\nname = "val_loss"\n[knobs.lr]\nfile = "flags.toml"\nflag = "--lr"\n'
    )
    task = load_task(task_dir)
    result = run(
        task, task_dir, tmp_path / "run", seed=1, train_data=None, val_data=None, isolation="none"
    )
    assert result.metric == pytest.approx(0.0225), result.reason


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ('[knobs.lr]\nfile = "other.py"\n', "must be an existing file listed in 'editable'"),
        ('[knobs.lr]\nfile = "train.py"\n', "must be an existing file listed in 'editable'"),
        ('[knobs.lr]\nfile = "notes.txt"\n', "must be .py, .toml, .yaml, .yml or .json"),
        ('[knobs.lr]\nfile = "config.py"\nrange = [1, 0]\n', "range must be [low, high]"),
        ('[knobs.lr]\nfile = "config.py"\nrange = [0, 1]\nlog = true\n', "log range"),
        ('[knobs.lr]\nfile = "config.py"\nwhen = { opt = "sgd" }\n', "'when' names 'opt'"),
        ('[knobs.lr]\nflag = "--lr"\n', "'key' and 'flag' need 'file'"),
        ('[knobs.lr]\nfile = "config.py"\nflag = "lr"\n', "must start with '-'"),
    ],
)
def test_a_bad_declaration_is_a_one_line_error(tmp_path: Path, knobs: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _task(tmp_path, knobs)
    assert expected in str(err.value) and "knobs.lr" in str(err.value)
    assert "\n" not in str(err.value)


def _ctx(files: dict[str, str], incumbent: float | None = 1.0) -> Context:
    return Context(
        files,
        metric=Metric("val_loss", "min"),
        incumbent_metric=incumbent,
        history=[],
        in_flight=[],
    )


@pytest.mark.parametrize("cls", [Tuner, RandomSearch])
def test_the_tuner_and_random_search_the_declared_space(tmp_path: Path, cls: type[Tuner]) -> None:
    task = _task(tmp_path, DECLARED)
    tuner = cls.from_task(task)
    moved: set[str] = set()
    for _ in range(40):
        p = tuner.propose(_ctx(FILES))
        assert p is not None
        tuner.observe(p, "discard", 2.0)
        new = {**FILES, **p.files}
        values = {n: k.value for n, (_, k) in SearchSpace.of(task).knobs(new).items()}
        assert values == p.knobs | {
            n: v for n, v in values.items() if n not in p.knobs
        }  # the files say what the proposal says
        assert 1e-5 <= values["learning_rate"] <= 1e-2
        assert 2 <= values["n_layer"] <= 8 and isinstance(values["n_layer"], int)
        assert 16 <= values["json_width"] <= 256
        assert values["optimizer"] in ("adamw", "sgd")
        if values["momentum"] != 0.9:  # moved: only where its condition holds
            assert values["optimizer"] == "sgd"
        moved |= set(p.meta["changed"])
    assert {"learning_rate", "n_layer", "toml_lr", "yaml_lr", "json_width"} <= moved


def test_log_range_spreads_over_decades(tmp_path: Path) -> None:
    tuner = RandomSearch.from_task(_task(tmp_path, DECLARED), max_knobs=1)
    seen = []
    for _ in range(60):
        p = tuner.propose(_ctx(FILES))
        assert p is not None
        tuner.observe(p, "discard", 2.0)
        if "learning_rate" in p.meta["changed"]:
            seen.append(math.log10(p.knobs["learning_rate"]))
    assert seen and min(seen) < -3.5 and max(seen) > -3.0  # both sides of 3e-4, log-uniform


def test_gpt_muon_rate_moves_only_when_the_optimizer_is_muon() -> None:
    task = load_task(resolve_task_dir("gpt"))
    files = {"train.py": (resolve_task_dir("gpt") / "train.py").read_text()}
    knob = SearchSpace.of(task).knobs(files, "cpu")["MATRIX_LR"][1]
    assert knob.when == {"OPTIMIZER": ("muon",)}
    assert not active(knob, {"OPTIMIZER": "adamw"}) and active(knob, {"OPTIMIZER": "muon"})

    def moved(files: dict[str, str]) -> int:
        tuner, n = Tuner.from_task(task, max_knobs=3), 0
        for _ in range(60):
            p = tuner.propose(
                Context(
                    files,
                    metric=task.metric_obj,
                    incumbent_metric=2.0,
                    history=[],
                    in_flight=[],
                    preset="cpu",
                )
            )
            assert p is not None
            tuner.observe(p, "discard", 2.5)
            if "MATRIX_LR" in p.meta["changed"]:
                assert p.knobs["OPTIMIZER"] == "muon", p.description
                n += 1
        return n

    assert 'OPTIMIZER = "adamw"' in files["train.py"]
    moved(files)  # never under adamw (asserted inside), unless OPTIMIZER moves to muon too
    muon = {"train.py": files["train.py"].replace('OPTIMIZER = "adamw"', 'OPTIMIZER = "muon" ')}
    assert moved(muon) > 0  # with Muon, it is searched


def test_nothing_to_tune_says_what_to_do(tmp_path: Path) -> None:
    files = {"config.py": "lr = 0.1\n"}
    task = _task(tmp_path, "", files)
    why = nothing_to_tune(task, files, None)
    assert why is not None and "declare" in why and "--proposer llm" in why
    task = _task(tmp_path, '[knobs.lr]\nfile = "config.py"\nrange = [0.01, 1.0]\n', files)
    assert nothing_to_tune(task, files, None) is None


def test_rsilab_run_with_nothing_to_tune_refuses_at_the_start(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(resolve_task_dir("toy"), repo, ignore=shutil.ignore_patterns("__pycache__"))
    train = (repo / "train.py").read_text()
    for name in ("LR", "STEPS", "BATCH_SIZE", "L2", "INIT_SCALE", "MOMENTUM"):
        train = train.replace(name, name.lower())
    (repo / "train.py").write_text(train)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "lower-case settings")
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(repo), "--proposer", "tuner"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing to tune in train.py" in lines[0], out.stderr
    assert "[knobs]" in lines[0] and "--proposer llm" in lines[0]
    assert "baseline" not in out.stdout  # said before any run


def test_a_change_of_declared_knob_values_only_counts_as_knob_only(tmp_path: Path) -> None:
    space = SearchSpace.of(_task(tmp_path, DECLARED))
    moved = {**FILES, **space.set(FILES, {"toml_lr": 0.05, "learning_rate": 0.001, "n_layer": 5})}
    assert space.only_knobs_differ(FILES, moved)
    code = dict(moved, **{"config.py": moved["config.py"] + "extra = 1\n"})
    assert not space.only_knobs_differ(FILES, code)  # and a line of code more: not knobs only
    other = dict(FILES, **{"train.toml": FILES["train.toml"].replace("width = 64", "width = 65")})
    assert not space.only_knobs_differ(FILES, other)  # `model.width` is not declared
    assert not SearchSpace().only_knobs_differ(FILES, moved)  # nothing declared: code


def test_a_flag_file_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    knobs = '[knobs.lr]\nfile = "train.toml"\nkey = "optim.lr"\nflag = "--lr"\n'
    task = _task(tmp_path, knobs)
    secret = tmp_path / "elsewhere.toml"
    secret.write_text("[optim]\nlr = 0.123\n")
    (tmp_path / "train.toml").unlink()
    (tmp_path / "train.toml").symlink_to(secret)
    assert SearchSpace.of(task).flag_args(tmp_path) == []

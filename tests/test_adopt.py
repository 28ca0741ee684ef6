"""Adopting a repo that knows nothing of rsilab (issue 23, point 1): `rsilab init DIR` detects
the train command, the files, the metric line and the settings to tune, writes a commented
rsilab.toml and a program.md, and refuses in one line when it cannot tell."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from rsilab.config import load_task
from rsilab.record.ledger import Ledger
from rsilab.workspace import git, open_workspace

# A small repo as people write them: settings as lower-case variables of a config module,
# its own torch seeding, a data module, a model module, and a `val loss X` line per epoch.
REPO = {
    "config.py": """\
        # training configuration
        learning_rate = 0.05
        batch_size = 32
        hidden = 16
        weight_decay = 0.0
        epochs = 4
        seed = 1337
        device = "cpu"
        log_interval = 10
        """,
    "data.py": """\
        import torch

        def splits():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(512, 8, generator=g)
            y = (x[:, :1] * 2 - x[:, 1:2]).tanh() + 0.1 * torch.randn(512, 1, generator=g)
            return (x[:384], y[:384]), (x[384:], y[384:])
        """,
    "model.py": """\
        import torch.nn as nn

        def make(hidden):
            return nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        """,
    "train.py": """\
        import torch

        import config
        from data import splits
        from model import make

        torch.manual_seed(config.seed)
        torch.set_num_threads(1)
        (xt, yt), (xv, yv) = splits()
        net = make(config.hidden)
        opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        for epoch in range(config.epochs):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), config.batch_size):
                idx = perm[i : i + config.batch_size]
                loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                val = ((net(xv) - yv) ** 2).mean().item()
            print(f"epoch {epoch} train loss {loss.item():.4f} val loss {val:.4f}")
        """,
    "README.md": "# my regression\n\n`python train.py`\n",
}


def make_repo(root: Path, files: dict[str, str] = REPO, commit: bool = True) -> Path:
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    git(root, "init", "-q", "-b", "main")
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "my code")
    return root


def rsilab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsilab.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_init_adopts_a_foreign_repo_in_one_command(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = rsilab("init", str(repo), "--tag", "a", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "seeds itself (torch.manual_seed(config.seed))" in out.stdout
    assert "workspace" in out.stdout and "rsilab/a" in out.stdout
    data = tomllib.loads((repo / "rsilab.toml").read_text())
    assert data["train"] == "python train.py"
    assert data["evaluator"] == "in-process"
    assert data["metric"] == {
        "name": "val_loss",
        "direction": "min",
        "pattern": "val loss ([-+0-9.eE]+)",
    }
    assert set(data["editable"]) == {"train.py", "config.py", "model.py"}
    assert set(data["frozen"]) == {"rsilab.toml", "program.md", "data.py"}
    assert set(data["knobs"]) == {"learning_rate", "batch_size", "hidden", "epochs"}
    assert data["knobs"]["learning_rate"] == {"file": "config.py"}
    assert "# NOTE: the code seeds itself" in (repo / "rsilab.toml").read_text()
    program = (repo / "program.md").read_text()
    assert "val_loss" in program and "`config.py`" in program
    # committed on the user's branch, only those two files; the workspace starts there
    assert git(repo, "status", "--porcelain").strip() == ""
    shown = git(repo, "show", "--name-only", "--format=%s", "HEAD").split()
    assert "rsilab.toml" in shown and "program.md" in shown and "train.py" not in shown
    ws = open_workspace(repo)
    assert ws.incumbent_commit() == git(repo, "rev-parse", "HEAD").strip()
    assert load_task(repo).knobs["hidden"].file == "config.py"


@pytest.mark.slow
def test_run_on_the_adopted_repo_tunes_its_lower_case_settings(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert rsilab("init", str(repo), "--tag", "a", cwd=tmp_path).returncode == 0
    out = rsilab("run", str(repo), "--proposer", "tuner", "--max-experiments", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "runs gave the same val_loss" in out.stdout  # the repo pins its seed: said
    with Ledger(open_workspace(repo).ledger_path) as ledger:
        exps = ledger.experiments()
        assert exps[0].status == "keep" and exps[0].metric is not None
        tuned = [e for e in exps[1:] if e.status in ("keep", "discard")]
        assert tuned, [(e.status, e.description) for e in exps]
        moved = " ".join(e.description for e in tuned)
        assert any(k in moved for k in ("learning_rate", "batch_size", "hidden", "epochs"))


def test_adopt_only_proposes_for_review(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = rsilab("init", str(repo), "--adopt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "next: review rsilab.toml and program.md, commit them" in out.stdout
    assert (repo / "rsilab.toml").is_file() and not (repo / ".rsilab").exists()
    assert "?? rsilab.toml" in git(repo, "status", "--porcelain")
    error = one_line_error(rsilab("init", str(repo), "--adopt", cwd=tmp_path))
    assert "rsilab.toml: exists already" in error


def test_options_override_detection(tmp_path: Path) -> None:
    files = dict(REPO)
    files["fit.py"] = files.pop("train.py").replace("val loss {val:.4f}", "score={1 - val:.4f}")
    repo = make_repo(tmp_path / "repo", files)
    error = one_line_error(rsilab("init", str(repo), cwd=tmp_path))
    assert "cannot tell the training script" in error and "--train" in error
    error = one_line_error(rsilab("init", str(repo), "--train", "python fit.py", cwd=tmp_path))
    assert "cannot find a metric line in fit.py" in error and "--pattern" in error
    assert not (repo / "rsilab.toml").exists()  # nothing written on a refusal
    out = rsilab(
        "init", str(repo), "--train", "python fit.py", "--metric", "score",
        "--pattern", "score=([0-9.]+)", "--direction", "max", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = tomllib.loads((repo / "rsilab.toml").read_text())
    assert data["train"] == "python fit.py" and data["metric"]["direction"] == "max"
    assert "fit.py" in data["editable"]


def test_a_repo_without_a_commit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", commit=False)
    error = one_line_error(rsilab("init", str(repo), cwd=tmp_path))
    assert "no commit yet; commit your code first" in error
    assert not (repo / "rsilab.toml").exists()


def test_detects_accuracy_as_maximised_and_yaml_settings(tmp_path: Path) -> None:
    files = {
        "train.py": """\
            import yaml
            cfg = yaml.safe_load(open("configs/base.yaml"))
            acc = 0.5 + cfg["optim"]["lr"]
            print("val_acc: %.4f" % acc)
            """,
        "configs/base.yaml": "optim:\n  lr: 0.1\n  momentum: 0.9\nrun:\n  out_dir: out\n  seed: 3\n",
    }
    root = make_repo(tmp_path / "repo", files)
    assert rsilab("init", str(root), "--adopt", cwd=tmp_path).returncode == 0
    data = tomllib.loads((root / "rsilab.toml").read_text())
    assert data["metric"]["name"] == "val_acc" and data["metric"]["direction"] == "max"
    assert data["metric"]["pattern"] == "val_acc: ([-+0-9.eE]+)"
    assert data["knobs"] == {
        "lr": {"file": "configs/base.yaml", "key": "optim.lr"},
        "momentum": {"file": "configs/base.yaml", "key": "optim.momentum"},
    }


def test_a_setting_in_a_config_file_and_the_script_is_declared_from_the_config(
    tmp_path: Path,
) -> None:
    files = {  # nanoGPT's layout: defaults in train.py, overridden by exec'ing a config file
        "train.py": """\
            learning_rate = 6e-4
            max_iters = 5000
            seed_offset = 0
            exec(open("configurator.py").read())
            print(f"step 1: train loss 2.0, val loss {2.1:.4f}")
            """,
        "configurator.py": "import sys\n",
        "config/train_char.py": "learning_rate = 1e-3\nmax_iters = 2000\nout_dir = 'out'\n",
    }
    root = make_repo(tmp_path / "repo", files)
    assert rsilab("init", str(root), "--adopt", cwd=tmp_path).returncode == 0
    data = tomllib.loads((root / "rsilab.toml").read_text())
    assert data["knobs"] == {
        "learning_rate": {"file": "config/train_char.py"},
        "max_iters": {"file": "config/train_char.py"},
    }
    assert data["metric"]["pattern"] == "val loss ([-+0-9.eE]+)"


def test_what_cannot_be_detected_is_asked(tmp_path: Path) -> None:
    from rsilab.adopt import detect

    files = dict(REPO)
    files["fit.py"] = files.pop("train.py").replace("val loss {val:.4f}", "score={1 - val:.4f}")
    repo = make_repo(tmp_path / "repo", files)
    answers = iter(["python fit.py", "score", "score=([0-9.]+)"])
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return next(answers)

    p = detect(repo, ask=ask)
    assert len(asked) == 3 and "training command" in asked[0] and "regex" in asked[2]
    assert p.train == ["python", "fit.py"] and p.metric == "score" and p.direction == "max"
    assert p.pattern == "score=([0-9.]+)"
    with pytest.raises(Exception, match="not a regular expression"):
        detect(repo, train="python fit.py", metric="score", pattern="score=([0-9.]+")

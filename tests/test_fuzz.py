"""Bad input, fuzzed with hypothesis: the config loader and the command line.

Every user mistake must end as one line that names what to fix (exit code 2 at the CLI),
never a traceback, and must change nothing on disk (no half-made workspace). What the
loader accepts must be usable: finite numbers, durations and counts in range, files
inside the task. Example counts are small so the file runs in seconds; the CLI goes
through click's CliRunner (in-process) with a few real subprocesses at the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rsilab.cli import main
from rsilab.config import CONFIG_NAME, TaskSpec, load_task, parse_override, resolve_task_dir
from rsilab.errors import ConfigError, RsilabError

# No example database: nothing is written into the repository; a failure prints its example.
FAST = settings(max_examples=60, deadline=None, database=None)
SLOW = settings(max_examples=20, deadline=None, database=None)


def _keys(cls: Any, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree: budget, judge.alpha, llm.model, ..."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "root":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


KNOWN_KEYS = _keys(TaskSpec)


def _toml(value: Any) -> str:
    """A TOML literal for a value (the tests' own tiny writer; tomllib only reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _document(data: dict[str, Any]) -> str:
    """A TOML document: scalars first, then one [table] per dict."""
    lines = [f"{json.dumps(k)} = {_toml(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(str(kk))} = {_toml(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# Values near the edges come up often: nan, inf, zero, negatives, paths out of the task.
edgy = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        0,
        -1,
        0.0,
        -0.5,
        1e308,
        2**63,
        "",
        "nan",
        "*",
        "**",
        "train.py",
        "../x",
        "/etc/passwd",
        "'unclosed",
        '"unclosed',
        "[",
        [],
    ]
)
scalars = (
    edgy
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.booleans()
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = (
    st.sampled_from(KNOWN_KEYS)
    | st.sampled_from(KNOWN_KEYS)
    | st.text(max_size=12)
    | st.sampled_from(["", ".", "judge.", "a..b", "root", "budget.x", "judge.alpha.x"])
)
override_texts = (
    st.builds(lambda k, v: f"{k}={_toml(v)}", keys, values)
    | st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=20))
    | st.text(max_size=30)
)


def _one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), repr(message)
    assert "Traceback" not in message


def _assert_usable(spec: TaskSpec) -> None:
    """What the loader accepted can be run: numbers finite and in range, files in the task."""
    for name in ("budget", "overhead", "eval_timeout", "memory_gb", "budget_flops"):
        value = getattr(spec, name, 0.0)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert spec.budget > 0 and spec.eval_timeout > 0 and spec.threads >= 1
    assert math.isfinite(spec.judge.min_effect) and spec.judge.min_effect >= 0
    assert spec.judge.recheck_every >= 0 and spec.tuner.follow >= 0
    assert spec.eval.bytes >= 1 and spec.eval.probes >= 0
    assert spec.train and all(isinstance(p, str) for p in spec.train)
    for pattern in [*spec.editable, *spec.frozen]:
        assert not Path(pattern).is_absolute() and ".." not in Path(pattern).parts, pattern
    for name in spec.editable_files() + spec.frozen_files():
        assert (spec.root / name).resolve().is_relative_to(spec.root)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the bundled toy task (tests write its rsilab.toml)."""
    task = tmp_path_factory.mktemp("fuzz") / "toy"
    shutil.copytree(resolve_task_dir("toy"), task)
    return task


# -- the config loader ---------------------------------------------------------------------


@FAST
@given(text=st.text(max_size=40))
def test_parse_override_gives_a_pair_or_a_one_line_error(text: str) -> None:
    try:
        key, _ = parse_override(text)
    except ConfigError as e:
        _one_line(str(e))
        assert "--set" in str(e)
    else:
        assert isinstance(key, str)


@settings(FAST, max_examples=200)
@given(key=st.sampled_from(KNOWN_KEYS), value=values.map(_toml) | st.text(max_size=12))
def test_every_key_takes_a_usable_value_or_names_the_mistake(
    toy: Path, key: str, value: str
) -> None:
    try:
        spec = load_task(toy, [parse_override(f"{key}={value}")])
    except ConfigError as e:
        _one_line(str(e))
        assert key.split(".")[0] in str(e) or "editable" in str(e), (key, str(e))
    else:
        _assert_usable(spec)


@FAST
@given(sets=st.lists(override_texts, min_size=1, max_size=3))
def test_any_set_loads_a_usable_task_or_names_the_mistake(toy: Path, sets: list[str]) -> None:
    try:
        spec = load_task(toy, [parse_override(s) for s in sets])
    except ConfigError as e:
        _one_line(str(e))
        assert "--set" in str(e) or CONFIG_NAME in str(e)
    else:
        _assert_usable(spec)


@FAST
@given(edits=st.lists(st.tuples(keys, values | st.none()), min_size=1, max_size=3))
def test_a_malformed_config_file_loads_usable_or_names_the_mistake(
    toy: Path, edits: list[tuple[str, Any]]
) -> None:
    original = (resolve_task_dir("toy") / CONFIG_NAME).read_text()
    data = tomllib.loads(original)
    for key, value in edits:  # None deletes the key
        *tables, last = key.split(".")
        node = data
        for t in tables:
            node = node.setdefault(t, {}) if isinstance(node.get(t, {}), dict) else {}
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    (toy / CONFIG_NAME).write_text(_document(data))
    try:
        spec = load_task(toy)
    except ConfigError as e:
        _one_line(str(e))
        assert CONFIG_NAME in str(e)
    else:
        _assert_usable(spec)
    finally:
        (toy / CONFIG_NAME).write_text(original)


@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_a_config_file_of_garbage_is_a_one_line_error(toy: Path, raw: bytes) -> None:
    original = (toy / CONFIG_NAME).read_bytes()
    (toy / CONFIG_NAME).write_bytes(raw)
    try:
        load_task(toy)
    except ConfigError as e:
        _one_line(str(e))
    else:
        pass  # garbage that happens to be a valid config (unlikely but allowed)
    finally:
        (toy / CONFIG_NAME).write_bytes(original)


def test_unreadable_or_odd_config_paths_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).mkdir()  # a folder where the file should be
    with pytest.raises(ConfigError, match="not found"):
        load_task(tmp_path)
    for name in ("a" * 300, "x/" * 3 + "a" * 300, "\0", "."):
        with pytest.raises(ConfigError) as info:
            resolve_task_dir(name)
        _one_line(str(info.value))


# -- the command line ----------------------------------------------------------------------

_counter = itertools.count()


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: a traceback") from result.exception
    return result


def _bad(sets: list[str], task: Path) -> bool:
    try:
        load_task(task, [parse_override(s) for s in sets])
    except RsilabError:
        return True
    return False


@SLOW
@given(sets=st.lists(override_texts, min_size=1, max_size=2))
def test_run_with_a_bad_set_says_so_in_one_line_and_creates_nothing(
    tmp_path_factory: pytest.TempPathFactory, sets: list[str]
) -> None:
    assume(_bad(sets, resolve_task_dir("toy")))
    where = tmp_path_factory.getbasetemp() / f"run-{next(_counter)}"
    result = _invoke("run", str(where / "lab"), "--task", "toy", *(f"--set={s}" for s in sets))
    assert result.exit_code == 2, result.output
    _one_line(result.stderr)
    assert not where.exists()


@SLOW
@given(
    tag=st.text(max_size=16)
    | st.sampled_from(
        ["a..b", "a.lock", "-x", "a/", "/a", "a//b", "@", "a@{b", ".a", "a.", "x\x7f", "t\n", "ok"]
    )
)
def test_init_with_any_tag_makes_a_workspace_or_nothing(
    tmp_path_factory: pytest.TempPathFactory, tag: str
) -> None:
    where = tmp_path_factory.getbasetemp() / f"init-{next(_counter)}"
    result = _invoke("init", str(where / "lab"), "--task", "toy", "--tag", tag)
    if result.exit_code == 0:
        from rsilab.workspace import git, open_workspace

        ws = open_workspace(where / "lab")
        assert git(ws.root, "rev-parse", "--verify", f"refs/heads/{ws.branch}").strip()
    else:
        assert result.exit_code == 2, result.output
        _one_line(result.stderr)
        assert "tag" in result.stderr
        assert not where.exists()


def test_init_into_odd_places_is_a_one_line_error_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for target in ("a-file", "a-file/below", "full"):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        result = _invoke("init", str(tmp_path / target), "--task", "toy", "--tag", "t")
        assert result.exit_code == 2, (target, result.output)
        _one_line(result.stderr)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_run_with_a_bad_proposer_or_task_creates_nothing(tmp_path: Path) -> None:
    for args in (
        ["--proposer", "bogus"],
        ["--proposer", "llm+queue"],
        ["--task", "nosuchtask"],
        ["--set", "editable=['/etc/passwd']"],
        ["--set", "train='\"unclosed'"],
    ):
        result = _invoke(
            "run",
            str(tmp_path / "lab"),
            *(["--task", "toy"] if "--task" not in args else []),
            *args,
        )
        assert result.exit_code == 2, (args, result.output)
        _one_line(result.stderr)
        assert not (tmp_path / "lab").exists(), args


def test_a_failed_task_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = tmp_path / "task"
    shutil.copytree(resolve_task_dir("toy"), broken)
    (broken / CONFIG_NAME).write_text((broken / CONFIG_NAME).read_text() + "\nbogus = 1\n")
    result = _invoke("init", str(tmp_path / "lab"), "--task", str(broken), "--tag", "t")
    assert result.exit_code == 2 and "bogus" in result.stderr
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "newdir", "--task", "toy", "--set", "budget=abc"],
        ["init", "newdir", "--task", "toy", "--tag", "a..b"],
        ["train", "--task", "a" * 300],
        ["train", "--task", "toy", "--set", 'train="unclosed'],
    ],
)
def test_real_processes_get_one_line_and_leave_nothing(tmp_path: Path, args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stdout + out.stderr
    _one_line(out.stderr)
    assert list(tmp_path.iterdir()) == []

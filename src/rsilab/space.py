"""The declared search space. Owns: knobs of any code (rsilab.toml `[knobs]`), their values in
Python, TOML, YAML and JSON files, their flags on the train command, and their conditions.

The offline tuner finds UPPER_CASE knobs of the editable `.py` files by itself
(`rsilab.proposers.knobs`). A repo that keeps its settings elsewhere declares them:

    [knobs.lr]
    file = "config/train.yaml"      # where the value lives (an editable file)
    key = "optim.lr"                # a dotted key (a config file) or a variable (`Config.lr`)
    range = [1e-5, 1e-2]
    log = true

    [knobs.MATRIX_LR]               # no file: bounds or a condition for an UPPER_CASE knob
    when = { OPTIMIZER = "muon" }   # it only matters when OPTIMIZER is "muon"

A Python knob is a top-level `name = literal` of any case, or `Class.name` in the body of a
top-level class (dataclass defaults); a config key is a scalar on its own line (TOML `key =
value` under its table, YAML `key: value` nested by indentation, JSON anywhere). Writing a
value replaces only the bytes of the old literal, so a diff shows exactly what moved. A
`flag` knob's value is also passed to every run as `FLAG VALUE` after the train command
(`flag_args`), which is how a script configured by its command line is tuned without
touching the frozen command.

Not covered: list or table values, keys spread over several lines, YAML anchors.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsilab.errors import ConfigError
from rsilab.fsio import read_regular

if TYPE_CHECKING:
    from rsilab.config import KnobSpec, TaskSpec
    from rsilab.proposers.knobs import Knob


@dataclass(frozen=True)
class _Span:
    """Where a declared knob's literal sits in its file: character offsets and the value."""

    start: int
    end: int
    value: Any


def _kind(v: Any) -> str:
    return "bool" if isinstance(v, bool) else type(v).__name__


# ---- Python ----------------------------------------------------------------------------------
def py_literal(node: ast.expr | None) -> tuple[bool, Any]:
    """(True, value) for a literal int, float, str or bool (a sign allowed on numbers), else
    (False, None): what a knob's assignment may hold."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str, bool):
        return True, node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        v = node.operand.value
        assert isinstance(v, int | float)
        return True, -v if isinstance(node.op, ast.USub) else v
    return False, None


def _py_find(text: str, key: str) -> _Span | None:
    """The last top-level assignment of `key` (or `Class.key` in a top-level class body)."""
    tree = ast.parse(text)
    body: list[ast.stmt] = tree.body
    name = key
    if "." in key:
        cls, name = key.split(".", 1)
        body = next(
            (s.body for s in tree.body if isinstance(s, ast.ClassDef) and s.name == cls), []
        )
    found: ast.expr | None = None
    for stmt in body:
        target, value = None, None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        if isinstance(target, ast.Name) and target.id == name:
            found = value
    ok, value = py_literal(found)
    if not ok or found is None or found.end_lineno != found.lineno:
        return None
    lines = io.StringIO(text, newline="").readlines()
    base = sum(len(line) for line in lines[: found.lineno - 1])
    raw = lines[found.lineno - 1].encode()  # ast offsets are UTF-8 bytes
    assert found.end_col_offset is not None
    start = base + len(raw[: found.col_offset].decode())
    end = base + len(raw[: found.end_col_offset].decode())
    return _Span(start, end, value)


def _py_text(value: Any, old: str) -> str:
    text = repr(value)
    if isinstance(value, str) and old.startswith('"') and '"' not in value and "'" not in value:
        text = '"' + text[1:-1] + '"'
    return text


# ---- TOML and YAML (line by line) ------------------------------------------------------------
_TOML_TABLE = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_TOML_KEY = re.compile(r"(\s*)([A-Za-z0-9_.\-\"' ]+?)\s*=\s*")
_YAML_KEY = re.compile(r"( *)([^\s#:][^:#]*?)\s*:(\s+|$)")
_VALUE = re.compile(r"""("(?:[^"\\]|\\.)*"|'[^']*'|[^\s#,}\]]+)""")


def _unquote_key(k: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in k.split("."))


def _toml_find(text: str, key: str) -> _Span | None:
    table, pos = "", 0
    found = None
    for line in io.StringIO(text, newline="").readlines():
        m = _TOML_TABLE.match(line)
        if m:
            table = _unquote_key(m.group(1))
        elif (k := _TOML_KEY.match(line)) and not line.lstrip().startswith("#"):
            full = ".".join(p for p in (table, _unquote_key(k.group(2))) if p)
            v = _VALUE.match(line, k.end())
            if full == key and v:
                try:
                    value = tomllib.loads(f"v = {v.group(1)}")["v"]
                except tomllib.TOMLDecodeError:
                    value = None
                if type(value) in (int, float, str, bool):
                    found = _Span(pos + v.start(), pos + v.end(), value)
        pos += len(line)
    return found


def _yaml_scalar(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return json.loads(raw) if raw[0] == '"' else raw[1:-1].replace("''", "'")
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _yaml_find(text: str, key: str) -> _Span | None:
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings we are in
    pos, found = 0, None
    for line in io.StringIO(text, newline="").readlines():
        m = _YAML_KEY.match(line)
        if m and not line.lstrip().startswith(("#", "-")):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            name = m.group(2).strip().strip("\"'")
            full = ".".join([*(k for _, k in stack), name])
            rest = line[m.end() :]
            v = (
                _VALUE.match(line, m.end())
                if rest.strip() and not rest.lstrip().startswith("#")
                else None
            )
            if v is None:
                stack.append((indent, name))
            elif full == key:
                found = _Span(pos + v.start(), pos + v.end(), _yaml_scalar(v.group(1)))
        pos += len(line)
    return found


def _config_text(value: Any, fmt: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    text = repr(value)
    if fmt == "yaml" and isinstance(value, float) and "e" in text and "." not in text:
        text = text.replace("e", ".0e")  # YAML 1.1 (PyYAML) reads 1e-05 as a string
    return text


# ---- JSON ----------------------------------------------------------------------------------
def _json_find(text: str, key: str) -> _Span | None:
    decoder = json.JSONDecoder()
    spans: dict[str, _Span] = {}

    def ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def value(i: int, path: str) -> int:
        i = ws(i)
        if text.startswith("{", i):
            i = ws(i + 1)
            if text.startswith("}", i):
                return i + 1
            while True:
                name, i = json.decoder.scanstring(text, ws(i) + 1)  # type: ignore[attr-defined]
                i = ws(i)
                assert text[i] == ":"
                i = ws(value(i + 1, f"{path}.{name}" if path else name))
                if text[i] == "}":
                    return i + 1
                i += 1  # ","
        obj, end = decoder.raw_decode(text, i)
        if type(obj) in (int, float, str, bool):
            spans[path] = _Span(i, end, obj)
        return end

    try:
        value(0, "")
    except (ValueError, AssertionError, IndexError):
        return None
    return spans.get(key)


# ---- one declared knob ---------------------------------------------------------------------
def _fmt(path: str) -> str:
    suffix = path.rsplit(".", 1)[-1]
    return {"py": "py", "toml": "toml", "yaml": "yaml", "yml": "yaml", "json": "json"}[suffix]


def _find(path: str, text: str, key: str) -> _Span | None:
    fmt = _fmt(path)
    try:
        if fmt == "py":
            return _py_find(text, key)
        if fmt == "toml":
            return _toml_find(text, key)
        if fmt == "yaml":
            return _yaml_find(text, key)
        return _json_find(text, key)
    except (SyntaxError, ValueError):
        return None


def _write(path: str, text: str, span: _Span, value: Any) -> str:
    old = text[span.start : span.end]
    new = _py_text(value, old) if _fmt(path) == "py" else _config_text(value, _fmt(path))
    out = text[: span.start] + new + text[span.end :]
    if _fmt(path) == "py":
        ast.parse(out)  # a guard: an edit must never break the file
    return out


class SearchSpace:
    """The knobs of a task's editable files: auto-detected UPPER_CASE knobs plus those
    declared in `[knobs]`, with their declared bounds and conditions.

    `knobs` returns name -> (path, Knob) like `collect_knobs`; a declared knob's Knob carries
    its bounds (`low`, `high`, `log`), choices and conditions (`when`)."""

    def __init__(self, declared: Mapping[str, KnobSpec] | None = None) -> None:
        self.declared = dict(declared or {})

    @classmethod
    def of(cls, task: TaskSpec) -> SearchSpace:
        return cls(task.knobs)

    def _spot(self, name: str, files: Mapping[str, str]) -> tuple[str, _Span] | None:
        spec = self.declared[name]
        if not spec.file or spec.file not in files:
            return None
        span = _find(spec.file, files[spec.file], spec.key or name)
        return (spec.file, span) if span is not None else None

    def knobs(
        self, files: Mapping[str, str], preset: str | None = None
    ) -> dict[str, tuple[str, Knob]]:
        from rsilab.proposers.knobs import Knob, collect_knobs  # the runner needs none of it

        out = dict(collect_knobs(files, preset))
        for name, spec in self.declared.items():
            if spec.file:
                spot = self._spot(name, files)
                if spot is None:
                    continue  # not found in this version of the file: nothing to tune
                path, span = spot
                knob = Knob(name, span.value, None, "", 0, None)
            elif name in out:
                path, knob = out[name]
            else:
                continue
            choices = tuple(spec.choices) if spec.choices else knob.choices
            low, high = (spec.range[0], spec.range[1]) if spec.range else (None, None)
            out[name] = (
                path,
                replace(
                    knob,
                    choices=choices,
                    low=low,
                    high=high,
                    log=spec.log if spec.range else None,
                    when=_conditions(spec.when),
                ),
            )
        return out

    def set(
        self, files: Mapping[str, str], values: Mapping[str, Any], preset: str | None = None
    ) -> dict[str, str]:
        """The files that change when `values` are set (only those). KeyError: unknown knob;
        ValueError: a value of another kind, or outside the knob's choices."""
        out: dict[str, str] = {}
        auto: dict[str, Any] = {}
        for name, value in values.items():
            spec = self.declared.get(name)
            if spec is None or not spec.file:
                auto[name] = value
                continue
            spot = self._spot(name, {**files, **out})
            if spot is None:
                raise KeyError(f"knob {name!r}: {spec.key or name!r} not found in {spec.file}")
            path, span = spot
            if _kind(value) != _kind(span.value) and not (
                isinstance(value, int | float)
                and isinstance(span.value, float)
                and not isinstance(value, bool)
            ):
                raise ValueError(
                    f"{name}: {value!r} is a {_kind(value)}, the knob a {_kind(span.value)}"
                )
            if spec.choices and value not in spec.choices:
                raise ValueError(f"{name}: {value!r} is not one of {spec.choices}")
            if isinstance(span.value, float):
                value = float(value)
            if value == span.value and type(value) is type(span.value):
                continue
            out[path] = _write(path, {**files, **out}[path], span, value)
        if auto:
            from rsilab.proposers.knobs import set_knobs_in_files

            merged = {**files, **out}
            out.update(set_knobs_in_files(merged, auto, preset))
        return out

    def only_knobs_differ(self, old: Mapping[str, str], new: Mapping[str, str]) -> bool:
        """True when the files in `new` are those in `old` with at most knob values changed:
        declared knobs (their literals masked) and UPPER_CASE ones (knobs.only_knobs_differ).
        Such a change cannot alter how the code uses the seed, the budget or the data, which
        the judge relies on to keep it after one run (judge.knob_min_runs)."""
        from rsilab.proposers import knobs

        if old.keys() != new.keys():
            return False
        for path, text in new.items():
            if text == old[path]:
                continue
            before, after = self._masked(path, old[path]), self._masked(path, text)
            if before == after:
                continue
            if not (
                path.endswith(".py") and knobs.only_knobs_differ({path: before}, {path: after})
            ):
                return False
        return True

    def _masked(self, path: str, text: str) -> str:
        """`text` with the literal of every declared knob of `path` replaced by `_`."""
        spans = []
        for name, spec in self.declared.items():
            if spec.file == path and (span := _find(path, text, spec.key or name)) is not None:
                spans.append(span)
        for span in sorted(spans, key=lambda s: -s.start):
            text = text[: span.start] + "_" + text[span.end :]
        return text

    def flag_args(self, workdir: Path) -> list[str]:
        """`FLAG VALUE` for every flag knob, its value read from its file in `workdir` (a
        run's checkout), in declaration order; a knob whose value is not found (or whose file
        is a link, or not a regular file) is left out."""
        args: list[str] = []
        for name, spec in self.declared.items():
            if not spec.flag:
                continue
            # Never through a link: the checkout is the run's, and this runs outside the sandbox.
            raw = read_regular(workdir / spec.file, base=workdir)
            try:
                text = raw.decode() if raw is not None else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                continue
            span = _find(spec.file, text, spec.key or name)
            if span is None:
                continue
            v = span.value
            args += [spec.flag, ("true" if v else "false") if isinstance(v, bool) else str(v)]
        return args


def _conditions(when: Mapping[str, Any]) -> dict[str, tuple[Any, ...]] | None:
    if not when:
        return None
    return {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}


def active(knob: Knob, values: Mapping[str, Any]) -> bool:
    """Whether `knob` matters under the knob `values`: each of its conditions holds (a knob
    named in a condition but absent from `values` does not hold)."""
    for other, allowed in (knob.when or {}).items():
        if other not in values or not any(
            _kind(values[other]) == _kind(a) and values[other] == a for a in allowed
        ):
            return False
    return True


def nothing_to_tune(task: TaskSpec, files: Mapping[str, str], preset: str | None) -> str | None:
    """None when the offline tuner has something to tune in `files` (the incumbent's editable
    files); else why not, and what to do, in one line."""
    knobs = SearchSpace.of(task).knobs(files, preset)
    tunable = [
        n
        for n, (_, k) in knobs.items()
        if n not in task.tuner.exclude and (not isinstance(k.value, str) or k.choices)
    ]
    if tunable:
        return None
    missing = [n for n, s in task.knobs.items() if s.file and n not in knobs]
    why = (
        f"declared knobs not found: {', '.join(missing)} (check their file and key)"
        if missing
        else "no UPPER_CASE = literal settings in the editable .py files and no [knobs] declared"
    )
    return (
        f"nothing to tune in {', '.join(task.editable)}: {why}; declare the settings to "
        "search under [knobs] in rsilab.toml (see docs/own-code.md), or use a proposer that "
        "edits code: --proposer llm or --proposer agent"
    )


def check_declared(task: TaskSpec, files: Mapping[str, str]) -> None:
    """ConfigError (one line) for a declared knob whose value is not found in its file."""
    space = SearchSpace.of(task)
    for name, spec in task.knobs.items():
        if spec.file and space._spot(name, files) is None:
            raise ConfigError(
                f"rsilab.toml: key 'knobs.{name}': no scalar {spec.key or name!r} found in "
                f"{spec.file} (a literal on its own line)"
            )

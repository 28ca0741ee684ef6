"""Knobs of a Python source. Owns: reading and writing them without disturbing anything else.

A knob is a top-level `UPPER_CASE_NAME = <literal>` (int, float, str or bool, also a
negative number) on one line, with an optional trailing comment. `# one of: a, b, c` in
the comment makes it a closed set. Assignments directly inside a top-level
`if PRESET == "gpu":` block (any string, `elif` chains too) are that preset's overrides;
as in Python, the assignment that runs last wins. `PRESET` itself is the selector, not a
knob. `set_knobs` rewrites only the bytes of the literal (and the spaces before the
comment, to keep comments aligned), so a diff shows exactly the knobs that changed.

Not covered: expressions (`2**10`), knobs set inside functions, multi-line literals.
"""

from __future__ import annotations

import ast
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rsilab.space import py_literal

_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_ONE_OF = re.compile(r"one of:\s*([^;)]*)", re.IGNORECASE)
_COMMENT = re.compile(r"( *)(#.*)", re.DOTALL)
SELECTOR = "PRESET"


@dataclass(frozen=True)
class Knob:
    name: str
    value: Any
    choices: tuple[Any, ...] | None  # a closed set (`# one of: ...`), else None
    comment: str  # the trailing comment without '#', stripped
    lineno: int  # 1-based line of the assignment
    preset: str | None  # None for a top-level knob, else the preset block it sits in
    # Declared in rsilab.toml [knobs] (rsilab.space), else None: the searched range, whether
    # on a log scale, and the conditions (other knob -> values under which this one matters).
    low: float | None = None
    high: float | None = None
    log: bool | None = None
    when: Mapping[str, tuple[Any, ...]] | None = None


@dataclass(frozen=True)
class _Site:
    knob: Knob
    col: int  # UTF-8 byte offsets of the literal in its line (as ast gives them)
    end_col: int


def _lines(source: str) -> list[str]:
    """Lines with their endings, split exactly where Python's tokenizer splits them."""
    return io.StringIO(source, newline="").readlines()


def _parse_choice(text: str, as_str: bool) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if not as_str:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if type(v) in (int, float):
            return v
    return text


def _choices(comment: str, value: Any) -> tuple[Any, ...] | None:
    m = _ONE_OF.search(comment)
    if not m:
        return None
    items = [t for t in m.group(1).split(",") if t.strip()]
    return tuple(_parse_choice(t, isinstance(value, str)) for t in items) or None


def _assignments(body: list[ast.stmt], lines: list[str], preset: str | None) -> Iterator[_Site]:
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and stmt.simple:
            target = stmt.target
        else:
            continue
        node = stmt.value
        if not isinstance(target, ast.Name) or not _NAME.match(target.id) or target.id == SELECTOR:
            continue
        if node is None or node.end_lineno != node.lineno or node.end_col_offset is None:
            continue
        ok, value = py_literal(node)
        if not ok:
            continue
        rest = lines[node.lineno - 1].encode()[node.end_col_offset :].decode()
        m = _COMMENT.match(rest)
        comment = m.group(2)[1:].strip() if m else ""
        knob = Knob(target.id, value, _choices(comment, value), comment, node.lineno, preset)
        yield _Site(knob, node.col_offset, node.end_col_offset)


def _preset_of(test: ast.expr) -> str | None:
    """`PRESET == "gpu"` -> "gpu"; anything else -> None."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == SELECTOR
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and isinstance(test.comparators[0].value, str)
    ):
        return test.comparators[0].value
    return None


def _scan(source: str) -> list[_Site]:
    """Every knob site: top level and inside preset blocks (raises SyntaxError)."""
    tree = ast.parse(source)
    lines = _lines(source)
    sites = list(_assignments(tree.body, lines, None))
    for stmt in tree.body:
        node: ast.stmt | None = stmt
        while isinstance(node, ast.If) and (name := _preset_of(node.test)) is not None:
            sites.extend(_assignments(node.body, lines, name))
            node = node.orelse[0] if len(node.orelse) == 1 else None
    return sites


def _effective(source: str, preset: str | None) -> dict[str, _Site]:
    out: dict[str, _Site] = {}
    for site in _scan(source):
        if site.knob.preset not in (None, preset):
            continue
        old = out.get(site.knob.name)
        if old is None or site.knob.lineno > old.knob.lineno:  # the last one to run wins
            out[site.knob.name] = site
    return out


def parse_knobs(source: str, preset: str | None = None) -> dict[str, Knob]:
    """The effective knobs for `preset`, in source order (raises SyntaxError on bad source)."""
    sites = sorted(_effective(source, preset).values(), key=lambda s: s.knob.lineno)
    return {s.knob.name: s.knob for s in sites}


def _skeleton(source: str) -> str | None:
    """The code of `source` with every knob's literal masked (None: not Python).

    Compared as an AST dump, so comments and spacing do not count.
    """
    try:
        sites = _scan(source)
    except (SyntaxError, ValueError):
        return None
    lines = _lines(source)
    for site in sites:  # one literal per line (a knob's value never spans lines)
        raw = lines[site.knob.lineno - 1].encode()
        lines[site.knob.lineno - 1] = (raw[: site.col] + b"_" + raw[site.end_col :]).decode()
    try:
        return ast.dump(ast.parse("".join(lines)))
    except SyntaxError:
        return None


def only_knobs_differ(old: Mapping[str, str], new: Mapping[str, str]) -> bool:
    """True when the files in `new` are those in `old` with at most knob values changed.

    Same paths, same code and the same knob names; only the literals of knob assignments
    (top level and preset blocks) may differ. Such a change cannot alter how the code uses
    the harness (seed, budget, data), which the judge relies on to keep it after one run.
    """
    if old.keys() != new.keys():
        return False
    for path, text in new.items():
        if text == old[path]:
            continue
        before, after = _skeleton(old[path]), _skeleton(text)
        if before is None or before != after:
            return False
    return True


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "str"
    return type(v).__name__


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type (so True is not 1 and 16 is not 16.0)."""
    return type(a) is type(b) and a == b


def in_choices(value: Any, choices: tuple[Any, ...]) -> bool:
    return any(_kind(c) == _kind(value) and c == value for c in choices)


def check_value(knob: Knob, value: Any) -> None:
    """Raise ValueError when `value` cannot be written to `knob`."""
    if _kind(value) not in ("bool", "number", "str"):
        raise ValueError(f"{knob.name}: {value!r} is not an int, float, str or bool")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{knob.name}: {value!r} is not a finite number")
    if _kind(value) != _kind(knob.value):
        raise ValueError(
            f"{knob.name}: {value!r} is a {_kind(value)}, the knob a {_kind(knob.value)}"
        )
    if knob.choices is not None and not in_choices(value, knob.choices):
        allowed = ", ".join(format_value(c) for c in knob.choices)
        raise ValueError(f"{knob.name}: {value!r} is not one of: {allowed}")


def _text(value: Any, old: str) -> str:
    text = repr(value)
    quotes = isinstance(value, str) and ('"' in value or "'" in value)
    if isinstance(value, str) and old.startswith('"') and not quotes:
        text = '"' + text[1:-1] + '"'
    return text


def set_knobs(source: str, values: Mapping[str, Any], preset: str | None = None) -> str:
    """`source` with the knobs in `values` set; every other byte is kept.

    The literal edited is the one that is effective for `preset` (the preset block's line
    when the preset overrides the knob). Unknown knob -> KeyError; a value of the wrong
    kind or outside a closed set -> ValueError. A knob set to its current value is left
    untouched (so `3e-4` stays `3e-4`).
    """
    sites = _effective(source, preset)
    edits: dict[int, list[tuple[_Site, Any]]] = {}
    for name, value in values.items():
        if name not in sites:
            raise KeyError(f"unknown knob {name!r} (known: {', '.join(sorted(sites))})")
        site = sites[name]
        if same_value(site.knob.value, value):
            continue
        check_value(site.knob, value)
        edits.setdefault(site.knob.lineno, []).append((site, value))
    if not edits:
        return source
    lines = _lines(source)
    for lineno, line_edits in edits.items():
        raw = lines[lineno - 1].encode()
        for site, value in sorted(line_edits, key=lambda e: -e[0].col):  # right to left
            head, old = raw[: site.col].decode(), raw[site.col : site.end_col].decode()
            rest = raw[site.end_col :].decode()
            new = _text(value, old)
            m = _COMMENT.match(rest)
            if m and m.group(1):  # keep the comment's column where the gap allows
                gap = len(m.group(1))
                pad = max(gap - (len(new) - len(old)), min(gap, 2))
                rest = " " * pad + m.group(2)
            raw = (head + new + rest).encode()
        lines[lineno - 1] = raw.decode()
    out = "".join(lines)
    ast.parse(out)  # a guard: an edit must never break the file
    return out


def collect_knobs(
    files: Mapping[str, str], preset: str | None = None
) -> dict[str, tuple[str, Knob]]:
    """Knobs of every `.py` file: name -> (path, knob).

    Paths are read in sorted order and the first file that defines a name owns it; files
    that do not parse are skipped (they have no knobs to offer).
    """
    out: dict[str, tuple[str, Knob]] = {}
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        try:
            knobs = parse_knobs(files[path], preset)
        except SyntaxError:
            continue
        for name, knob in knobs.items():
            out.setdefault(name, (path, knob))
    return out


def set_knobs_in_files(
    files: Mapping[str, str], values: Mapping[str, Any], preset: str | None = None
) -> dict[str, str]:
    """Set knobs across files (see `collect_knobs`); returns only the files that changed."""
    owners = collect_knobs(files, preset)
    per_file: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in owners:
            raise KeyError(f"unknown knob {name!r} (known: {', '.join(sorted(owners))})")
        per_file.setdefault(owners[name][0], {})[name] = value
    out: dict[str, str] = {}
    for path, vals in per_file.items():
        new = set_knobs(files[path], vals, preset)
        if new != files[path]:
            out[path] = new
    return out


def format_value(v: Any) -> str:
    """Short and readable, for descriptions: 0.001 -> '0.001', 3e-4 -> '0.0003'."""
    if isinstance(v, float):
        text = repr(v)
        return text if len(text) <= 8 else f"{v:.4g}"
    return str(v)

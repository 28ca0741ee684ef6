"""The answer format of the LLM proposers. Owns: parsing an answer and applying its edits.

A model answers with a one-line `DESCRIPTION:` and SEARCH/REPLACE blocks (or whole files),
as `FORMAT_INSTRUCTIONS` tells it, or, asked for a structured answer, with a JSON object
(`EDIT_SCHEMA`, `JSON_FORMAT_INSTRUCTIONS`). `parse_answer` turns either into an `Answer`;
`apply_answer` applies it to the incumbent's editable files and returns the changed ones.
Pure text functions: no I/O, no network.

Every problem with the model's output is an `EditError` whose message is written for the
model (what was wrong, how to fix it), so a proposer can send it back as a repair turn.

Not covered: talking to the model (llm.py), the prompt (prompt.py), checking that only
editable files changed in git (workspace.py).
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# The example edits a file no task has, so that a model copying it verbatim gets an error
# that says so instead of a change it did not mean (a near-copy of a real train.py line
# did apply, as a change nobody proposed).
FORMAT_INSTRUCTIONS = """\
## Answer format

You may think first. Then write one line:

DESCRIPTION: <one line saying what the change does, e.g. halve the warmup 0.1 -> 0.05>

followed by one or more SEARCH/REPLACE blocks, each preceded by the file's path on its own
line. For example, for a file example.py that holds `GAIN = 1.5  # output scale`:

example.py
<<<<<<< SEARCH
GAIN = 1.5  # output scale
=======
GAIN = 2.0  # output scale
>>>>>>> REPLACE

- SEARCH copies whole lines of the current file verbatim (spaces and comments included) and
  must match exactly one place: add neighbouring lines when a line occurs more than once.
- Keep blocks small: the lines that change plus a little context. To delete lines, leave
  REPLACE empty. Blocks apply in order; a later block sees the result of earlier ones.
- For a large rewrite you may instead give a file's entire new content:

FILE: train.py
```python
<the entire new content of train.py>
```

Do not write `<<<<<<< SEARCH`, `=======`, `>>>>>>> REPLACE` or `FILE:` lines anywhere else.
"""

JSON_FORMAT_INSTRUCTIONS = """\
## Answer format

Answer with one JSON object and nothing else:

{"description": "<one line saying what the change does>",
 "edits": [{"path": "<an editable file>",
            "search": "<whole lines of the current file, copied exactly>",
            "replace": "<the new lines>"}]}

- `search` copies whole lines of the file verbatim (spaces and comments included) and must
  match exactly one place; `replace` is what they become. Keep each edit small.
- Edits apply in order; a later one sees the result of earlier ones.
"""

# The JSON schema of an edit answer (a structured answer: llmclient.AnswerFormat). Every
# key required and no others: OpenAI's strict mode needs that, and a grammar built from it
# leaves a small model no room to wander.
EDIT_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "description": {"type": "string", "maxLength": 200},
        "edits": {
            "type": "array",
            "minItems": 1,
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "search": {"type": "string"},
                    "replace": {"type": "string"},
                },
                "required": ["path", "search", "replace"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["description", "edits"],
    "additionalProperties": False,
}

MAX_ENUM_LINES = 600  # the most file lines a schema lists as the choices of `search`


def edit_schema(files: Mapping[str, str], *, exact_lines: bool = False) -> dict[str, object]:
    """EDIT_SCHEMA for these editable files: `path` one of their paths; with `exact_lines`,
    `search` one of their lines that occurs once (a grammar-bound model then cannot
    misquote a line, the usual failure of small models; several edits change several
    lines). Without files, EDIT_SCHEMA itself."""
    if not files:
        return EDIT_SCHEMA
    item: dict[str, object] = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "enum": sorted(files)},
            "search": {"type": "string"},
            "replace": {"type": "string"},
        },
        "required": ["path", "search", "replace"],
        "additionalProperties": False,
    }
    if exact_lines:
        counts: dict[str, int] = {}
        for text in files.values():
            for line in text.splitlines():
                counts[line] = counts.get(line, 0) + 1
        # Lines with a quote or a backslash are left out: llama-cpp-python's grammar
        # converter escapes them wrongly, and a grammar that fails to parse is dropped.
        unique = [
            line
            for line, n in counts.items()
            if n == 1 and line.strip() and '"' not in line and "\\" not in line
        ]
        if 0 < len(unique) <= MAX_ENUM_LINES:
            item["properties"]["search"] = {"type": "string", "enum": unique}  # type: ignore[index]
    schema = dict(EDIT_SCHEMA)
    schema["properties"] = {
        **EDIT_SCHEMA["properties"],  # type: ignore[dict-item]
        "edits": {"type": "array", "minItems": 1, "maxItems": 8, "items": item},
    }
    return schema


_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*[\w+.#-]*\s*$")
_FILE = re.compile(r"^[\s*#>`]*FILE\s*:\s*(.+?)\s*$", re.IGNORECASE)
_DESCRIPTION = re.compile(r"^[\s*#>_`-]*DESCRIPTION[*_`]*\s*:(.*)$", re.IGNORECASE | re.MULTILINE)
_PATH = re.compile(r"^[\w.\-/]+$")
_PATH_PREFIX = re.compile(r"^(file|path)\s*:\s*", re.IGNORECASE)


class EditError(ValueError):
    """A model answer that cannot be used; the message says, for the model, what to fix."""


@dataclass(frozen=True)
class Edit:
    """One SEARCH/REPLACE block. Both texts are whole lines ending in a newline, or ""."""

    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class Answer:
    """A parsed model answer: its description, its blocks in order, and whole files."""

    description: str
    edits: tuple[Edit, ...] = ()
    whole_files: Mapping[str, str] = field(default_factory=dict)


def parse_answer(text: str) -> Answer:
    """The description and edits of `text`; prose around the blocks and ``` fences are ignored.

    A JSON object (a structured answer, see EDIT_SCHEMA) is parsed as such. In text, a
    block's path is the nearest line above its `<<<<<<< SEARCH` (past blank and fence
    lines); a block right after another one without a path line takes the previous path.
    Without a `DESCRIPTION:` line, the first line of prose before the first block is the
    description (aider's own style: a sentence, then the blocks).
    """
    if _looks_like_json(text):
        return parse_json_answer(text)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    edits: list[Edit] = []
    whole: dict[str, str] = {}
    last_path: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SEARCH.match(line):
            n = len(edits) + 1
            path = _path_above(lines, i) or last_path
            if path is None:
                raise EditError(
                    f"SEARCH block {n} has no file path; put the path (e.g. train.py) "
                    "on its own line right before <<<<<<< SEARCH"
                )
            edit, i = _read_block(lines, i, path, n)
            edits.append(edit)
            last_path = path
            continue
        m = _FILE.match(line)
        if m:
            path = _clean_path(m.group(1))
            if not _PATH.match(path):
                raise EditError(
                    f"FILE: needs a file path, e.g. `FILE: train.py`, not {m.group(1)!r}"
                )
            j = _next_nonblank(lines, i + 1)
            if j < len(lines) and _SEARCH.match(lines[j]):
                i = j  # `FILE: x` used as the path line of a SEARCH block
                continue
            if j >= len(lines) or not _FENCE.match(lines[j]):
                raise EditError(
                    f"FILE: {path} must be followed by the file's entire new "
                    "content inside a ``` fence"
                )
            k = _next_nonblank(lines, j + 1)
            if k < len(lines) and _SEARCH.match(lines[k]):
                i = k  # a fenced SEARCH block under a `FILE: x` heading
                continue
            if path in whole:
                raise EditError(f"FILE: {path} is given twice; give each whole file once")
            whole[path], i = _read_fenced(lines, j, path)
            continue
        i += 1
    if not edits and not whole:
        raise EditError(
            "the answer has no edits: after the DESCRIPTION line, give SEARCH/REPLACE "
            "blocks (path line, <<<<<<< SEARCH, =======, >>>>>>> REPLACE) or a "
            "FILE: block with a file's whole content"
        )
    description = _description("\n".join(lines), lines)
    return Answer(description, tuple(edits), whole)


def _looks_like_json(text: str) -> bool:
    body = _strip_fence(text)
    return body.startswith("{") and body.rstrip().endswith("}")


def _strip_fence(text: str) -> str:
    body = text.strip()
    m = re.match(r"^(`{3,}|~{3,})\s*\w*\s*\n(.*)\n\1\s*$", body, re.DOTALL)
    return m.group(2).strip() if m else body


def parse_json_answer(text: str) -> Answer:
    """An `Answer` from a JSON edit answer ({"description", "edits": [{path, search,
    replace}]}, see EDIT_SCHEMA); the messages say, for the model, what is wrong."""
    try:
        data = json.loads(_strip_fence(text), strict=False)  # raw newlines in strings
    except ValueError as err:
        raise EditError(
            f"the answer is not valid JSON ({err}); answer with one JSON object "
            '{"description": ..., "edits": [{"path": ..., "search": ..., "replace": ...}]}'
        ) from None
    if not isinstance(data, dict):
        raise EditError("the answer must be one JSON object, not a list or a value")
    desc = " ".join(str(data.get("description") or "").split())
    if not desc:
        raise EditError('the JSON answer has no "description": say in one line what changes')
    raw = data.get("edits")
    if not isinstance(raw, list) or not raw:
        raise EditError('the JSON answer has no "edits": give at least one {path, search, replace}')
    edits = []
    for n, e in enumerate(raw, 1):
        if not isinstance(e, dict) or not all(
            isinstance(e.get(k), str) for k in ("path", "search", "replace")
        ):
            raise EditError(f'edit {n} needs three strings: "path", "search" and "replace"')
        path = _clean_path(e["path"])
        edits.append(Edit(path, _whole_lines(e["search"]), _whole_lines(e["replace"])))
    return Answer(desc, tuple(edits))


def _whole_lines(text: str) -> str:
    """`text` as whole lines (ending in a newline), or "" for blank text."""
    if not text.strip("\n"):
        return ""
    return text if text.endswith("\n") else text + "\n"


def _description(text: str, lines: list[str] | None = None) -> str:
    m = _DESCRIPTION.search(text)
    if m is None:
        prose = _prose_line(lines or [])
        if prose:
            return prose
        raise EditError(
            "the answer has no DESCRIPTION line; start it with "
            "`DESCRIPTION: <one line saying what the change does>`"
        )
    desc = " ".join(m.group(1).strip(" *_`").split())
    if not desc:
        raise EditError(
            "the DESCRIPTION line is empty; write the one-line description after "
            "`DESCRIPTION:` on the same line"
        )
    return desc


def _prose_line(lines: list[str], limit: int = 160) -> str:
    """The first line of prose before the first block (a path line, marker or fence is not
    prose), markdown emphasis and a list bullet stripped, cut to `limit`; "" if none."""
    for i, line in enumerate(lines):
        if _SEARCH.match(line) or _FILE.match(line):
            break
        text = line.strip().strip("*_#>`").strip()
        text = re.sub(r"^[-*+]\s+|^\d+[.)]\s+", "", text).strip()
        nxt = lines[_next_nonblank(lines, i + 1)] if i + 1 < len(lines) else ""
        if (
            not text
            or _FENCE.match(line)
            or _SEARCH.match(nxt)  # the path line of the first block
            or (_FENCE.match(nxt) and _PATH.match(text))
            or len(text) < 8
        ):
            continue
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."
    return ""


def _next_nonblank(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _clean_path(raw: str) -> str:
    s = raw.strip().strip("*`#").strip()
    s = _PATH_PREFIX.sub("", s).strip().strip("`*").rstrip(":").strip()
    while s.startswith("./"):
        s = s[2:]
    return s


def _path_above(lines: list[str], i: int) -> str | None:
    """The path on the nearest meaningful line above line `i`, or None if there is none."""
    j = i - 1
    while j >= 0 and (not lines[j].strip() or _FENCE.match(lines[j])):
        j -= 1
    if j < 0 or _REPLACE.match(lines[j]):
        return None
    path = _clean_path(lines[j])  # also drops a `FILE:` prefix
    return path if _PATH.match(path) and path.strip("./") else None


def _read_block(lines: list[str], i: int, path: str, n: int) -> tuple[Edit, int]:
    """The block whose SEARCH marker is line `i`, and the index of the line after it."""
    search: list[str] = []
    replace: list[str] = []
    part = search
    for j in range(i + 1, len(lines)):
        line = lines[j]
        if _SEARCH.match(line):
            break
        if part is search and _DIVIDER.match(line):
            part = replace
        elif _REPLACE.match(line):
            if part is search:
                raise EditError(
                    f"SEARCH block {n} for {path} has no ======= line; separate the "
                    "SEARCH lines from the REPLACE lines with ======="
                )
            return Edit(path, _join(search), _join(replace)), j + 1
        else:
            part.append(line)
    raise EditError(f"SEARCH block {n} for {path} is not closed; end it with >>>>>>> REPLACE")


def _read_fenced(lines: list[str], j: int, path: str) -> tuple[str, int]:
    """The content of the fence opened on line `j`, and the index of the line after it."""
    opener = lines[j].strip()
    char, width = opener[0], len(opener) - len(opener.lstrip(opener[0]))
    close = re.compile(rf"^\s*{re.escape(char)}{{{width},}}\s*$")
    for k in range(j + 1, len(lines)):
        if close.match(lines[k]):
            return _join(lines[j + 1 : k]), k + 1
    raise EditError(
        f"the ``` fence after FILE: {path} is not closed; end the file's content with a line of ```"
    )


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def apply_answer(
    files: Mapping[str, str], answer: Answer, is_editable: Callable[[str], bool]
) -> dict[str, str]:
    """The files `answer` changes (path -> new content), applied to `files`.

    Whole files are applied first, then the blocks in order. A SEARCH must match whole
    lines exactly once. When it matches nowhere, a whitespace-tolerant match is tried
    (each line compared with its runs of spaces collapsed, surrounding blank lines
    ignored) and used only if it matches exactly one place; REPLACE is then re-indented
    by the same offset as the matched lines. An empty SEARCH creates a new editable
    file. Every changed `.py` file must compile. Raises only `EditError`.
    """
    paths = [*answer.whole_files, *(e.path for e in answer.edits)]
    for path in dict.fromkeys(paths):
        if path.startswith("/") or ".." in path.split("/") or not is_editable(path):
            allowed = ", ".join(sorted(p for p in files if is_editable(p))) or "none"
            raise EditError(f"{path} is not an editable file; edit only: {allowed}")
    work = dict(files)
    for path, content in answer.whole_files.items():
        work[path] = content
    for n, edit in enumerate(answer.edits, 1):
        work[edit.path] = _apply_edit(work.get(edit.path), edit, n, list(work))
    changed = {p: c for p, c in work.items() if files.get(p) != c}
    if not changed:
        raise EditError(
            "the answer changes nothing: the result equals the current files; "
            "make a real change (REPLACE must differ from SEARCH)"
        )
    for path, content in changed.items():
        if path.endswith(".py"):
            _check_compiles(path, content)
    return changed


def _apply_edit(content: str | None, edit: Edit, n: int, known: list[str]) -> str:
    where = f"SEARCH block {n} for {edit.path}"
    if content is None:
        if edit.search:
            raise EditError(
                f"{edit.path} does not exist, so {where} cannot match; edit one of: "
                f"{', '.join(sorted(known))} (an empty SEARCH creates a new file)"
            )
        return edit.replace
    if not edit.search.strip():
        raise EditError(
            f"{where} is empty; to add code, SEARCH for the lines next to where it "
            "goes and repeat them in REPLACE together with the new lines"
        )
    added_newline = bool(content) and not content.endswith("\n")
    text = content + "\n" if added_newline else content
    starts = _exact_matches(text, edit.search)
    if len(starts) > 1:
        raise EditError(
            f"{where} matches {len(starts)} places; add neighbouring lines to SEARCH "
            "so that it matches exactly one"
        )
    if starts:
        s = starts[0]
        result = text[:s] + edit.replace + text[s + len(edit.search) :]
    else:
        result = _fuzzy_apply(text, edit, where)
    if added_newline and result.endswith("\n"):
        result = result[:-1]
    return result


def _exact_matches(text: str, search: str) -> list[int]:
    """Start offsets where `search` occurs in `text` starting at a line start."""
    found = []
    i = text.find(search)
    while i >= 0:
        if i == 0 or text[i - 1] == "\n":
            found.append(i)
        i = text.find(search, i + 1)
    return found


def _blank_run(lines: list[str]) -> int:
    """How many lines at the start of `lines` are blank."""
    return next((k for k, line in enumerate(lines) if line.strip()), len(lines))


def _strip_blank(lines: list[str]) -> tuple[list[str], int, int]:
    """`lines` without its leading and trailing blank lines, and how many of each it had."""
    lead = _blank_run(lines)
    trail = _blank_run(lines[::-1]) if lead < len(lines) else 0
    return lines[lead : len(lines) - trail], lead, trail


def _norm(line: str) -> str:
    return " ".join(line.split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _fuzzy_apply(text: str, edit: Edit, where: str) -> str:
    """Apply `edit` by the whitespace-tolerant match, or raise the no-match EditError."""
    file_lines = text.split("\n")[:-1]  # text ends with "\n"
    core, lead, trail = _strip_blank(edit.search.split("\n")[:-1])
    replace = edit.replace.split("\n")[:-1]
    replace = replace[_blank_run(replace[:lead]) :]  # drop the blank lines SEARCH dropped
    replace = replace[: len(replace) - _blank_run(replace[::-1][:trail])]
    want = [_norm(s) for s in core]
    have = [_norm(s) for s in file_lines]
    hits = [i for i in range(len(have) - len(want) + 1) if have[i : i + len(want)] == want]
    if len(hits) != 1:
        raise EditError(_no_match_message(where, core, file_lines, len(hits)))
    i = hits[0]
    delta = _indent(file_lines[i]) - _indent(core[0])
    pad = file_lines[i][: _indent(file_lines[i])][:1] or " "
    shifted = [
        line
        if not line.strip()
        else pad * delta + line
        if delta >= 0
        else line[min(-delta, _indent(line)) :]
        for line in replace
    ]
    return _join(file_lines[:i] + shifted + file_lines[i + len(core) :])


def _no_match_message(where: str, core: list[str], file_lines: list[str], hits: int) -> str:
    if hits > 1:
        return (
            f"{where} does not match the file exactly, and ignoring whitespace it matches "
            f"{hits} places; copy the lines verbatim and add neighbouring lines so that "
            "it matches exactly one"
        )
    msg = f"{where} does not match the file exactly; copy the lines verbatim, including spaces"
    first = core[0].strip() if core else ""
    close = difflib.get_close_matches(first, [s.strip() for s in file_lines], n=1, cutoff=0.6)
    if first and close:
        line_no = [s.strip() for s in file_lines].index(close[0]) + 1
        msg += f" (its first line resembles line {line_no} of the file: {close[0]!r})"
    return msg


def _check_compiles(path: str, content: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(content, path, "exec")
    except SyntaxError as e:
        shown = f": {e.text.strip()!r}" if e.text and e.text.strip() else ""
        raise EditError(
            f"{path} does not compile after the edits: line {e.lineno}: {e.msg}"
            f"{shown}; fix the syntax (indentation included)"
        ) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as e:
        raise EditError(f"{path} does not compile after the edits: {e}") from None

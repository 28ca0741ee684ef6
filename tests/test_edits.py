"""Tests for the LLM answer format: parsing answers and applying their edits (pure text)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

import rsilab
from rsilab.proposers.edits import (
    FORMAT_INSTRUCTIONS,
    Answer,
    Edit,
    EditError,
    apply_answer,
    parse_answer,
)

TRAIN = """\
LR = 0.001               # peak learning rate
MATRIX_LR = 0.02         # Muon learning rate
ACT = "gelu"             # one of: gelu, relu


def act(x):
    if ACT == "gelu":
        return x * 0.5
    return x
"""
EXTRA = "X = 1\n"
FILES = {"train.py": TRAIN, "model/extra.py": EXTRA}


def editable(path: str) -> bool:
    return path.endswith(".py") and not path.startswith("frozen/")


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def apply(text: str, files: dict[str, str] | None = None) -> dict[str, str]:
    return apply_answer(FILES if files is None else files, parse_answer(text), editable)


LR_BLOCK = block(
    "train.py",
    "LR = 0.001               # peak learning rate\n",
    "LR = 0.003               # peak learning rate\n",
)


# ---- parsing ---------------------------------------------------------------------------
def test_parse_search_replace_with_prose_around() -> None:
    text = (
        "I think the LR is too low.\n\nDESCRIPTION: raise the learning rate to 0.003\n\n"
        + LR_BLOCK
        + "\nThat should help.\n"
    )
    answer = parse_answer(text)
    assert answer.description == "raise the learning rate to 0.003"
    assert answer.edits == (
        Edit(
            "train.py",
            "LR = 0.001               # peak learning rate\n",
            "LR = 0.003               # peak learning rate\n",
        ),
    )
    assert dict(answer.whole_files) == {}


def test_parse_fenced_blocks_and_markdown_description() -> None:
    text = (
        "**DESCRIPTION:** raise LR\n\n```python\n" + LR_BLOCK + "```\n\n"
        "```\nmodel/extra.py\n<<<<<<< SEARCH\nX = 1\n=======\nX = 2\n>>>>>>> REPLACE\n```\n"
    )
    answer = parse_answer(text)
    assert answer.description == "raise LR"
    assert [e.path for e in answer.edits] == ["train.py", "model/extra.py"]
    assert "```" not in answer.edits[0].replace


def test_parse_block_without_path_line_takes_the_previous_path() -> None:
    text = (
        "DESCRIPTION: two changes\n"
        + LR_BLOCK
        + "<<<<<<< SEARCH\nX = 1\n=======\nX = 3\n>>>>>>> REPLACE\n"
    )
    assert [e.path for e in parse_answer(text).edits] == ["train.py", "train.py"]


def test_parse_decorated_path_lines() -> None:
    for line in (
        "`train.py`",
        "**train.py**",
        "### train.py",
        "File: train.py",
        "./train.py:",
        "FILE: train.py",
    ):
        text = f"DESCRIPTION: d\n{line}\n```python\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```"
        assert parse_answer(text).edits[0].path == "train.py", line


def test_parse_whole_file_and_crlf() -> None:
    text = "DESCRIPTION: rewrite\r\n\r\nFILE: train.py\r\n```python\r\nLR = 1\r\n\r\n```\r\nDone."
    answer = parse_answer(text)
    assert answer.edits == ()
    assert dict(answer.whole_files) == {"train.py": "LR = 1\n\n"}


def test_parse_whole_file_with_a_longer_fence_keeps_inner_fences() -> None:
    content = 'DOC = """\n```\nexample\n```\n"""\n'
    answer = parse_answer(f"DESCRIPTION: d\nFILE: train.py\n````python\n{content}````\n")
    assert answer.whole_files["train.py"] == content


def test_the_format_instructions_example_parses() -> None:
    example = FORMAT_INSTRUCTIONS[FORMAT_INSTRUCTIONS.index("DESCRIPTION:") :]
    example = example[: example.index(">>>>>>> REPLACE") + len(">>>>>>> REPLACE")]
    answer = parse_answer(example)
    out = apply_answer({"example.py": "GAIN = 1.5  # output scale\n"}, answer, lambda p: True)
    assert out == {"example.py": "GAIN = 2.0  # output scale\n"}
    for task in ("gpt", "toy"):  # the example is no near-copy of a line of a real train.py
        source = (Path(rsilab.__file__).parent / "tasks" / task / "train.py").read_text()
        assert "GAIN" not in source


@pytest.mark.parametrize(
    "text, words",
    [
        (LR_BLOCK, ["no DESCRIPTION line"]),
        ("DESCRIPTION:   \n" + LR_BLOCK, ["DESCRIPTION line is empty"]),
        ("DESCRIPTION: idea\nI would raise the LR.", ["no edits", "SEARCH"]),
        ("DESCRIPTION: d\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n", ["no file path"]),
        ("DESCRIPTION: d\ntrain.py\n<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n", ["=======", "train.py"]),
        (
            "DESCRIPTION: d\ntrain.py\n<<<<<<< SEARCH\na\n=======\nb\n",
            ["not closed", ">>>>>>> REPLACE"],
        ),
        ("DESCRIPTION: d\n" + LR_BLOCK + "<<<<<<< SEARCH\na\n=======\n", ["block 2", "not closed"]),
        ("DESCRIPTION: d\nFILE: train.py\nLR = 1\n", ["FILE: train.py", "fence"]),
        ("DESCRIPTION: d\nFILE: train.py\n```python\nLR = 1\n", ["not closed"]),
        ("DESCRIPTION: d\nFILE: a.py\n```\nA = 1\n```\nFILE: a.py\n```\nA = 2\n```\n", ["twice"]),
        ("DESCRIPTION: d\nFILE: the whole thing\n```\nA = 1\n```\n", ["FILE: needs a file path"]),
    ],
)
def test_parse_errors_name_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(EditError) as err:
        parse_answer(text)
    for word in words:
        assert word in str(err.value)


# ---- applying --------------------------------------------------------------------------
def test_apply_returns_only_changed_files() -> None:
    out = apply("DESCRIPTION: d\n" + LR_BLOCK)
    assert set(out) == {"train.py"}
    assert out["train.py"] == TRAIN.replace("LR = 0.001 ", "LR = 0.003 ", 1)


def test_apply_multiple_files_and_blocks_in_order() -> None:
    text = (
        "DESCRIPTION: d\n"
        + LR_BLOCK
        + block("train.py", "LR = 0.003               # peak learning rate\n", "LR = 0.004\n")
        + block("model/extra.py", "X = 1\n", "X = 2\nY = 3\n")
    )
    out = apply(text)
    assert out["train.py"].startswith("LR = 0.004\nMATRIX_LR")
    assert out["model/extra.py"] == "X = 2\nY = 3\n"


def test_search_matches_whole_lines_only() -> None:
    files = {"train.py": "MATRIX_LR = 0.001\nLR = 0.001\n"}
    out = apply("DESCRIPTION: d\n" + block("train.py", "LR = 0.001\n", "LR = 0.002\n"), files)
    assert out["train.py"] == "MATRIX_LR = 0.001\nLR = 0.002\n"


def test_apply_whole_file_and_new_file() -> None:
    text = "DESCRIPTION: d\nFILE: train.py\n```python\nLR = 1\n```\n" + block(
        "new/util.py", "", "def f():\n    return 1\n"
    )
    out = apply(text)
    assert out == {"train.py": "LR = 1\n", "new/util.py": "def f():\n    return 1\n"}


def test_file_without_final_newline() -> None:
    out = apply("DESCRIPTION: d\n" + block("a.py", "X = 1\n", "X = 2\n"), {"a.py": "Y = 0\nX = 1"})
    assert out == {"a.py": "Y = 0\nX = 2"}


def test_non_editable_path_is_named_with_the_editable_files() -> None:
    files = {**FILES, "frozen/data.py": "D = 1\n"}
    for path in ("frozen/data.py", "../train.py", "/etc/passwd.py"):
        with pytest.raises(EditError) as err:
            apply("DESCRIPTION: d\n" + block(path, "D = 1\n", "D = 2\n"), files)
        assert f"{path} is not an editable file" in str(err.value)
        assert "model/extra.py, train.py" in str(err.value)


def test_no_match_names_the_block_and_says_copy_verbatim() -> None:
    text = "DESCRIPTION: d\n" + LR_BLOCK + block("train.py", "LR = 0.005\n", "LR = 0.006\n")
    with pytest.raises(EditError) as err:
        apply(text)
    msg = str(err.value)
    assert "SEARCH block 2 for train.py does not match" in msg and "verbatim" in msg


def test_no_match_points_at_the_closest_line() -> None:
    text = "DESCRIPTION: d\n" + block("train.py", "LR = 0.001   # peak lr\n", "LR = 0.002\n")
    with pytest.raises(EditError, match="resembles line 1 of the file"):
        apply(text)


def test_several_matches_ask_for_more_context() -> None:
    files = {"a.py": "x = 1\ny = 2\nx = 1\n"}
    with pytest.raises(EditError, match=r"matches 2 places.*neighbouring lines"):
        apply("DESCRIPTION: d\n" + block("a.py", "x = 1\n", "x = 3\n"), files)


def test_empty_search_on_an_existing_file_is_refused() -> None:
    with pytest.raises(EditError, match="SEARCH block 1 for train.py is empty"):
        apply("DESCRIPTION: d\n" + block("train.py", "", "Z = 1\n"))


def test_search_in_a_missing_file_is_refused() -> None:
    with pytest.raises(EditError, match="nothere.py does not exist"):
        apply("DESCRIPTION: d\n" + block("nothere.py", "A = 1\n", "A = 2\n"))


def test_syntax_error_reports_the_line() -> None:
    text = "DESCRIPTION: d\n" + block("train.py", "    return x\n", "    return x +\n")
    with pytest.raises(EditError) as err:
        apply(text)
    msg = str(err.value)
    assert "train.py does not compile" in msg and "line 9" in msg


def test_indentation_error_reports_the_line() -> None:
    text = "DESCRIPTION: d\nFILE: a.py\n```\ndef f():\nreturn 1\n```\n"
    with pytest.raises(EditError, match=r"a.py does not compile.*line 2"):
        apply(text)


def test_no_change_is_refused() -> None:
    same = block("train.py", "X = 1\n", "X = 1\n").replace("train.py", "model/extra.py")
    with pytest.raises(EditError, match="changes nothing"):
        apply("DESCRIPTION: d\n" + same)
    with pytest.raises(EditError, match="changes nothing"):
        apply(f"DESCRIPTION: d\nFILE: train.py\n```\n{TRAIN}```\n")


def test_whitespace_tolerant_fallback_reindents_replace() -> None:
    # the model dropped the indentation and a space: it still matches one place
    search = 'if ACT  == "gelu":\n    return x * 0.5\n'
    replace = 'if ACT == "gelu":\n    return x * 0.5 * (1 + x)\n'
    out = apply("DESCRIPTION: d\n" + block("train.py", search, replace))
    assert (
        '    if ACT == "gelu":\n        return x * 0.5 * (1 + x)\n    return x\n' in out["train.py"]
    )


def test_whitespace_tolerant_fallback_ignores_surrounding_blank_lines() -> None:
    files = {"a.py": "a = 1\nb = 2\n"}
    out = apply("DESCRIPTION: d\n" + block("a.py", "\nb = 2   \n\n", "\nb = 3\n\n"), files)
    assert out == {"a.py": "a = 1\nb = 3\n"}


def test_whitespace_tolerant_fallback_must_be_unique() -> None:
    files = {"a.py": "if x:\n    y = 1\nif z:\n    y = 1\n"}
    with pytest.raises(EditError, match="ignoring whitespace it matches 2 places"):
        apply("DESCRIPTION: d\n" + block("a.py", "y  = 1\n", "y = 2\n"), files)


def test_only_edit_errors_escape_for_mangled_answers() -> None:
    good = (
        "DESCRIPTION: d\n"
        + LR_BLOCK
        + "```python\n"
        + block("model/extra.py", "X = 1\n", "X = (\n")
        + "```\nFILE: t.py\n```\nA=1\n```\n"
    )
    rng = random.Random(0)
    for _ in range(2000):
        chars = list(good)
        for _ in range(rng.randint(1, 6)):
            k = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                del chars[k]
            elif op < 0.7:
                chars.insert(k, rng.choice("<=>`\n \t:#ab\x00"))
            else:
                chars[k] = rng.choice("<=>`\n x")
        with contextlib.suppress(EditError):
            apply_answer(FILES, parse_answer("".join(chars)), editable)


def test_answer_defaults() -> None:
    assert Answer("d").edits == () and dict(Answer("d").whole_files) == {}

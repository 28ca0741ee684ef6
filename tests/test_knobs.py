"""Tests for rsilab.proposers.knobs: reading knobs and rewriting only their literals."""

from __future__ import annotations

import ast

import pytest

from rsilab.proposers.knobs import (
    collect_knobs,
    format_value,
    only_knobs_differ,
    parse_knobs,
    set_knobs,
    set_knobs_in_files,
)

TRAIN = '''"""A sample training script."""
import math

from rsilab import harness

DEPTH = 2                # transformer blocks
LR = 3e-4                # peak learning rate
MIN_LR = -0.5            # a negative number (why not)
OFFSET = -3              # a negative int
ACTIVATION = "gelu"      # one of: gelu, relu, swiglu
NORM = 'layernorm'       # norm layer; one of: layernorm, rmsnorm
HEADS = 4                # one of: 1, 2, 4, 8
TIE = True               # share embeddings
RUN_NAME = "base"        # a free string: not a closed set
NAME: str = "ann"        # annotated
lower_case = 5           # not a knob
A = B = 3                # not a knob (two targets)
SIZE = 2 ** 10           # not a knob (an expression)
LONG = (1,
        2)
X1 = 1; X2 = 2  # two on one line
TEXT = "naïve"           # non-ASCII before the comment
PRESET = harness.preset()
if PRESET == "gpu":
    DEPTH = 8
    LR = 0.0006          # gpu learning rate
    WIDE = 512
elif PRESET == "mps":
    DEPTH = 4


def f():
    INNER = 3  # not top level
    return INNER * math.pi
'''


def test_parse_top_level_knobs() -> None:
    knobs = parse_knobs(TRAIN)
    assert list(knobs) == [
        "DEPTH", "LR", "MIN_LR", "OFFSET", "ACTIVATION", "NORM", "HEADS", "TIE",
        "RUN_NAME", "NAME", "X1", "X2", "TEXT",
    ]  # fmt: skip
    assert knobs["DEPTH"].value == 2 and knobs["DEPTH"].comment == "transformer blocks"
    assert knobs["DEPTH"].lineno == 6 and knobs["DEPTH"].preset is None
    assert knobs["LR"].value == 3e-4 and isinstance(knobs["LR"].value, float)
    assert knobs["MIN_LR"].value == -0.5 and knobs["OFFSET"].value == -3
    assert knobs["ACTIVATION"].choices == ("gelu", "relu", "swiglu")
    assert knobs["NORM"].choices == ("layernorm", "rmsnorm")
    assert knobs["NORM"].comment == "norm layer; one of: layernorm, rmsnorm"
    assert knobs["HEADS"].choices == (1, 2, 4, 8)
    assert knobs["TIE"].value is True and knobs["TIE"].choices is None
    assert knobs["RUN_NAME"].choices is None
    assert knobs["NAME"].value == "ann"
    assert knobs["X1"].comment == "" and knobs["X2"].comment == "two on one line"
    assert knobs["TEXT"].comment == "non-ASCII before the comment"


def test_preset_overrides() -> None:
    cpu = parse_knobs(TRAIN, "cpu")
    assert cpu == parse_knobs(TRAIN)  # no cpu block: the top-level knobs
    gpu = parse_knobs(TRAIN, "gpu")
    assert gpu["DEPTH"].value == 8 and gpu["DEPTH"].preset == "gpu" and gpu["DEPTH"].lineno == 25
    assert gpu["LR"].value == 0.0006 and gpu["LR"].comment == "gpu learning rate"
    assert gpu["WIDE"].value == 512  # only in the block: still effective for gpu
    assert gpu["HEADS"] == cpu["HEADS"]
    assert parse_knobs(TRAIN, "mps")["DEPTH"].value == 4  # elif chains count too
    assert "WIDE" not in cpu and "PRESET" not in gpu


def test_closed_set_choice_types() -> None:
    src = 'FLAG = True  # one of: true, false\nP = 0.5  # one of: 0.1, 0.5, "x"\nS = "1"  # one of: 1, 2\n'
    knobs = parse_knobs(src)
    assert knobs["FLAG"].choices == (True, False)
    assert knobs["P"].choices == (0.1, 0.5, "x")
    assert knobs["S"].choices == ("1", "2")  # a string knob keeps its choices strings


def _diff_lines(a: str, b: str) -> list[int]:
    la, lb = a.splitlines(keepends=True), b.splitlines(keepends=True)
    assert len(la) == len(lb)
    return [i + 1 for i, (x, y) in enumerate(zip(la, lb, strict=True)) if x != y]


def test_set_knobs_touches_only_the_literal() -> None:
    out = set_knobs(TRAIN, {"LR": 0.002, "ACTIVATION": "swiglu", "OFFSET": -12, "TIE": False})
    assert _diff_lines(TRAIN, out) == [7, 9, 10, 13]
    lines = out.splitlines()
    assert lines[6] == "LR = 0.002               # peak learning rate"  # comment column kept
    assert lines[8] == "OFFSET = -12             # a negative int"
    assert lines[9] == 'ACTIVATION = "swiglu"    # one of: gelu, relu, swiglu'  # quotes kept
    assert lines[12] == "TIE = False              # share embeddings"
    knobs = parse_knobs(out)
    assert knobs["LR"].value == 0.002 and knobs["ACTIVATION"].value == "swiglu"
    assert knobs["OFFSET"].value == -12 and knobs["TIE"].value is False
    # round trip: setting the old values back restores the file, except the spelling of 3e-4
    back = set_knobs(out, {"ACTIVATION": "gelu", "OFFSET": -3, "TIE": True, "LR": 3e-4})
    assert back == TRAIN.replace("LR = 3e-4       ", "LR = 0.0003     ")
    assert set_knobs(TRAIN, {"LR": 3e-4, "DEPTH": 2}) == TRAIN  # same values: untouched


def test_set_knobs_edge_cases() -> None:
    out = set_knobs(TRAIN, {"X2": 20, "X1": 10, "TEXT": "plain", "NORM": "rmsnorm"})
    assert "X1 = 10; X2 = 20  # two on one line" in out
    assert 'TEXT = "plain"           # non-ASCII' in out  # byte offsets handled
    assert "NORM = 'rmsnorm'         # norm layer" in out
    long = set_knobs(TRAIN, {"DEPTH": 123456789012345678901234})
    assert "DEPTH = 123456789012345678901234  # transformer blocks" in long  # two spaces kept
    neg = set_knobs("LR = 0.1 # c\r\nB = 1\r\n", {"LR": -1e-05})
    assert neg == "LR = -1e-05 # c\r\nB = 1\r\n"  # a one-space gap stays one space; CRLF kept
    ast.parse(out)


def test_set_knobs_preset_line() -> None:
    out = set_knobs(TRAIN, {"LR": 0.001, "HEADS": 8}, preset="gpu")
    assert _diff_lines(TRAIN, out) == [12, 26]  # HEADS top-level, LR in the gpu block
    assert "    LR = 0.001           # gpu learning rate" in out
    assert parse_knobs(out)["LR"].value == 3e-4  # the cpu value is untouched
    assert parse_knobs(out, "gpu")["LR"].value == 0.001


def test_set_knobs_errors() -> None:
    with pytest.raises(KeyError, match="WIDTH"):
        set_knobs(TRAIN, {"WIDTH": 3})
    with pytest.raises(KeyError):
        set_knobs(TRAIN, {"WIDE": 3})  # only a gpu knob
    with pytest.raises(ValueError, match="not one of"):
        set_knobs(TRAIN, {"ACTIVATION": "tanh"})
    with pytest.raises(ValueError, match="not one of"):
        set_knobs(TRAIN, {"HEADS": 3})
    with pytest.raises(ValueError):
        set_knobs(TRAIN, {"TIE": 1})  # a bool knob takes a bool
    with pytest.raises(ValueError):
        set_knobs(TRAIN, {"DEPTH": "2"})
    with pytest.raises(ValueError):
        set_knobs(TRAIN, {"LR": float("nan")})
    with pytest.raises(SyntaxError):
        parse_knobs("X = (")


def test_knobs_across_files() -> None:
    files = {
        "model.py": "WIDTH = 64  # w\n",
        "train.py": "LR = 0.1\nWIDTH = 8\n",
        "notes.md": "X = 1",
    }
    owners = collect_knobs(files)
    assert owners["WIDTH"][0] == "model.py" and owners["LR"][0] == "train.py"
    assert "X" not in owners
    out = set_knobs_in_files(files, {"WIDTH": 128, "LR": 0.1})
    assert out == {"model.py": "WIDTH = 128  # w\n"}  # LR unchanged: train.py not returned
    with pytest.raises(KeyError):
        set_knobs_in_files(files, {"NOPE": 1})


def test_format_value() -> None:
    assert format_value(0.001) == "0.001"
    assert format_value(3e-4) == "0.0003"
    assert format_value(0.0020000000000000000) == "0.002"
    assert format_value(1e-05) == "1e-05"
    assert format_value(0.123456789) == "0.1235"
    assert format_value(16) == "16" and format_value(True) == "True"
    assert format_value("gelu") == "gelu"


KNOBBED = """\
LR = 0.001  # learning rate
ACTIVATION = "gelu"  # one of: gelu, relu
if PRESET == "cpu":
    WIDTH = 64
rng = make_rng(seed())
"""


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (KNOBBED, True),
        (
            KNOBBED.replace("0.001  # learning rate", "0.004      # faster"),
            True,
        ),  # value, comment, spacing
        (
            KNOBBED.replace('"gelu"', '"relu"').replace("64", "32"),
            True,
        ),  # a choice and a preset knob
        (KNOBBED.replace("make_rng(seed())", "make_rng(0)"), False),  # hard-codes the seed: code
        (KNOBBED.replace("LR = 0.001", "LEARNING_RATE = 0.001"), False),  # a renamed knob
        (KNOBBED + "EXTRA = 1\n", False),  # a new knob
        (KNOBBED.replace("LR = 0.001", "LR = base() * 2"), False),  # no longer a literal
        ("def broken(:\n", False),
    ],
)
def test_only_knobs_differ(new: str, expected: bool) -> None:
    assert only_knobs_differ({"train.py": KNOBBED}, {"train.py": new}) is expected


def test_only_knobs_differ_needs_the_same_files() -> None:
    assert not only_knobs_differ(
        {"train.py": KNOBBED}, {"train.py": KNOBBED, "extra.py": "X = 1\n"}
    )
    assert not only_knobs_differ({"notes.txt": "a"}, {"notes.txt": "b"})  # not Python: not knobs

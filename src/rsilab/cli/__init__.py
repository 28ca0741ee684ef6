"""The `rsilab` command line. Owns nothing itself: `main` (the click group, in app.py) and the
modules that register its commands on import.

Thin on purpose: each command parses its options, calls the library, prints.

    app.py       the group, shared options, errors -> one line, the Bench a command runs on
    research.py  init, run, baseline, status, audit, stop
    outputs.py   report, serve, export
    studies.py   collapse, score, meta
    tools.py     prepare, train, doctor
"""

from rsilab.cli import outputs, research, studies, tools  # noqa: F401  (they register the commands)
from rsilab.cli.app import main

__all__ = ["main"]

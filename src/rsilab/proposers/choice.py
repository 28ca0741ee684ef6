"""Which proposers a run uses. Owns: the `--proposer` grammar and the default choice.

`NAME[@MODEL][:SHARE]`, comma-separated: `llm@model-a:2,tuner:1` gives two LLM proposers
(their models named in the ledger's proposer column) and the tuner, with shares of the
slots; `X+tuner` lets the tuner re-tune the knobs after X's kept changes. Without
`--proposer`: the task's `proposer` key, else `llm` when an LLM is configured in the
environment, else the tuner.

Not covered: building the proposers (base.create) or scheduling them (rsilab.loop.scheduler).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rsilab.config import TaskSpec
from rsilab.errors import ConfigError

DEFAULT = "tuner"  # the offline proposer: no key, no network
_ITEM = re.compile(
    r"^(?P<name>[A-Za-z_][\w.-]*)(?:@(?P<model>[^:+,]+))?(?::(?P<share>\d+))?(?P<follow>\+tuner)?$"
)


@dataclass(frozen=True)
class ProposerChoice:
    """One proposer of a run: its registered name, an optional model, its share of the slots."""

    name: str
    model: str = ""
    share: int = 1

    @property
    def label(self) -> str:
        """The name its experiments carry in the ledger (`llm@model` when a model is given)."""
        return f"{self.name}@{self.model}" if self.model else self.name


def parse_proposers(text: str) -> tuple[list[ProposerChoice], bool]:
    """The proposers in `text` and whether the tuner follows (`X+tuner`); ConfigError if bad."""
    choices: list[ProposerChoice] = []
    follow = False
    for raw in text.split(","):
        item = raw.strip()
        m = _ITEM.match(item)
        if m is None:
            raise ConfigError(
                f"--proposer {text!r}: {item!r} is not NAME[@MODEL][:SHARE][+tuner] "
                "(e.g. llm:2,tuner:1 or llm+tuner)"
            )
        share = int(m["share"] or 1)
        if share < 1:
            raise ConfigError(f"--proposer {text!r}: a share must be >= 1")
        follow = follow or (bool(m["follow"]) and m["name"] != "tuner")
        choices.append(ProposerChoice(m["name"], m["model"] or "", share))
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"--proposer {text!r}: a proposer is named twice; give each its own @MODEL"
        )
    if follow and "tuner" in labels:
        raise ConfigError(
            f"--proposer {text!r}: the tuner is already a proposer; it cannot also follow"
        )
    return choices, follow


def choose(given: str | None, task: TaskSpec) -> tuple[list[ProposerChoice], bool]:
    """(the proposers with their shares, whether the tuner follows) from --proposer (`given`),
    the task's `proposer` key, or the environment (see the module docstring)."""
    from rsilab.proposers.llmclient import configured

    choice = given or task.proposer or ("llm" if configured() else DEFAULT)
    for item in choice.split(","):
        _, plus, follower = item.partition("+")
        if plus and follower != "tuner":
            raise ConfigError(f"--proposer {choice!r}: only the tuner can follow (X+tuner)")
    return parse_proposers(choice)

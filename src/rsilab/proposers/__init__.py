"""Proposers: who proposes the next change. Owns: nothing itself; re-exports the protocol.

`base` holds the protocol and the registry (`create("tuner", seed=1)`), `knobs` reads and
writes the UPPER_CASE knobs of a training script, and each backend lives in its own module
(`tuner`: Optuna TPE and the random baseline, `queue`: files a person lines up). Backends
are imported on first `create`/`available`, so importing this package stays cheap.
"""

from rsilab.proposers.base import (
    Context,
    HistoryItem,
    Proposer,
    available,
    create,
    register,
    warm_start,
)

__all__ = ["Context", "HistoryItem", "Proposer", "available", "create", "register", "warm_start"]

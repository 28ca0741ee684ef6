"""Executors: where runs execute. Owns: nothing itself; re-exports the protocol.

`base` holds the protocol, the registry and resource detection; `local` runs on this
machine (one slot per GPU, or cores // threads), `ray` on a Ray cluster (the only module
that imports ray). Backends are imported on first `create`/`available`.
"""

from rsilab.run.executors.base import Executor, RunFuture, RunRequest, available, create, register

__all__ = ["Executor", "RunFuture", "RunRequest", "available", "create", "register"]
